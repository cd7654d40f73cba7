"""The benchmarks' output: one JSON object a line, printed and (with --json-out) appended to a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def measured(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its `machine` field: what was measured, whatever machine reads it back."""
    return {k: v for k, v in record.items() if k != "machine"}


def emit(record: dict[str, Any], json_out: str | None) -> None:
    """Print the record's line and append it to `json_out`, unless the file already holds that
    measurement (a resumed benchmark re-emits what it finished before: read back, not measured twice;
    a line written before records named their machine counts as the same measurement)."""
    line = json.dumps(record)
    print(line, flush=True)
    if json_out:
        path = Path(json_out)
        held = path.read_text().splitlines() if path.is_file() else []
        if any(measured(json.loads(old)) == measured(record) for old in held if old.strip()):
            return
        with open(path, "a") as f:
            f.write(line + "\n")
