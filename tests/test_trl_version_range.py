"""The TRL versions the GRPO/RLOO hooks rely on: the range pinned in pyproject.toml, its newest end (the installed
TRL runs the whole suite) and its lowest end (the hook-equality tests rerun against it in a subprocess).

The lowest version is installed without dependencies into a cache folder (``pip install --no-deps --target``) and put
first on ``PYTHONPATH``, so everything else (torch, transformers, peft, ...) stays the main environment's and the only
difference is TRL itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _trl_requirement() -> Requirement:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = text[text.index("dependencies = [") :]
    block = block[: block.index("]")]
    (spec,) = [s for s in re.findall(r'"([^"]+)"', block) if Requirement(s).name == "trl"]
    return Requirement(spec)


def _bounds(requirement: Requirement) -> tuple[Version, Version]:
    lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    upper = [Version(s.version) for s in requirement.specifier if s.operator == "<"]
    assert len(lower) == 1 and len(upper) == 1, f"trl must be pinned as 'trl>=LOW,<HIGH', got {requirement}"
    return lower[0], upper[0]


def test_trl_is_pinned_to_a_range_at_or_above_1_13():
    lower, upper = _bounds(_trl_requirement())
    assert lower >= Version("1.13"), "TRL >= 1.13 is the only TRL without a PPOTrainer that we support"
    assert upper > lower


def test_installed_trl_is_inside_the_pinned_range():
    import trl

    requirement = _trl_requirement()
    assert Version(trl.__version__) in requirement.specifier, (
        f"installed trl {trl.__version__} is outside the pinned range {requirement.specifier}"
    )


def _install_lowest(version: Version) -> Path:
    target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trl_text2grad" / f"trl-{version}"
    probe = [
        sys.executable,
        "-c",
        f"import trl; from packaging.version import Version; assert Version(trl.__version__) == Version('{version}')",
    ]
    env = {**os.environ, "PYTHONPATH": str(target)}
    if target.exists() and subprocess.run(probe, env=env, capture_output=True).returncode == 0:
        return target
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target", str(target)]
    done = subprocess.run([*command, f"trl=={version}"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"could not install trl=={version} from the package registry: {done.stderr.strip()[-500:]}")
    subprocess.run(probe, env=env, check=True)
    return target


def test_hooks_work_with_the_lowest_supported_trl():
    """The no-span equality tests against TRL's own GRPOTrainer/RLOOTrainer and a span training run, on the lowest
    TRL of the range (the suite itself runs them on the installed, newest one)."""
    lower, _ = _bounds(_trl_requirement())
    target = _install_lowest(lower)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), str(ROOT / "src")]),
        "OMP_NUM_THREADS": "1",
        "TRL_TEXT2GRAD_EXPECTED_TRL": str(lower),
    }
    check = [
        sys.executable,
        "-c",
        "import os, trl; from packaging.version import Version as V; "
        "assert V(trl.__version__) == V(os.environ['TRL_TEXT2GRAD_EXPECTED_TRL']), trl.__version__",
    ]
    subprocess.run(check, env=env, check=True, cwd=ROOT)
    selection = "equals_trl and (dapo or grpo-batch or plain) or spans_raise or trains_end_to_end"
    tests = ["tests/test_span_grpo.py", "tests/test_span_rloo.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", selection, *tests]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"with trl=={lower}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    match = re.search(r"(\d+) passed", summary)
    assert match and int(match.group(1)) >= 6, f"too few tests ran with trl=={lower}: {summary}"
