"""The one record format: a study's results.jsonl holds a JSON object a line.

Every line names its study, variant and seed, and says how it was made: `command` (what reproduces
it), `config` (the variant's settings), `machine` (bench.machine.describe; null on lines measured
before records named it: the study's README says what the lab notebook knew), `fedinv_version`
and `date`. The rest of the line is what was measured. A line is never rewritten: a measurement
made again is a new line, and readers take a (variant, seed, ...)'s last one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

ENVELOPE = ("study", "variant", "seed", "command", "config", "machine", "fedinv_version", "date")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results.jsonl, in file order ([] when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from e
    return records


def measured(record: dict[str, Any]) -> dict[str, Any]:
    """What a record measured: the line without the fields that say where and when."""
    return {k: v for k, v in record.items() if k not in ("machine", "date", "command")}


def append_records(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Append the records to `path`, each as one line, except those the file already holds (a resumed
    run reads back what it finished before: the same measurement is not recorded twice). Returns how
    many lines were written."""
    path = Path(path)
    held = [measured(r) for r in read_records(path)]
    new = [r for r in records if measured(r) not in held]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
    return len(new)


def latest(records: Iterable[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """One record per value of `keys` (with variant and seed always among them): the last one in file
    order, kept in the order of first appearance. A seed measured again replaces its own figure."""
    keys = ("variant", "seed", *keys)
    chosen: dict[tuple, dict[str, Any]] = {}
    for r in records:
        chosen[tuple(json.dumps(r.get(k), sort_keys=True) for k in keys)] = r
    return list(chosen.values())
