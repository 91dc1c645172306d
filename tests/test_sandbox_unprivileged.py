"""The adversarial sandbox suite again as an unprivileged uid (65534), when the tests run as root (CI does): the
sandbox must hold for a laptop or cluster account too, where only rootless namespaces are available."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "scripts" / "adversarial_unprivileged.sh"

pytestmark = [
    pytest.mark.adversarial,
    pytest.mark.skipif(os.geteuid() != 0, reason="already unprivileged: the main run covers this uid"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed to drop privileges"),
]


def test_adversarial_suite_passes_as_an_unprivileged_uid():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = [line for line in output.splitlines() if " passed" in line]
    assert summary and "failed" not in summary[-1] and "error" not in summary[-1], output[-3000:]
