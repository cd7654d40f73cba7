"""Comparing multi-round runs: rounds to a target accuracy (fedftg-supplementary.txt Table 3 form),
final accuracy, time per round, and an accuracy-vs-round PNG with one curve per method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..errors import ConfigError
from ..viz import line_plot
from .rounds import mean_last_accuracy, rounds_to_target


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The report of a finished run, or of a partial one rebuilt from its metrics.jsonl."""
    run = Path(run_dir)
    if (run / "report.json").is_file():
        return json.loads((run / "report.json").read_text())
    metrics, config = run / "metrics.jsonl", run / "config.json"
    if not metrics.is_file() or not config.is_file():
        raise ConfigError(f"{run} is not a `fedinv federate` run folder (no report.json or metrics.jsonl)")
    cfg = json.loads(config.read_text())["federate"]
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evaluated = [r["test_accuracy"] for r in history if "test_accuracy" in r]
    return {"method": cfg["algorithm"] + ("" if cfg["server"] == "none" else "+" + cfg["server"]),
            "history": history, "final_accuracy": evaluated[-1] if evaluated else None, "complete": False,
            "seconds_per_round": sum(r["seconds"] for r in history) / max(len(history), 1)}


def compare(runs: Sequence[dict[str, Any]], targets: Sequence[float]) -> tuple[list[dict[str, Any]], str, Image.Image]:
    """(one row per run, a Markdown table, the accuracy-vs-round plot)."""
    rows = []
    for r in runs:
        server = [h["server_seconds"] for h in r["history"] if "server_seconds" in h]
        row = {"method": r["method"], "rounds": len(r["history"]), "final_accuracy": r["final_accuracy"],
               "mean_last_5_accuracy": mean_last_accuracy(r["history"], 5),
               "seconds_per_round": r["seconds_per_round"],
               "server_share": (sum(server) / sum(h["seconds"] for h in r["history"])) if server else None}
        row.update({f"rounds_to_{round(t * 100)}": rounds_to_target(r["history"], t) for t in targets})
        rows.append(row)
    head = ["method", *[f"rounds to {round(t * 100)}%" for t in targets], "final accuracy", "mean of last 5",
            "rounds", "s / round", "server share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], *[str(row[f"rounds_to_{round(t * 100)}"] or "-") for t in targets],
                 f"{100 * row['final_accuracy']:.2f}" if row["final_accuracy"] is not None else "-",
                 f"{100 * row['mean_last_5_accuracy']:.2f}" if row["mean_last_5_accuracy"] is not None else "-",
                 str(row["rounds"]), f"{row['seconds_per_round']:.1f}",
                 f"{100 * row['server_share']:.0f}%" if row["server_share"] is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    curves = {r["method"]: [(h["round"], h["test_accuracy"]) for h in r["history"] if "test_accuracy" in h]
              for r in runs}
    return rows, "\n".join(lines) + "\n", line_plot(curves, title="test accuracy per round")
