"""The import graph: no cycle, and no layer imports a higher one (docs/architecture.md).

Layers, lowest first::

    messages  →  services.domain  →  services.infra  →  services.providers
              →  services.actors  →  services.app (and services/__init__, services/config)
              →  astrbot_bridge  →  main (the AstrBot entry point)

Every import that runs is counted — at module level or inside a function — except those
under ``if TYPE_CHECKING:``, which exist only for the type checker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("messages", "services", "astrbot_bridge")

LAYERS = (
    "messages",
    "services.domain",
    "services.infra",
    "services.providers",
    "services.actors",
    "services.app",
    "astrbot_bridge",
    "main",
)


def _modules() -> dict[str, Path]:
    out = {"main": ROOT / "main.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    if module in ("services", "services.config"):  # the public entry points
        return LAYERS.index("services.app")
    best = -1
    for i, name in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            best = i
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)")
    return best


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports when it runs (resolved, relative imports included)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}" if target else alias.name
                found.add(candidate if candidate in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {module: imports_of(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    mine = layer_of(module)
    higher = sorted(dep for dep in GRAPH[module] if layer_of(dep) > mine)
    assert higher == [], f"{module} ({LAYERS[mine]}) imports higher layers: {higher}"


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checker_sees_imports() -> None:
    """The graph is real: known edges are found, relative and absolute alike."""
    assert "messages" in GRAPH["services.domain.state"] or "messages._events" in GRAPH["services.domain.state"]
    assert "services.actors.router" in GRAPH["services.app.stack"]
    assert any(dep.startswith("astrbot_bridge.") for dep in GRAPH["main"])
    assert layer_of("services.infra.bus") < layer_of("services.actors.router")
