"""The import graph, drawn from the source with `ast` (an import inside a function or under
TYPE_CHECKING counts too): arrows point down, and nothing imports in a circle.

The layers are the folders: `cli/` over the engines (`flower/`) over the two modes (`oneshot/`,
`federated/`), which never import each other, over the shared core (every other module and
package of fedinv). Inside the core, and inside each mode, the units (a top-level module or
package, e.g. `fedinv.train`) import each other without a circle, so they too stack in layers.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "fedinv"

# the folders that are layers above the core, and their rank; everything else is core (rank 0)
RANKS = {"oneshot": 1, "federated": 1, "flower": 2, "cli": 3, "__main__": 4}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The top-level folder of a module when it is a layer of its own, else "core"."""
    top = module.split(".")[1] if "." in module else ""
    return top if top in RANKS else "core"


def unit_of(module: str, depth: int = 2) -> str:
    """fedinv.train.core -> fedinv.train; fedinv.oneshot.synthesis.fast -> (depth 3) fedinv.oneshot.synthesis."""
    return ".".join(module.split(".")[:depth])


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
    return [(module_name(p), imported) for p in sorted(ROOT.rglob("*.py")) for imported in imports_of(p)
            if imported != module_name(p)]


def allowed(source: str, target: str) -> bool:
    a, b = layer_of(source), layer_of(target)
    return a == b or RANKS.get(b, 0) < RANKS.get(a, 0)


def circles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for s, t in edges:
        graph.setdefault(s, set()).add(t)
        graph.setdefault(t, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_layer_map_sees_every_package():
    names = {module_name(p) for p in ROOT.rglob("*.py")}
    assert {"fedinv.federated.rounds", "fedinv.oneshot.synthesis.synthesize", "fedinv.train.core",
            "fedinv.cli.main"} <= names
    assert layer_of("fedinv.federated.ftg") == "federated" and layer_of("fedinv.train.core") == "core"
    assert layer_of("fedinv.oneshot.synthesis.fast") == "oneshot" and layer_of("fedinv.__main__") == "__main__"
    assert ("fedinv.oneshot.teachers", "fedinv.train.resume") in arrows()  # relative imports are resolved
    tops = {p.name if p.is_dir() else p.stem for p in ROOT.iterdir() if p.name != "__pycache__"}
    assert set(RANKS) <= tops, "every layer named here is a folder (or module) of fedinv"


@pytest.mark.parametrize("source,target", [
    ("fedinv.store", "fedinv.oneshot.synthesis.synthesize"), ("fedinv.oneshot.teachers", "fedinv.federated.rounds"),
    ("fedinv.federated.ftg", "fedinv.oneshot.student.train"), ("fedinv.train.core", "fedinv.cli.main")])
def test_the_rule_refuses_an_arrow_up_or_across(source, target):
    assert not allowed(source, target)


def test_no_arrow_points_up_or_across():
    bad = [f"{s} -> {t} ({layer_of(s)} -> {layer_of(t)})" for s, t in arrows() if not allowed(s, t)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_circles_are_found():
    assert circles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]
    assert circles([("a", "b"), ("b", "c")]) == []


def test_no_module_imports_in_a_circle():
    found = circles(arrows())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("layer,depth", [("core", 2), ("oneshot", 3), ("federated", 3)])
def test_the_units_of_a_layer_stack_without_a_circle(layer, depth):
    """Within the core (fedinv.config, fedinv.train, fedinv.data, ...) and within each mode
    (fedinv.oneshot.synthesis, fedinv.oneshot.student, ...), no unit imports one that imports it back:
    an arrow up inside a layer shows as such a circle."""
    edges = [(unit_of(s, depth), unit_of(t, depth)) for s, t in arrows()
             if layer_of(s) == layer_of(t) == layer and unit_of(s, depth) != unit_of(t, depth)
             and len(s.split(".")) >= depth and len(t.split(".")) >= depth]
    found = circles(edges)
    assert not found, f"circles between the units of {layer}:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_distributed_knows_no_stage():
    assert all(layer_of(t) == "core" for s, t in arrows() if s == "fedinv.distributed")
