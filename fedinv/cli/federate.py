"""`fedinv federate` and `fedinv federate-report`."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import to_toml
from ..errors import ConfigError
from ..federated.config import FederatedRunConfig
from ..federated.report import compare, load_run
from ..federated.rounds import federate
from ..runtime import save_json, save_png, to_json
from .engines import engine_option, flower_module
from .parsing import (ConfigFile, print_config_option, progress_option, seed_option, tensorboard_option,
                      trust_model_option, with_seed)

SEEDED = ("partition", "federate")  # the tables whose seed --seed sets


@click.command("federate")
@click.argument("config", type=ConfigFile())
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="run folder (default: runs/<config file name>)")
@click.option("--resume", is_flag=True, hidden=True, help="accepted for old scripts; continuing is the rule")
@engine_option("the same code as a Flower app on Flower's simulation engine (starts fresh runs only)")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.FIELD=VALUE",
              help="override one field of the TOML, e.g. --set federate.rounds=100 (repeatable; the value in "
                   "TOML syntax; the run folder records the effective config)")
@seed_option(SEEDED)
@print_config_option
@progress_option()
@tensorboard_option
@trust_model_option
def federate_cmd(config: Path, out: Path | None, resume: bool, engine: str, overrides: tuple[str, ...],
                 seed: int | None, print_config: bool, progress: bool, tensorboard: bool,
                 trust: tuple[str, ...]) -> None:
    """Multi-round federated training from a TOML CONFIG.

    CONFIG has the tables [data], [partition], [federate] (algorithm: fedavg, fedprox, feddyn,
    scaffold, moon, feddistill, feddistill-query; server: none, ftg, feddf, fedgen; rounds,
    participation, local epochs, learning rates, aggregation: mean, or trimmed-mean, median, krum,
    multi-krum against poisoned models, ...), [generator] (the generator every server step
    trains), [attack] (simulated dishonest nodes: inflate, flip, random; none by default), one
    named after the algorithm for its own constants ([fedprox] mu, [feddyn] alpha, [moon] mu and temperature,
    [feddistill] temperature, weight, personal_model, [feddistill-query] temperature,
    validation_size, server_epochs) and one named after the server step for its own ([ftg] and
    [feddf]: the fine-tuning, bn_stats, save_every, ...; [ftg] ensemble, lambda_md; [fedgen]
    weight). Every field and its default: fedinv/federated/config.py, the algorithm's and the server
    step's file, and fedinv/configs/fmnist-rounds.toml (a shipped config: `fedinv federate
    fmnist-rounds`). Writes OUT/metrics.jsonl (a line per round), OUT/checkpoint.pt (every round),
    and at the end OUT/global.pt and OUT/report.json. Rerunning the same command continues the run
    in OUT from its last finished round (in-process engine; a finished run rerun with a larger
    `rounds` is extended); a run of another config there is refused. A model from outside the
    registry (`model = "torchvision.models:resnet18"`, "timm:NAME") needs --trust-model naming it.
    """
    cfg = FederatedRunConfig.from_toml(config, with_seed(overrides, seed, SEEDED))
    if print_config:
        click.echo(to_toml(cfg.to_dict()), nl=False)
        return
    out = out or Path("runs") / config.stem
    if engine == "flower":
        if tensorboard or trust:
            raise ConfigError(f"{'--tensorboard' if tensorboard else '--trust-model'} works with the in-process "
                              f"engine only")
        report = flower_module("simulation").federate_flower(cfg, out)
    else:
        report = federate(cfg, out, progress=progress, tensorboard=tensorboard, trust=trust)
    click.echo(to_json({k: v for k, v in report.items() if k not in ("history", "config")}, indent=2))


@click.command("federate-report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder for table.md, accuracy.png and summary.json")
@click.option("--target", "targets", type=float, multiple=True, default=(0.8, 0.85), show_default=True,
              help="test accuracy targets for the rounds-to-target columns (repeatable)")
def federate_report_cmd(runs: tuple[Path, ...], out: Path, targets: tuple[float, ...]) -> None:
    """Compare `fedinv federate` RUNS: rounds to each target accuracy, final accuracy, wall time per
    round and the server step's share of it, and an accuracy-vs-round plot (one curve per run)."""
    rows, table, plot = compare([load_run(r) for r in runs], targets)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    save_png(plot, out / "accuracy.png")
    save_json({"runs": [str(r) for r in runs], "targets": list(targets), "rows": rows}, out / "summary.json")
    click.echo(table)
