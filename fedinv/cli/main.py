"""`fedinv` command group; each command parses, builds a config and calls one library function."""

from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from ..distributed import world_from_env
from ..errors import FedinvError
from .export import export_cmd
from .federate import federate_cmd, federate_report_cmd
from .import_teacher import import_teacher_cmd
from .partition import models_cmd, partition_cmd
from .run import run_cmd
from .student import evaluate_cmd, train_student_cmd
from .synthesize import synthesize_cmd
from .train_teachers import train_teachers_cmd
from .view import audit_cmd, view_cmd


class _Group(click.Group):
    """Turns fedinv's own errors into one clear line and exit code 2 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FedinvError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:  # the file system said no: a read-only folder, a path that is a file, a full disk
            where = f" {e.filename}" if e.filename else ""
            click.echo(f"error: cannot read or write{where}: {e.strerror or e}; nothing was left half-written "
                       f"(files are written under a temporary name first)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: what was finished is saved; rerun the same command to continue", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fedinv")
@click.option("-v", "--verbose", count=True, help="more log output (-v info is the default; -vv debug)")
@click.option("-q", "--quiet", is_flag=True, help="warnings and errors only")
def cli(verbose: int, quiet: bool) -> None:
    """fedinv: one-shot, data-free federated learning.

    Pipeline: partition -> train-teachers (or import-teacher) -> synthesize -> train-student -> evaluate;
    `fedinv run CONFIG.toml` runs it all in one run folder. Multi-round mode (FedAvg, FedProx,
    FedDyn, SCAFFOLD, MOON, FedDistill, with FedFTG / FedDF / FedGen server steps):
    `fedinv federate CONFIG.toml`.
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if world_from_env().rank != 0:  # under torchrun, rank 0 speaks for the job
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


cli.add_command(partition_cmd)
cli.add_command(models_cmd)
cli.add_command(train_teachers_cmd)
cli.add_command(import_teacher_cmd)
cli.add_command(synthesize_cmd)
cli.add_command(view_cmd)
cli.add_command(audit_cmd)
cli.add_command(train_student_cmd)
cli.add_command(evaluate_cmd)
cli.add_command(export_cmd)
cli.add_command(run_cmd)
cli.add_command(federate_cmd)
cli.add_command(federate_report_cmd)


def main() -> None:
    cli()
