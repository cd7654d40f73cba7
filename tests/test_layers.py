"""Arrows point down (DESIGN.md): the CLI over the engines over the stages over the core; the
one-shot stages and the multi-round package never import each other. Checked on the source with
`ast`, so an import hidden inside a function counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "fedinv"

# (layer, rank): a module may import modules of its own layer or of a lower rank, never the
# other layer of the same rank.
LAYERS = {
    "core": 0,  # errors, runtime, config, data, models, store, checkpoint, train, aggregate, evaluate, ...
    "one-shot": 1,  # nodes, inversion, student, audit, pipeline
    "multi-round": 1,  # federated
    "engines": 2,  # flower
    "cli": 3,
}
PREFIXES = {
    "fedinv.nodes": "one-shot", "fedinv.inversion": "one-shot", "fedinv.student": "one-shot",
    "fedinv.audit": "one-shot", "fedinv.pipeline": "one-shot",
    "fedinv.federated": "multi-round",
    "fedinv.flower": "engines",
    "fedinv.cli": "cli", "fedinv.__main__": "cli",
}


def layer_of(module: str) -> str:
    for prefix, layer in PREFIXES.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "core"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def imports_of(path: Path) -> list[str]:
    """Absolute names of the fedinv modules `path` imports (`from .x import y` counts as .x and .x.y)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("fedinv")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("fedinv"):
                out.append(target)
                out += [f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")]
    return out


def arrows() -> list[tuple[str, str]]:
    return [(module_name(p), imported) for p in sorted(ROOT.rglob("*.py")) for imported in imports_of(p)]


def test_the_layer_map_sees_every_package():
    names = {module_name(p) for p in ROOT.rglob("*.py")}
    assert {"fedinv.federated.rounds", "fedinv.inversion.synthesize", "fedinv.train.core", "fedinv.cli.main"} <= names
    assert layer_of("fedinv.federated.ftg") == "multi-round" and layer_of("fedinv.train.core") == "core"
    assert ("fedinv.nodes", "fedinv.train.resume") in arrows()  # relative imports are resolved


@pytest.mark.parametrize("source,target", [
    ("fedinv.store", "fedinv.inversion.synthesize"), ("fedinv.nodes", "fedinv.federated.rounds"),
    ("fedinv.federated.ftg", "fedinv.student.train"), ("fedinv.train.core", "fedinv.cli.main")])
def test_the_rule_refuses_an_arrow_up_or_across(source, target):
    assert not allowed(source, target)


def allowed(source: str, target: str) -> bool:
    a, b = layer_of(source), layer_of(target)
    return a == b or LAYERS[b] < LAYERS[a]


def test_no_arrow_points_up_or_across():
    bad = [f"{s} -> {t} ({layer_of(s)} -> {layer_of(t)})" for s, t in arrows() if not allowed(s, t)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_distributed_knows_no_stage():
    assert all(layer_of(t) == "core" for s, t in arrows() if s == "fedinv.distributed")
