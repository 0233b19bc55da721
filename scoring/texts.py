"""Real text every Python installation carries: the standard library's docstrings, read with ``ast`` (nothing is
imported). The local index's built-in corpus (:mod:`retrieval.corpus`) and the fidelity probe (:mod:`scoring.probe`)
both read them, so neither needs a download."""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

_SKIP_MODULES = {"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip", "pydoc_data",
                 "site-packages", "dist-packages", "venv", "this", "antigravity", "__phello__", "config-3"}


def stdlib_sources(stdlib_dir: Path | None = None) -> list[tuple[str, Path]]:
    """(module name, source file) for the standard library's public pure-Python modules, sorted."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or parts[0] in _SKIP_MODULES or any(p.startswith("_") or "-" in p for p in parts):
            continue
        found.append((".".join(parts), path))
    return found


def docstrings(module: str, source: str) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) for a module and its public classes, functions and methods."""
    tree = ast.parse(source)
    doc = ast.get_docstring(tree)
    if doc:
        yield module, doc

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not child.name.startswith("_"):
                name = f"{prefix}.{child.name}"
                text = ast.get_docstring(child)
                if text:
                    yield name, text
                if isinstance(child, ast.ClassDef):
                    yield from walk(child, name)

    yield from walk(tree, module)


def module_docstrings(modules: set[str], stdlib_dir: Path | None = None) -> list[tuple[str, str]]:
    """(qualified name, docstring) of every public object of the given top-level modules (unreadable files skipped)."""
    out: list[tuple[str, str]] = []
    for module, path in stdlib_sources(stdlib_dir):
        if module.split(".")[0] not in modules:
            continue
        try:
            out.extend(docstrings(module, path.read_text(encoding="utf-8")))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
    return out
