"""Parsing of option values shared by several commands."""

from __future__ import annotations

from ..errors import ConfigError


def parse_numbers(text: str | None, option: str) -> list[int] | None:
    """'0,3' or '0-2,4' -> [0, 3] / [0, 1, 2, 4]; empty or None -> None (meaning: all)."""
    if not text:
        return None
    numbers: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            numbers += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers or ranges, e.g. 0,3 or 0-2")
    return numbers
