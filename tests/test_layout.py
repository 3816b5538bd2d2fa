"""lib/'s layout as lib/__init__.py draws it: imports flow one way (no cycle), the packages under the core import
nothing above them, and the packages beside it are never imported by the core (torchrun's lib.scale.distributed
aside). Read from the source files, module-level and function-level imports alike."""
from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"
UNDER = ("lib.sources", "lib.guard")
BESIDE = ("lib.colab", "lib.scale", "lib.analysis", "lib.bench")


def _module(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the lib modules it imports (``from . import x`` resolved to lib.x when that is a module)."""
    modules = {_module(p): p for p in LIB.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("lib"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if not base.startswith("lib"):
                    continue
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {m for m in found if m in modules and m != name and m != "lib"}
    return graph


def _under(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_import_graph_has_no_cycle():
    graph, state, cycle = _imports(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycle.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycle, cycle
    assert {"lib.train", "lib.guard.stopping", "lib.sources.official"} <= set(graph)  # the walk saw the packages


def test_packages_under_the_core_import_nothing_above_them():
    graph = _imports()
    allowed = {"lib.common", "lib.data"}  # lib.sources.synthetic writes what lib.data reads
    for m, deps in graph.items():
        if _under(m, UNDER):
            above = {d for d in deps if not _under(d, UNDER) and d not in allowed}
            assert not above, (m, above)


def test_the_core_never_imports_the_packages_beside_it():
    graph = _imports()
    for m, deps in graph.items():
        if not _under(m, UNDER + BESIDE):
            beside = {d for d in deps if _under(d, BESIDE)} - {"lib.scale", "lib.scale.distributed"}
            assert not beside, (m, beside)
