"""The package's import graph: no module imports, at import time, a module that imports it back; settings
are a leaf. Read from the source (AST), so it covers every .py file under hf_nanogpt/ without importing any."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "hf_nanogpt"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(body: list[ast.stmt]):
    """The import statements run when the module is imported: not those in functions (run when called) or
    under `if TYPE_CHECKING:` (never run); those in class bodies, if/else, try and with blocks are."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            yield from module_level_imports(node.orelse)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from module_level_imports([child])
                elif isinstance(child, (ast.ExceptHandler, ast.match_case)):
                    yield from module_level_imports(child.body)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the hf_nanogpt modules it imports at import time}. `from X import name` is an edge to X.name
    where that is a module (a submodule imported by name), else to X. A parent package's __init__, which
    Python runs first, is not an edge: it is where the child is imported from, not an import of the child's."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in module_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    done, path = set(), []

    def visit(node):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return None


def test_the_graph_counts_what_runs_at_import_time(tmp_path):
    files = {
        "__init__.py": "from . import a\nfrom .b import thing\n",  # a submodule by name, a name from a module
        "a.py": "import os\nimport pkg.sub.c\nfrom typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from . import never\nelse:\n    from .sub import d\n"
                "def f():\n    from . import called\n"
                "try:\n    import pkg.tried\nexcept ImportError:\n    from .sub import fallback\n"
                "class K:\n    from .b import thing\n",
        "b.py": "thing = 1\n",
        "never.py": "", "called.py": "", "tried.py": "",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import b\nfrom ..b import thing\n",
        "sub/d.py": "", "sub/fallback.py": "",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg"] == {"pkg.a", "pkg.b"}
    assert graph["pkg.a"] == {"pkg.sub.c", "pkg.sub.d", "pkg.tried", "pkg.sub.fallback", "pkg.b"}
    assert graph["pkg.sub.c"] == {"pkg.b"}
    graph = import_graph()
    assert {"hf_nanogpt", "hf_nanogpt.train", "hf_nanogpt.cli", "hf_nanogpt.training.optim"} <= set(graph)
    assert "hf_nanogpt.training.config" in graph["hf_nanogpt.training.optim"]


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("settings", ["hf_nanogpt.training.config", "hf_nanogpt.configuration_nanogpt"])
def test_settings_are_a_leaf(settings):
    assert import_graph()[settings] == set(), f"{settings} imports the code that uses it"


def test_every_lr_schedule_choice_has_a_function():
    from typing import get_args

    from hf_nanogpt.training.config import LrSchedule
    from hf_nanogpt.training.optim import LR_SCHEDULES

    assert list(LR_SCHEDULES) == list(get_args(LrSchedule))
