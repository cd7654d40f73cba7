"""A study: a folder of experiments/ with its question, configs, code, records and figures.

    experiments/<name>/
        README.md        the question, the setting, the commands, the tables (generated), conclusions
        study.py         QUESTION, SEEDS, run(cfg, seed, out, device) -> records, TABLES, headline()
        configs/         base.toml; one TOML per variant (over base); quick.toml (tiny data, seconds)
        results.jsonl    the records (bench.records)
        figures/

The resume rule, for every study: a (variant, seed) that the study's records already hold is read
back, not measured again (`--again` measures it anew: a new line, and tables take the last one); a
(variant, seed) killed part-way leaves no record and runs again, and the study's run folder
(OUT/<study>/<variant>/seed-S) lets fedinv's own stages continue where they stopped.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import shlex
import sys
import tomllib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import click

from bench.machine import describe
from bench.records import append_records, read_records
from bench.tables import Table
from fedinv import __version__

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
NOT_VARIANTS = ("base", "quick")


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over`'s tables and fields put over `base`'s, table by table (a deep merge)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def all_studies() -> list["Study"]:
    return [Study(p.parent) for p in sorted(EXPERIMENTS.glob("*/study.py"))]


@dataclass(frozen=True)
class Study:
    folder: Path

    @classmethod
    def find(cls, name_or_folder: str) -> "Study":
        """A study by its folder or its name ('experiments/oneshot' or 'oneshot')."""
        folder = Path(name_or_folder)
        for candidate in (folder, EXPERIMENTS / folder.name):
            if (candidate / "study.py").is_file():
                return cls(candidate.resolve())
        names = ", ".join(s.name for s in all_studies())
        raise click.BadParameter(f"{name_or_folder!r} is not a study; the studies are: {names}", param_hint="STUDY")

    @property
    def name(self) -> str:
        return self.folder.name

    @cached_property
    def module(self) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"experiments.{self.name.replace('-', '_')}",
                                                      self.folder / "study.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look a class's module up there
        spec.loader.exec_module(module)
        return module

    @property
    def records_path(self) -> Path:
        return self.folder / "results.jsonl"

    def records(self, path: Path | None = None) -> list[dict[str, Any]]:
        return read_records(path or self.records_path)

    @property
    def variants(self) -> list[str]:
        """The variants: one per TOML in configs/ besides base and quick; 'base' (base.toml alone) too where
        there is no other or the study says BASE_VARIANT = True (a study comparing variants with its base)."""
        names = sorted(p.stem for p in (self.folder / "configs").glob("*.toml") if p.stem not in NOT_VARIANTS)
        return ["base", *names] if not names or getattr(self.module, "BASE_VARIANT", False) else names

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(getattr(self.module, "SEEDS", (0,)))

    def config(self, variant: str, quick: bool = False) -> dict[str, Any]:
        """base.toml, the variant's TOML over it, and quick.toml over both with `quick`."""
        if variant not in self.variants:
            raise click.BadParameter(f"{variant!r}; {self.name}'s variants are: {', '.join(self.variants)}",
                                     param_hint="--variants")
        configs = self.folder / "configs"
        cfg: dict[str, Any] = {}
        for name in ("base", variant, "quick" if quick else ""):
            path = configs / f"{name}.toml"
            if name and path.is_file():
                cfg = merged(cfg, tomllib.loads(path.read_text()))
        if (check := getattr(self.module, "check", None)) is not None:  # the study's own fields, before any run
            try:
                check(cfg)
            except ValueError as e:
                raise click.BadParameter(f"{variant!r}: {e}", param_hint="--variants") from None
        return cfg

    @property
    def tables(self) -> dict[str, Callable[[list[dict]], Table]]:
        return dict(getattr(self.module, "TABLES", {}))

    def table(self, name: str, records: list[dict] | None = None) -> Table:
        if name not in self.tables:
            raise click.BadParameter(f"{name!r}; {self.name}'s tables are: {', '.join(self.tables)}",
                                     param_hint="--name")
        return self.tables[name](self.records() if records is None else records)

    def headline(self, records: list[dict] | None = None) -> str:
        fn = getattr(self.module, "headline", None)
        return fn(self.records() if records is None else records) if fn else ""

    def command(self, variant: str, seed: int, quick: bool) -> str:
        folder = self.folder.relative_to(ROOT) if self.folder.is_relative_to(ROOT) else self.folder
        return f"python -m bench run {shlex.quote(str(folder))} --variants {variant} --seeds {seed}" + (
            " --quick" if quick else "")

    def measure(self, variant: str, seed: int, out: Path, device: str, quick: bool) -> Iterator[dict[str, Any]]:
        """The records of one (variant, seed), each as soon as the study yields it."""
        cfg = self.config(variant, quick)
        folder = out / self.name / variant / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        for figures in self.module.run(cfg, seed, folder, device):
            yield {"study": self.name, "variant": variant, "seed": seed, **figures,
                   "command": self.command(variant, seed, quick), "config": cfg, "machine": describe(device),
                   "fedinv_version": __version__, "date": datetime.date.today().isoformat()}

    def run(self, variants: list[str], seeds: list[int], out: Path, device: str = "auto", quick: bool = False,
            again: bool = False, records_path: Path | None = None) -> list[dict[str, Any]]:
        """Measure every (variant, seed) the records do not hold yet (all of them with `again`); the records
        of a (variant, seed) are appended when it finishes. --quick records go to OUT/<study>/results.jsonl,
        never to the study's own file. Returns the records of every (variant, seed) asked for."""
        for v in variants:
            self.config(v, quick)  # an unknown variant is refused before any work
        path = records_path or (out / self.name / "results.jsonl" if quick else self.records_path)
        done = []
        for variant in variants:
            for seed in seeds:
                held = [r for r in read_records(path) if r.get("variant") == variant and r.get("seed") == seed]
                if held and not again:
                    click.echo(f"{self.name} {variant} seed {seed}: recorded ({len(held)} lines), read back "
                               "(--again measures it anew)", err=True)
                    done += held
                    continue
                new = []
                for record in self.measure(variant, seed, out, device, quick):
                    click.echo(json.dumps({k: v for k, v in record.items() if k != "config"}))
                    new.append(record)
                append_records(path, new)
                done += new
        return done


def python_path() -> None:
    """Studies import `bench` and `fedinv`: the repository root goes first on sys.path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
