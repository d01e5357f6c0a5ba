"""The package's rooms and the direction of their imports (issue 24, point 2).

Every import of a ``stunet`` module by another, at module level or inside a function, must go downward in the order
below, and the modules of one room must not import each other in a cycle. A room's ``__init__`` docstring says what
it holds and what it may import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# lowest first; a module may import its own room and the rooms before it
ORDER = ["base", "io", "models", "weights", "clinical", "evaluation", "nnunet", "deploy", "prediction", "cli", "top"]
BASE = {"stunet.errors", "stunet.settings", "stunet.version", "stunet.paths", "stunet.atomic", "stunet.cpu_memory", "stunet.labels", "stunet.label_maps", "stunet.archives", "stunet.digest", "stunet.locks"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "stunet").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "nnunet_plugins").glob("*.py")):
        stem = path.stem
        found["stunet.nnunet_plugins" + ("" if stem == "__init__" else f".{stem}")] = path
    return found


MODULES = _modules()


def room(module: str) -> str:
    if module == "stunet":
        return "top"
    if module in BASE or module.startswith("stunet.label_maps"):
        return "base"
    if module.startswith("stunet.nnunet_plugins"):
        return "nnunet"
    second = module.split(".")[1]
    if second not in ORDER:
        raise AssertionError(f"{module} is in no room; put it in one of {ORDER[1:-1]} or the base modules")
    return second


def _resolve(name: str) -> str | None:
    """The stunet module an import names (a name imported from a package may be a module of it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stunet"):
            for alias in node.names:
                target = _resolve(f"{node.module}.{alias.name}")
                if target:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found |= {t for a in node.names if a.name.startswith("stunet") and (t := _resolve(a.name))}
    found.discard(module)
    return {m for m in found if m != module.rpartition(".")[0] or not MODULES[m].name == "__init__.py"}


GRAPH = {m: imports_of(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downward(module):
    own = ORDER.index(room(module))
    upward = sorted(t for t in GRAPH[module] if ORDER.index(room(t)) > own)
    assert not upward, f"{module} ({room(module)}) imports {upward} from a room above it"


def test_no_import_cycles():
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_room_says_what_it_holds():
    for name in ORDER[1:-1]:
        init = ROOT / "stunet" / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "may import" in doc.lower(), f"{init}: the docstring must say what the room holds and what it may import"
