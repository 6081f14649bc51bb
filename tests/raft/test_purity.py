"""The core must be pure: no I/O, no clock, no global randomness (DESIGN.md, raft/)."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import changeagent.raft

FORBIDDEN = {
    "asyncio",
    "os",
    "random",
    "select",
    "selectors",
    "socket",
    "sqlite3",
    "subprocess",
    "threading",
    "time",
    "datetime",
    "multiprocessing",
    "concurrent",
    "io",
    "pathlib",
    "shutil",
}


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _runtime_imports(tree: ast.Module) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            assert isinstance(node, ast.If)
            for statement in node.orelse:  # only the `else:` branch runs
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.append(("__import__", node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _modules() -> list[Path]:
    package_dir = Path(changeagent.raft.__file__).parent
    names = [info.name for info in pkgutil.iter_modules([str(package_dir)])]
    return [package_dir / f"{name}.py" for name in names]


def test_the_package_has_modules_to_scan() -> None:
    names = {path.stem for path in _modules()}
    assert {"core", "messages", "config", "log", "progress", "entry", "interfaces"} <= names


def test_no_module_of_the_core_imports_io_time_or_randomness() -> None:
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in _runtime_imports(tree):
            if name == "__import__" or name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.name}:{line} imports {name}")
    assert offenders == []


def test_the_scanner_catches_a_forbidden_import() -> None:
    tree = ast.parse(
        "import os\nfrom time import monotonic\nif TYPE_CHECKING:\n    import random\n"
        "def f():\n    import socket\n"
    )
    names = [name for name, _ in _runtime_imports(tree)]
    assert names == ["os", "time", "socket"]
