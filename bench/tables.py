"""The one table printer: every study's tables are `Table`s, printed as Markdown."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class Table:
    """A table: its column titles, its rows (cells already formatted) and a line of notes under it."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"a row of {len(row)} cells under {len(self.columns)} columns: {row}")
            lines.append("| " + " | ".join("-" if c is None else str(c) for c in row) + " |")
        return "\n".join(lines) + (f"\n\n{self.note}" if self.note else "") + "\n"


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction in [0, 1] as a percentage without the sign (0.8051 -> 80.51)."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def mean_std(values: Iterable[float | None], scale: float = 100.0, digits: int = 2) -> str:
    """mean ± sample std of the values (one value: itself); '-' if any is missing."""
    values = list(values)
    if not values or any(v is None for v in values):
        return "-"
    xs = [scale * v for v in values]
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def mean(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else statistics.mean(values)
