"""`fedinv export`."""

from __future__ import annotations

from pathlib import Path

import click

from ..export import FORMATS, export_model
from .parsing import trust_model_option


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the file to write (e.g. student.pt2 or student.onnx)")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="pt2", show_default=True,
              help="pt2: torch.export's program, loaded with torch.export.load(OUT).module() (PyTorch alone); "
                   "onnx: ONNX (needs the onnx package)")
@trust_model_option
def export_cmd(checkpoint: Path, out: Path, fmt: str, trust: tuple[str, ...]) -> None:
    """Write the model of a teacher, student or global-model CHECKPOINT for use without fedinv: it takes
    normalized images [B, C, H, W] (any B) and returns logits [B, K], as in fedinv; the file records
    the normalization, image shape and class names (`fedinv.json`)."""
    click.echo(export_model(checkpoint, out, fmt, trust))
