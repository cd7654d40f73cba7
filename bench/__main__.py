"""python -m bench: list, run, table and docs for the studies in experiments/ (see bench/__init__.py)."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from bench.study import ROOT, Study, all_studies


def split(value: str | None, kind=str) -> list | None:
    return [kind(v) for v in value.split(",") if v] if value else None


@click.group()
def main() -> None:
    """fedinv's experiments: each folder of experiments/ is a study with its configs and records."""


@main.command("list")
def list_studies() -> None:
    """Every study: its variants, default seeds and tables."""
    for s in all_studies():
        click.echo(f"{s.name}: variants {', '.join(s.variants)}; seeds {','.join(map(str, s.seeds))}; "
                   f"tables {', '.join(s.tables)}")


@main.command()
@click.argument("study")
@click.option("--variants", default=None, help="comma-separated variants (configs/NAME.toml; default: all)")
@click.option("--seeds", default=None, help="comma-separated seeds (default: the study's SEEDS)")
@click.option("--quick", is_flag=True, help="tiny data and budgets (configs/quick.toml): seconds, for tests; "
              "records go to OUT/STUDY/results.jsonl, not to the study's")
@click.option("--again", is_flag=True, help="measure a (variant, seed) the records already hold once more")
@click.option("--out", default="runs/experiments", show_default=True, type=click.Path(path_type=Path),
              help="run folders go to OUT/STUDY/VARIANT/seed-S (a killed run continues from there)")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps")
@click.option("--threads", default=0, show_default=True, help="torch CPU threads (0: torch's default)")
def run(study: str, variants: str | None, seeds: str | None, quick: bool, again: bool, out: Path, device: str,
        threads: int) -> None:
    """Measure STUDY (a folder of experiments/ or its name): one record per line, printed and appended to
    its results.jsonl as each (variant, seed) finishes."""
    s = Study.find(study)
    try:
        chosen_seeds = split(seeds, int)
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: comma-separated integers", param_hint="--seeds")
    if threads:
        torch.set_num_threads(threads)
    s.run(split(variants) or s.variants, chosen_seeds or list(s.seeds), out, device, quick, again)


@main.command()
@click.argument("study")
@click.option("--name", default=None, help="one of the study's tables (default: all)")
@click.option("--records", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="read these records instead of the study's (e.g. a --quick run's)")
def table(study: str, name: str | None, records: Path | None) -> None:
    """Print STUDY's tables, made from its records."""
    s = Study.find(study)
    rows = s.records(records)
    for n in [name] if name else s.tables:
        click.echo(f"### {n}\n\n{s.table(n, rows).markdown()}")


@main.command()
@click.argument("study")
@click.option("--out", default="runs/experiments", show_default=True, type=click.Path(path_type=Path),
              help="the run folders of `run` (OUT/STUDY)")
@click.option("--seeds", default=None, help="comma-separated seeds (default: the study's SEEDS)")
@click.option("--to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write the pictures here (default: the study's figures/)")
def figures(study: str, out: Path, seeds: str | None, to: Path | None) -> None:
    """Draw STUDY's pictures from its run folders (studies that define `figures`)."""
    s = Study.find(study)
    draw = getattr(s.module, "figures", None)
    if draw is None:
        raise click.UsageError(f"{s.name} draws no pictures of its own; its figures/ holds what it has")
    for path in draw(out / s.name, split(seeds, int) or list(s.seeds), to or s.folder / "figures"):
        click.echo(path)


@main.command()
@click.option("--check", is_flag=True, help="change nothing; exit 1 when a page's tables differ from the records")
def docs(check: bool) -> None:
    """Regenerate every marked table in docs/results.md and the studies' READMEs from the records."""
    from bench.docs import stale_pages
    stale = stale_pages(write=not check)
    for page in stale:
        click.echo(f"{'stale' if check else 'rewritten'}: {page.relative_to(ROOT)}")
    if check and stale:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
