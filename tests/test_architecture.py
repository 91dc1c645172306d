"""The package's import layers (contracts in pyproject.toml, checked with import-linter) hold, and the check fails
on a planted upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (dev extra)")


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(config), "--no-cache"],
        cwd=src.parent,
        env={"PYTHONPATH": str(src), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_are_kept():
    result = _lint(REPO / "src", REPO / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        ("spans.py", "from trl_text2grad.critics import parsing  # planted\n"),  # core imports a component
        ("critics/base.py", "from trl_text2grad.tasks import registry  # planted\n"),  # critics import tasks
        ("ppo/advantages.py", "from trl_text2grad.cli import common  # planted\n"),  # a trainer imports the apps
    ],
)
def test_a_planted_upward_import_breaks_the_contracts(tmp_path, module, planted):
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path / "src" / "trl_text2grad" / module
    target.write_text(target.read_text() + "\n" + planted)
    result = _lint(tmp_path / "src", REPO / "pyproject.toml")
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    importer = "trl_text2grad." + module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> " in result.stdout, result.stdout  # the report names the planted import
