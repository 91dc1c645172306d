"""The report stage of ``bench/pipeline_evidence.py`` on synthetic run files (run as a subprocess: tests never import
bench/): per-seed values, paired differences, bootstrap intervals, interrupted runs left out, plots written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "pipeline_evidence.py"


def _write_run(directory: Path, arm: str, kl: float, seed: int, success: list[float], kl_values: list[float]):
    rows = []
    for i, (s, k) in enumerate(zip(success, kl_values), start=1):
        row = {"task": "text", "arm": arm, "seed": seed, "update": i, "episodes": 8 * i, "success": s}
        row.update({"critic_reward": s - 0.5, "kl": k, "kl_coef": kl, "wall_s": 10.0 * i})
        if arm.startswith("rm-"):
            row["rm_success_agreement"] = 0.75
        rows.append(row)
    name = f"text_{arm}_kl{kl:g}_seed{seed}.jsonl"
    (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _annotations(path: Path):
    rows = []
    for i, response in enumerate(["The waves roll.", "Blue water.", "Waves. More."] * 2):
        rows.append(
            {
                "prompt": "Describe the ocean in one sentence.",
                "response": response,
                "required": "waves",
                "forbidden": ["water", "blue"],
                "split": "train" if i < 4 else "test",
                "topic": "the ocean",
                "row_error": None,
                "_row": i,
                "_key": f"k{i}",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_pairs_seeds_and_leaves_out_interrupted_runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    _annotations(tmp_path / "annotations.jsonl")
    # 6 updates: the second half is updates 4-6
    for seed, offset in ((0, 0.0), (1, 0.1), (2, 0.2)):
        for kl in (0.05, 0.2):
            scale = 1.0 if kl == 0.05 else 0.5
            _write_run(runs, "rm-span", kl, seed, [0.2] * 3 + [0.5 + offset] * 3, [scale * (1 + seed)] * 6)
            _write_run(runs, "rm-scalar", kl, seed, [0.2] * 3 + [0.25 + offset] * 3, [scale * (2 + seed)] * 6)
        _write_run(runs, "critic-span", 0.05, seed, [0.2] * 3 + [0.6 + offset] * 3, [2.0 + seed] * 6)
    _write_run(runs, "critic-span", 0.2, 0, [0.9] * 4, [1.0] * 4)  # interrupted: left out
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "report", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "leaving out critic-span kl 0.2 seed 0" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    # "The waves roll." succeeds; "Blue water." and "Waves. More." do not; train rows: 4 (2 successes)
    assert summary["untrained_success"] == pytest.approx(0.5) and summary["untrained_n"] == 4
    span = summary["arms"]["rm-span@0.05"]
    assert span["seeds"] == [0, 1, 2]
    assert span["success_late"] == pytest.approx([0.5, 0.6, 0.7])
    mean, low, high = span["success_late_mean_ci"]
    assert mean == pytest.approx(0.6) and 0.5 <= low < mean < high <= 0.7
    assert span["rm_success_agreement_late"] == pytest.approx([0.75] * 3)
    assert "critic-span@0.2" not in summary["arms"]
    paired = summary["paired"]["rm-span - rm-scalar @0.05"]
    assert paired["diffs"] == pytest.approx([0.25] * 3)
    assert paired["mean_ci"] == pytest.approx([0.25, 0.25, 0.25])
    assert summary["paired"]["critic-span - rm-span @0.05"]["diffs"] == pytest.approx([0.1] * 3)
    pooled = summary["pooled"]["rm-span - rm-scalar @0.05"]
    assert pooled["a"] == pytest.approx([0.6 * 72, 72]) and pooled["diff"] == pytest.approx(0.25)
    matched = summary["matched_kl"]["rm-span - rm-scalar"]
    assert matched["ci"][0] <= matched["difference"] <= matched["ci"][1]
    for name in ("summary.md", "curves_kl0.05.png", "curves_kl0.2.png", "success_vs_kl.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_report_of_another_run_folder_reports_the_within_run_rise(tmp_path):
    """``report --runs runs30``: the early window of 30 updates is updates 1-5, the rise is the second half minus
    that window per seed, and the outputs carry the folder's name (the 12-update outputs are not overwritten)."""
    runs = tmp_path / "runs30"
    runs.mkdir()
    _annotations(tmp_path / "annotations.jsonl")
    for seed, late_rate in ((0, 0.5), (1, 0.6), (2, 0.4)):
        # updates 1-5 at 0.2, 6-15 at 0.9 (neither early nor late), 16-30 at late_rate
        success = [0.2] * 5 + [0.9] * 10 + [late_rate] * 15
        _write_run(runs, "rm-span", 0.05, seed, success, [1.0 + seed] * 30)
        _write_run(runs, "rm-scalar", 0.05, seed, [0.3] * 30, [2.0 + seed] * 30)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "report", "--out", str(tmp_path), "--runs", "runs30"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "summary.json").exists()
    summary = json.loads((tmp_path / "summary_runs30.json").read_text())
    assert summary["num_updates"] == 30
    span = summary["arms"]["rm-span@0.05"]
    assert span["early_updates"] == 5
    assert span["success_first3"] == pytest.approx([0.2] * 3)
    assert span["success_late"] == pytest.approx([0.5, 0.6, 0.4])
    assert span["success_rise"] == pytest.approx([0.3, 0.4, 0.2])
    mean, low, high = span["success_rise_mean_ci"]
    assert mean == pytest.approx(0.3) and 0.2 <= low < mean < high <= 0.4
    scalar = summary["arms"]["rm-scalar@0.05"]
    assert scalar["success_rise"] == pytest.approx([0.0] * 3)
    assert "updates 1-5" in (tmp_path / "summary_runs30.md").read_text()
    for name in ("curves_runs30_kl0.05.png", "success_vs_kl_runs30.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_report_of_the_code_task_judges_the_untrained_policy_with_the_unit_tests(tmp_path):
    """``report --task code``: the untrained policy's success is the sandboxed unit-test critic's verdict on the
    train and in-distribution rows of the code task's annotations (held-out problems left out)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    tests = "def check(candidate):\n    assert candidate(1) == 4\n    assert candidate(0) == 3\n"
    answers = [
        ("def add_three(x):\n    return x + 3\n", "train"),  # passes
        ("def add_three(x):\n    return x + 2\n", "train"),  # fails an assertion
        ("I cannot write code.", "indist"),  # no code
        ("def add_three(x):\n    return x + 3\n", "indist"),  # passes
        ("def add_three(x):\n    return x + 3\n", "test"),  # held out: not counted
    ]
    rows = []
    for i, (response, split) in enumerate(answers):
        rows.append(
            {"prompt": "Write add_three.", "response": response, "entry_point": "add_three", "tests": tests}
            | {"split": split, "topic": "add_three", "row_error": None, "_row": i, "_key": f"k{i}"}
        )
    (tmp_path / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in (0, 1, 2):
        _write_run(runs, "rm-span", 0.05, seed, [0.2, 0.4, 0.6, 0.8], [1.0 + seed] * 4)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "report", "--task", "code", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["untrained_n"] == 4 and summary["untrained_success"] == pytest.approx(0.5)
    assert "train problems: success 0.500" in (tmp_path / "summary.md").read_text()
