"""One docstring style in fieldhub and its tests, the one most of the code already had.

The summary starts on the first line, right after the quotes; one-line docstrings stay on one
line; a longer docstring's closing quotes end its last line of text instead of standing on a
line of their own. Ruff's pydocstyle rules keep the rest (D200, D201, D202, D210, D212,
D300 in pyproject.toml); none of them says where the closing quotes go, so this test does."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

Documented = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


def _docstrings(path: Path) -> list[tuple[int, int]]:
    """(first line, last line) of each docstring in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, Documented) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                found.append((first.lineno, first.end_lineno or first.lineno))
    return found


def test_closing_quotes_end_the_last_line_of_text() -> None:
    offenders = []
    for folder in ("fieldhub", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            for first, last in _docstrings(path):
                if last > first and lines[last - 1].strip() in ('"""', "'''"):
                    offenders.append(f"{path.relative_to(ROOT)}:{last}")
    assert offenders == [], "closing quotes on a line of their own: " + ", ".join(offenders)
