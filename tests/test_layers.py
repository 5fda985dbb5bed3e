"""The layers hold: the library imports neither the stream roles nor the producers, only the command's root
(asmg_cli) imports everything, and there is no import cycle between modules.

Read from the source with ``ast`` (nothing is imported): every ``import`` counts, also the ones inside
functions (a lazy import is still an arrow) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("asmg", "asmg_cli", "streams", "producers")
# who may import whom (besides itself): the library at the bottom, the command's root on top
ALLOWED = {
    "asmg": set(),
    "streams": {"asmg"},
    "producers": {"asmg", "streams"},
    "asmg_cli": {"asmg", "streams", "producers"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports."""
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_layers_point_down() -> None:
    graph = import_graph()
    assert "asmg.updater" in graph and "streams.windowing.core" in graph  # the walk found the tree
    wrong = sorted(f"{source} imports {target}" for source, targets in graph.items() for target in targets
                   if (a := source.split(".")[0]) != (b := target.split(".")[0]) and b not in ALLOWED[a])
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_what_they_guard() -> None:
    graph = {"asmg.a": {"asmg.b"}, "asmg.b": {"asmg.c"}, "asmg.c": {"asmg.a"}, "asmg.d": set()}
    assert cycles(graph) == [["asmg.a", "asmg.b", "asmg.c"]]
    assert ALLOWED["asmg"] == set()  # the library imports no other package of the project
