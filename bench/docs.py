"""Tables generated into Markdown pages. A page marks where a table goes:

    <!-- table oneshot/by-alpha -->
    (generated: python -m bench docs)
    <!-- /table -->

`oneshot/by-alpha` is the table `by-alpha` of the study experiments/oneshot, made from its records;
`index` is the index of every study (experiments/README.md). `python -m bench docs` rewrites every
marked table of the pages below; `--check` (a test runs it) fails where a page and its records
disagree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench.study import EXPERIMENTS, ROOT, Study, all_studies
from bench.tables import Table

BLOCK = re.compile(r"(<!-- table (?P<name>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def pages() -> list[Path]:
    """Every page with generated tables: docs/results.md, the index and each study's README."""
    return [ROOT / "docs" / "results.md", EXPERIMENTS / "README.md", *(s.folder / "README.md" for s in all_studies())]


def index(prefix: str = ".") -> Table:
    """Question -> headline -> folder of every study; links relative to the page (`prefix`: experiments/).
    A study without records says so rather than leaving its headline empty."""
    rows = []
    for study in all_studies():
        rows.append([getattr(study.module, "QUESTION", ""), study.headline() or "not measured yet (no records)",
                     f"[{study.name}]({prefix}/{study.name}/README.md)"])
    return Table(["question", "headline", "study"], rows)


def render(name: str, page: Path) -> str:
    if name == "index":
        return index(os.path.relpath(EXPERIMENTS, page.parent)).markdown()
    study, _, table = name.partition("/")
    return Study.find(study).table(table).markdown()


def regenerate(text: str, page: Path) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), page) + m.group(4), text)


def stale_pages(write: bool) -> list[Path]:
    """The pages whose tables differ from their records (rewritten with `write`)."""
    stale = []
    for page in pages():
        if not page.is_file():
            continue
        text = page.read_text()
        new = regenerate(text, page)
        if new != text:
            stale.append(page)
            if write:
                page.write_text(new)
    return stale
