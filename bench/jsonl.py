"""The benchmarks' output: one JSON object a line, printed and (with --json-out) appended to a file."""

from __future__ import annotations

import json
from typing import Any


def emit(record: dict[str, Any], json_out: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if json_out:
        with open(json_out, "a") as f:
            f.write(line + "\n")
