"""The package's import graph is a DAG, read from the source with ``ast``.

Every ``import`` counts, the function-local ones too (an import moved into a
function to dodge a cycle is still that cycle). Imports under
``if TYPE_CHECKING:`` are left out: they never run, so they cannot make a
cycle at run time, and type annotations may name any module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import kfwguard

ROOT = Path(kfwguard.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}
# C extensions (their .pyi stub stands for them): imported, importing nothing.
EXTENSIONS = {module_name(p) for p in ROOT.rglob("*.pyi")} - MODULES.keys()
KNOWN = MODULES.keys() | EXTENSIONS


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def imported_by(module: str) -> set[str]:
    """The package's modules that ``module`` imports (at any depth in its code)."""
    path = MODULES[module]
    return imports_in(path.read_text(), module, path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool) -> set[str]:
    """The package's modules that the code ``source`` of ``module`` imports."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from a import b": the submodule a.b if there is one (Python finds it
            # even while a's __init__ runs), else a name a's __init__ defines.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in KNOWN
                     else base for a in node.names]
        for name in names:
            # "import a.b.c" names a module; "from a.b import c" names one or an attribute.
            while name and name not in MODULES and name not in EXTENSIONS:
                name = name.rpartition(".")[0]
            if name.startswith("kfwguard") and name != module:
                out.add(name)
    return out


GRAPH = {m: imported_by(m) for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in import order), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


class TestImportGraph:
    def test_no_cycle(self) -> None:
        """No chain of imports (function-local ones included) leads a module back to itself."""
        assert find_cycle(GRAPH) is None

    def test_only_the_composition_root_and_the_cli_import_the_daemon(self) -> None:
        """kfwguard.daemon is imported by kfwguard.app and kfwguard.cli only."""
        importers = {m for m, deps in GRAPH.items() if "kfwguard.daemon" in deps}
        assert importers <= {"kfwguard.app", "kfwguard.cli"}

    def test_function_local_imports_count_type_checking_ones_do_not(self) -> None:
        """An import inside a function (absolute or relative) is an edge; one under
        ``if TYPE_CHECKING:`` is not."""
        source = (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from kfwguard.daemon import Daemon\n"
            "def f() -> None:\n"
            "    from kfwguard.operator.surface import Operator\n"
            "    from .bans import BanManager\n"
            "    import kfwguard.matching.engine\n")
        assert {"kfwguard.operator.surface", "kfwguard.bans",
                "kfwguard.matching.engine"} == imports_in(source, "kfwguard.control", False)

    def test_the_finder_reports_a_cycle(self) -> None:
        """find_cycle names the modules of a cycle in order, and finds none in a DAG."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        assert ["a", "b", "c", "a"] == find_cycle(graph)
        assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
