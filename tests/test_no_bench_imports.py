"""Tests never import ``bench/``: they test the package (running a bench script as a subprocess is fine)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_imports(source: str, bench_modules: set[str]) -> list[str]:
    """Import statements of ``source`` that load a module of ``bench/``, and ``sys.path`` edits naming bench."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.path.insert", "sys.path.append"):
            if "bench" in ast.unparse(node).lower():
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        for name in names:
            if name.split(".")[0] in bench_modules | {"bench"}:
                found.append(f"line {node.lineno}: import {name}")
    return found


def test_no_test_imports_bench():
    bench_modules = {path.stem for path in (ROOT / "bench").rglob("*.py")}
    offenders = {
        path.name: hits
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if (hits := bench_imports(path.read_text(encoding="utf-8"), bench_modules))
    }
    assert not offenders, f"tests import bench/ modules: {offenders}"


def test_the_check_finds_a_planted_bench_import():
    planted = 'import sys\nsys.path.insert(0, str(ROOT / "bench"))\nimport learning_curves\nfrom ppo_step import x\n'
    hits = bench_imports(planted, {"learning_curves", "ppo_step"})
    assert sorted(hit.split(":")[0] for hit in hits) == ["line 2", "line 3", "line 4"]
