"""The size guides: no module over about 600 lines, no function over about 80.

Beyond that a piece stops reading as one thing.  An exception would be
listed below with its reason and the size it may not grow past (none today).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "virt_aa"
MODULE_LINES = 600
FUNCTION_LINES = 80

# path (relative to src/virt_aa) -> (most lines allowed, why)
MODULE_EXCEPTIONS: dict[str, tuple[int, str]] = {}
# "path:function" -> (most lines allowed, why)
FUNCTION_EXCEPTIONS: dict[str, tuple[int, str]] = {}


def sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules: dict[str, int] = {}
    functions: dict[str, int] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        text = path.read_text(encoding="utf-8")
        modules[rel] = text.count("\n")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                key = f"{rel}:{node.name}"
                functions[key] = max(functions.get(key, 0),
                                     node.end_lineno - node.lineno + 1)
    return modules, functions


def over(found: dict[str, int], limit: int,
         exceptions: dict[str, tuple[int, str]]) -> list[str]:
    return [f"{name}: {n} lines" for name, n in found.items()
            if n > exceptions.get(name, (limit, ""))[0]]


def test_modules_stay_small() -> None:
    modules, _ = sizes()
    assert len(modules) > 50          # the walk did find the package
    assert over(modules, MODULE_LINES, MODULE_EXCEPTIONS) == []


def test_functions_stay_small() -> None:
    _, functions = sizes()
    assert "helper.py:main" in functions
    assert over(functions, FUNCTION_LINES, FUNCTION_EXCEPTIONS) == []

