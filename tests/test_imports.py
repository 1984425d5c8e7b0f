"""House rules drawn from the code: no import circle, and no module too big to read whole.

The graph holds every import of every module of the packages below, those inside functions
too (a circle that only closes at call time still ties the two modules together). ``from pkg
import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``; importing a
submodule is an edge to it alone, not to the packages above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("testprio", "components", "pipelines", "report_app")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of PACKAGES."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    package = parts if is_package else parts[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {name for name in found if name in modules and name != module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search, each as ``[a, b, ..., a]``."""
    found = []
    state: dict[str, str] = {}  # "open" while on the search path, "done" after
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_the_graph_sees_imports_of_every_kind():
    graph = import_graph()
    assert "testprio.storage" in graph["testprio.reference"]  # from testprio import storage
    assert "testprio.ingest.sources" in graph["testprio.ingest.readers"]  # a submodule
    assert "testprio.ingest" in graph["testprio.stages"]  # a name of a package: the package
    assert "testprio.stages" in graph["components.ingest"]  # inside the component's body


def test_relative_imports_are_resolved(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "__init__.py").write_text("from . import a\nfrom ..b import name\n")
    (package / "sub" / "a.py").write_text("def f():\n    from .. import b\n")
    modules = {
        "pkg.sub": package / "sub" / "__init__.py",
        "pkg.sub.a": package / "sub" / "a.py",
        "pkg.b": package / "b.py",
    }
    assert imports_of("pkg.sub", modules["pkg.sub"], modules) == {"pkg.sub.a", "pkg.b"}
    assert imports_of("pkg.sub.a", modules["pkg.sub.a"], modules) == {"pkg.b"}


def test_cycles_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


# The house rule (docs/development.md): a module past this is split by what changes together.
MAX_MODULE_LINES = 800


def test_no_module_is_too_big_to_hold_in_ones_head():
    too_big = {
        str(path.relative_to(ROOT)): lines
        for path in module_files().values()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_big, f"modules over {MAX_MODULE_LINES} lines (split them): {too_big}"
