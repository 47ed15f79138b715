"""Which modules a Python file imports, read from its import statements (nothing is imported).

The pipeline's code version (cxrkit/pipeline/code_version.py) follows them to find the code a
stage runs; tests/test_layers.py checks them against the package's layers.
"""
from __future__ import annotations

import ast
from pathlib import Path


def import_statements(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """Every import statement of the file `path` (module `module`), anywhere in it (an import
    inside a function runs too), as (the module it names, the names it takes from it):
    `import a.b` -> ("a.b", []); `from a import b, c` -> ("a", ["b", "c"]). Relative imports are
    resolved against `module` (a package's __init__.py is the package itself)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:  # from .x import y
                target = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.append((target, [alias.name for alias in node.names]))
    return found
