"""Reading the project's own source in tests (what a module names, not what it does)."""

from __future__ import annotations

import ast
from pathlib import Path


def string_literals(path: Path) -> set[str]:
    """Every string constant of a module (f-string pieces included), docstrings and other bare strings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bare = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare}
