"""The layers of docs/architecture.md, held: no module imports one of a higher layer, and no two modules import each
other, directly or round a circle (imports inside functions count: a circle there is a circle in the design)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "samplebench"

# docs/architecture.md, lowest first: a module may import its own layer and those below
LAYERS = [
    {"errors", "checks", "names", "files", "cache", "noise", "schedules", "data", "weights"},
    {"samplers", "models", "usf"},
    {"compute", "loop", "learned", "cascade", "metrics", "results", "train"},
    {"plan"},
    {"sampling"},
    {"evaluate", "compare", "search", "align", "api"},
    {"app", "cli", "__main__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = ("samplebench",) + p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the samplebench modules it imports (the package facade's lazy ``__getattr__`` left out)."""
    edges = {}
    for name, path in modules.items():
        if name == "samplebench":
            continue
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = (".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                        if node.level else node.module)
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        edges[name] = {m for m in found if m in modules and m != name}
    return edges


def _layer(module: str) -> int:
    unit = module.split(".")[1] if "." in module else ""
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"{module}: its top-level name {unit!r} is in no layer of docs/architecture.md")


def _upward(edges: dict[str, set[str]]) -> list[str]:
    return [f"{a} -> {b}" for a, bs in sorted(edges.items()) for b in sorted(bs)
            if b != "samplebench" and _layer(b) > _layer(a)]


def _circles(edges: dict[str, set[str]]) -> list[str]:
    state, circles = {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                circles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return circles


EDGES = _imports(_modules())


def test_no_module_imports_a_higher_layer():
    assert not _upward(EDGES), "imports up the layers:\n" + "\n".join(_upward(EDGES))


def test_no_import_circles():
    assert not _circles(EDGES), "import circles:\n" + "\n".join(_circles(EDGES))


def test_the_checks_see_what_they_look_for():
    """Each check finds its fault on a graph that has it, and the graph read from the code has the edges it must."""
    assert _circles({"samplebench.a": {"samplebench.b"}, "samplebench.b": {"samplebench.c"},
                     "samplebench.c": {"samplebench.a"}}) == ["samplebench.a -> samplebench.b -> samplebench.c -> "
                                                              "samplebench.a"]
    assert _upward({"samplebench.loop": {"samplebench.plan"}}) == ["samplebench.loop -> samplebench.plan"]
    assert "samplebench.loop" in EDGES["samplebench.cascade"]  # a module-level import
    assert "samplebench.learned" in EDGES["samplebench.plan"]  # an import inside a function
    assert "samplebench.models.families" in EDGES["samplebench.models.loader"]
