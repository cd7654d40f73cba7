"""Docstrings and comments name only files that exist: every `NAME.py` and `NAME.md` the package's
source mentions is a file of the repository (a run's outputs aside)."""

import os
import re
from pathlib import Path

REPO = Path(__file__).parent.parent
OUTPUTS = {"table.md"}  # files fedinv writes into a run folder
MENTION = re.compile(r"(?<![\w/.-])([\w/-]+\.(?:py|md))\b")


SKIP = {".git", ".venv", "runs", "__pycache__", ".pytest_cache"}  # not the repository's own files


def repository_files() -> set[str]:
    files = set()
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in SKIP]
        files |= {(Path(folder) / n).relative_to(REPO).as_posix() for n in names}
    return files | {Path(f).name for f in files}


def mentions(path: Path) -> list[tuple[int, str]]:
    return [(i, m.group(1)) for i, line in enumerate(path.read_text().splitlines(), 1)
            for m in MENTION.finditer(line) if not line.lstrip().startswith(("from ", "import "))]


def test_the_source_names_only_files_that_exist():
    files = repository_files()
    missing = [f"{p.relative_to(REPO)}:{i}: {name}" for p in sorted((REPO / "fedinv").rglob("*.py"))
               for i, name in mentions(p)
               if name not in OUTPUTS and name not in files and Path(name).name not in files]
    assert not missing, "names of files that do not exist:\n" + "\n".join(missing)


def test_a_missing_file_is_seen(tmp_path):
    probe = tmp_path / "x.py"
    probe.write_text('"""see objective.py and nowhere.py"""\n')
    assert [name for _, name in mentions(probe)] == ["objective.py", "nowhere.py"]
    assert "objective.py" in repository_files() and "nowhere.py" not in repository_files()


PAPER = re.compile(r"(?<![\w/.-])([a-z][\w*-]*\.txt)\b")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_paper_named_by_its_file_is_in_the_references():
    references = (REPO / "docs" / "references.md").read_text()
    texts = [*sorted((REPO / "fedinv").rglob("*.py")), REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    named = {m.group(1) for p in texts for m in PAPER.finditer(p.read_text())}
    assert named, "the source names papers by their file"
    missing = sorted(name for name in named if f"`{name}`" not in references)
    assert not missing, f"papers named but not in docs/references.md: {missing}"


def test_every_link_of_the_docs_leads_to_a_file_of_the_repository():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for m in LINK.finditer(page.read_text()):
            target = m.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)
