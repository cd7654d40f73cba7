"""`fedinv run`."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import to_toml
from ..oneshot.pipeline import RunConfig, run_pipeline
from ..runtime import to_json
from .parsing import (ConfigFile, print_config_option, progress_option, seed_option, tensorboard_option,
                      trust_model_option, with_seed)

SEEDED = ("partition", "teachers", "synthesis", "student")  # the tables whose seed --seed sets


@click.command("run")
@click.argument("config", type=ConfigFile())
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="run folder (default: runs/<config file name>)")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.FIELD=VALUE",
              help="override one field of the TOML, e.g. --set synthesis.deepinversion.iterations=200 "
                   "(repeatable; the value in TOML syntax; the run folder records the effective config)")
@seed_option(SEEDED)
@print_config_option
@progress_option()
@tensorboard_option
@trust_model_option
def run_cmd(config: Path, out: Path | None, overrides: tuple[str, ...], seed: int | None, print_config: bool,
            progress: bool, tensorboard: bool, trust: tuple[str, ...]) -> None:
    """Run the one-shot pipeline from a TOML CONFIG in one run folder:
    partition -> train-teachers -> synthesize -> train-student -> evaluate -> view.

    CONFIG has the tables [data], [partition], [teachers], [synthesis], [student], each setting
    fields of that stage (the options of the matching command, with underscores); the synthesis
    method's own settings go in [synthesis.METHOD] (e.g. [synthesis.fast] steps = 5). A complete
    stage is skipped and an interrupted one continues, so rerunning a killed run finishes it.
    CONFIG may also name a config shipped with fedinv (fedinv/configs/NAME.toml, assets/configs in
    the repository): `fedinv run demo` (make demo's), `fedinv run tiny` (seconds, generated data),
    `fedinv run fmnist-dirichlet-0.1`, ... A model from outside the registry (`model =
    "torchvision.models:resnet18"`, "timm:NAME") needs --trust-model naming it.
    """
    cfg = RunConfig.from_toml(config, with_seed(overrides, seed, SEEDED))
    if print_config:
        click.echo(to_toml(cfg.to_dict()), nl=False)
        return
    summary = run_pipeline(cfg, out or Path("runs") / config.stem, progress=progress, tensorboard=tensorboard,
                           trust=trust)
    click.echo(to_json({k: v for k, v in summary.items() if k != "student_history"}, indent=2))

