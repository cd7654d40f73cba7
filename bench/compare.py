"""Compare finished or running multi-round runs round by round, from their metrics.jsonl.

    python -m bench.compare fedavg=runs/rounds-reference/gncnn/fedavg-seed-0 \\
        ftg=runs/rounds-reference/gncnn/fedavg-ftg-seed-0 --plot docs/some.png

The first run is the base. Per run, over the rounds every run has finished, prints JSON: the mean
test accuracy over those rounds, the rounds it is ahead of the base, and, where the run records
`--diagnose` figures with a server step, how the global model after the step compares with the
aggregate before it (rounds ahead, mean difference per third of the rounds) and with the round's
class-level logit ensemble, and the median distillation loss. --plot draws each run's test accuracy
as the mean of the last --window rounds (the single rounds of a 10%-participation run jump by
several points).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from fedinv.errors import ConfigError
from fedinv.federated.report import load_run
from fedinv.federated.rounds import mean_last_accuracy
from fedinv.runtime import save_png
from fedinv.viz import line_plot


def compare(histories: dict[str, list[dict]]) -> dict[str, dict]:
    """Per run: the figures the module docstring lists, over the rounds all runs have."""
    n = min(len(h) for h in histories.values())
    base = [r["test_accuracy"] for r in next(iter(histories.values()))[:n]]
    out = {}
    for name, history in histories.items():
        rows = history[:n]
        acc = [r["test_accuracy"] for r in rows]
        row = {"rounds": n, "mean_accuracy": float(np.mean(acc)),
               "rounds_ahead_of_base": sum(a > b for a, b in zip(acc, base))}
        diag = [r for r in rows if "diagnose_global_accuracy" in r and "server_distill" in r]
        if diag:
            gap = [r["diagnose_global_accuracy"] - r["diagnose_aggregate_accuracy"] for r in diag]
            thirds = np.array_split(np.array(gap), 3)
            row.update(after_step_ahead_of_aggregate=sum(g > 0 for g in gap), diagnosed_rounds=len(gap),
                       after_step_minus_aggregate=float(np.mean(gap)),
                       after_step_minus_aggregate_by_third=[float(t.mean()) for t in thirds if len(t)],
                       distill_median=float(np.median([r["server_distill"] for r in diag])))
            logit = [r for r in diag if "diagnose_logit_ensemble_accuracy" in r]
            if logit:
                row["after_step_to_logit_ensemble"] = float(np.mean(
                    [abs(r["diagnose_global_accuracy"] - r["diagnose_logit_ensemble_accuracy"]) for r in logit]))
        out[name] = row
    return out


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="NAME=RUN_DIR...")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the accuracy curves (mean of the last --window rounds) to this PNG")
@click.option("--window", default=5, show_default=True, help="rounds in the plot's running mean")
@click.option("--title", default="", help="the plot's title")
def main(runs: tuple[str, ...], plot: Path | None, window: int, title: str) -> None:
    histories = {}
    for spec in runs:
        name, sep, folder = spec.partition("=")
        try:
            if not sep:
                raise ConfigError("no '='")
            histories[name] = load_run(folder)["history"]
        except ConfigError as e:
            raise click.BadParameter(f"{spec!r}: give NAME=RUN_DIR, a run folder ({e})", param_hint="RUNS") from e
    click.echo(json.dumps(compare(histories), indent=2))
    if plot is not None:
        curves = {name: [(float(r["round"]), mean_last_accuracy(h[:i + 1], window)) for i, r in enumerate(h)]
                  for name, h in histories.items()}
        plot.parent.mkdir(parents=True, exist_ok=True)
        save_png(line_plot(curves, title=title or f"test accuracy, mean of the last {window} rounds"), plot)


if __name__ == "__main__":
    main()
