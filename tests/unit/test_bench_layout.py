"""The benchmark scripts import one another without a circle (each runs as ``python bench/NAME.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _sibling_imports(path: Path, siblings: set[str]) -> set[str]:
    """The other bench scripts a script imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & siblings


def test_no_bench_script_imports_itself_back():
    scripts = {p.stem: p for p in BENCH.glob("*.py")}
    graph = {name: _sibling_imports(path, set(scripts)) - {name} for name, path in scripts.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    circles = sorted(name for name in graph if reaches(name, name, {name}))
    assert not circles, f"bench scripts importing each other in a circle: {circles} ({graph})"
    assert graph["hostile"] == set()  # the shared load generator lives in evaluation/load.py
