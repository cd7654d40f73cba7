"""The benchmarks' output: one JSON object a line, printed and (with --json-out) appended to a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(record: dict[str, Any], json_out: str | None) -> None:
    """Print the record's line and append it to `json_out`, unless the file already holds that very
    line (a resumed benchmark re-emits what it finished before: read back, not measured twice)."""
    line = json.dumps(record)
    print(line, flush=True)
    if json_out:
        path = Path(json_out)
        if path.is_file() and line in path.read_text().splitlines():
            return
        with open(path, "a") as f:
            f.write(line + "\n")
