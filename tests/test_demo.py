"""The offline main job (`trl-text2grad demo`): end to end on a tiny random model (fast) and on SmolLM2 (slow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


TINY = [
    "--train_problems",
    "2",
    "--eval_problems",
    "2",
    "--annotate_problems",
    "2",
    "--steps",
    "1",
    "--batch_size",
    "2",
    "--num_ppo_epochs",
    "1",
    "--response_length",
    "8",
    "--eval_max_new_tokens",
    "8",
    "--color",
    "false",
]


def _read(out: Path) -> tuple[str, dict]:
    report = (out / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return report, metrics


def test_demo_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    from trl_text2grad.cli.demo.main import main

    out = tmp_path / "demo_out"
    assert main(["--model", tiny_model_dir, "--output_dir", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    for stage in range(1, 6):
        assert f"Stage {stage}/5" in printed
    assert "[-" in printed or "[+" in printed or "(empty response)" in printed  # terminal heatmaps (no colour)

    report, summary = _read(out)
    metrics = summary["metrics"]
    assert summary["skipped"] == {}, summary["skipped"]
    # pass@1 recomputed from the report's per-problem table: the same held-out problems before and after (the first
    # two of the test split, which no training row comes from), each one passing or not
    from trl_text2grad.cli.demo.config import DemoConfig
    from trl_text2grad.tasks.humaneval import load_humaneval, split_by_problem

    table = re.findall(r"<tr><td><code>([^<]+)</code></td><td>(✔|✘)</td><td>(✔|✘|—)</td></tr>", report)
    defaults = DemoConfig()
    split = split_by_problem(load_humaneval(), test_fraction=defaults.test_fraction, seed=defaults.split_seed)
    assert [task_id for task_id, _, _ in table] == split["test"]["task_id"][:2]
    assert not set(split["train"]["task_id"]) & {task_id for task_id, _, _ in table}
    assert metrics["pass@1 before"] == sum(before == "✔" for _, before, _ in table) / len(table)
    assert metrics["pass@1 after"] == sum(after == "✔" for _, _, after in table) / len(table)
    assert metrics["pass@1 before"] == 0.0  # 8 tokens from a random model never define a working function
    assert metrics["ppo_rollouts"] == 1 and metrics["held_out_problems"] == 2
    assert any("objective/scores" in row for row in summary["log_history"])
    assert "How small this run is" in report and "2 held-out problems" in report
    assert "data:image/png;base64," in report and (out / "training_curves.png").stat().st_size > 1000
    assert report.count("class='sample'") >= 2  # heatmaps of annotated answers
    assert "t2g-heatmap" in report and "last PPO rollout" in report
    assert metrics["cpu_time_s"] > 0
    # the random model's answers fail, so the critic marked poor tokens (red) in at least one heatmap
    assert re.search(r"rgba\(220, 0, 0", report)


def test_demo_degrades_when_a_component_is_missing(tiny_model_dir, tmp_path, capsys):
    """No usable critic: annotation and PPO are reported as skipped, pass@1 before still runs, report written."""
    from trl_text2grad.cli.demo.config import DemoConfig
    from trl_text2grad.cli.demo.run import run_demo

    out = tmp_path / "demo_out"
    config = DemoConfig(
        model=tiny_model_dir,
        critic="reward_model",  # without reward_model_path: the critic cannot be built
        output_dir=str(out),
        train_problems=2,
        eval_problems=2,
        annotate_problems=1,
        steps=1,
        batch_size=2,
        response_length=8,
        eval_max_new_tokens=8,
        color=False,
    )
    summary = run_demo(config)
    assert "critic" in summary["skipped"] and "reward_model_path" in summary["skipped"]["critic"]
    assert "span PPO" in summary["skipped"] and "pass@1 after" in summary["skipped"]
    assert summary["metrics"]["pass@1 before"] == 0.0
    report, _ = _read(out)
    assert "Skipped stages" in report and "reward_model_path" in report
    assert "!! " in capsys.readouterr().out


def test_demo_config_rejects_bad_values():
    from trl_text2grad.cli.demo.config import DemoConfig

    with pytest.raises(ValueError, match="--critic"):
        DemoConfig(critic="gpt")
    with pytest.raises(ValueError, match="--steps"):
        DemoConfig(steps=-1)


def test_unit_test_reward_marks_failing_and_passing_code():
    from trl_text2grad.critics.unit_tests import UnitTestCritic
    from trl_text2grad.rewards import UnitTestReward
    from trl_text2grad.tasks.humaneval import humaneval_rows, load_humaneval

    problems = load_humaneval().select(range(2))
    rows = humaneval_rows(problems)
    assert rows.column_names == ["prompt", "problem", "test", "entry_point", "task_id"]
    assert rows["prompt"][0][0]["role"] == "user" and problems["prompt"][0].strip() in rows["prompt"][0][0]["content"]
    good = f"```python\n{problems['prompt'][0]}{problems['canonical_solution'][0]}```"
    bad = f"```python\ndef {problems['entry_point'][1]}(*args):\n    raise RuntimeError('nope')\n```"
    reward = UnitTestReward(UnitTestCritic(timeout=20))
    spans = reward(
        rows["prompt"], [good, bad], problem=rows["problem"], test=rows["test"], entry_point=rows["entry_point"]
    )
    assert reward.last_passed == [True, False]
    assert all(score > 0 for _, _, score in spans[0])
    assert spans[1] and all(score < 0 for _, _, score in spans[1])
    start, end, _ = spans[1][0]
    assert "raise RuntimeError" in bad[start:end]
    with pytest.raises(ValueError, match="entry_point"):
        reward(rows["prompt"], [good, bad], problem=rows["problem"])


def test_fence_stop_criterion(smollm2_tokenizer):
    import torch

    from trl_text2grad.cli.demo.generation import _fence_stop

    tok = smollm2_tokenizer
    prompt = tok("hello", add_special_tokens=False)["input_ids"]
    closed = tok("```python\nx = 1\n```\nmore", add_special_tokens=False)["input_ids"]
    open_ = tok("```python\nx = 1\n", add_special_tokens=False)["input_ids"]
    width = max(len(closed), len(open_))
    pad = tok.pad_token_id
    batch = torch.tensor(
        [prompt + closed + [pad] * (width - len(closed)), prompt + open_ + [pad] * (width - len(open_))]
    )
    done = _fence_stop(tok, len(prompt))(batch, None)
    assert done.tolist() == [True, False]


def test_cli_demo_help_lists_overrides():
    result = subprocess.run(
        [sys.executable, "-m", "trl_text2grad.cli.main", "demo", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--steps", "--model", "--critic", "--output_dir"):
        assert flag in result.stdout


@pytest.mark.slow
@pytest.mark.ci_real_model
def test_demo_on_smollm2_small(tmp_path):
    """The real pipeline on the packaged SmolLM2: real generation, sandboxed tests, one LoRA PPO rollout, report."""
    from trl_text2grad.cli.demo.main import main

    out = tmp_path / "demo_out"
    args = [
        "--output_dir",
        str(out),
        "--train_problems",
        "4",
        "--eval_problems",
        "3",
        "--annotate_problems",
        "2",
        "--steps",
        "1",
        "--batch_size",
        "2",
        "--num_ppo_epochs",
        "1",
        "--response_length",
        "48",
        "--eval_max_new_tokens",
        "128",
    ]
    assert main(args) == 0
    report, summary = _read(out)
    assert summary["skipped"] == {}, summary["skipped"]
    assert "pass@1 before" in summary["metrics"] and "pass@1 after" in summary["metrics"]
    assert "smollm2" in summary["model"].lower()
    assert "t2g-heatmap" in report and "data:image/png;base64," in report
    assert summary["metrics"]["stage1_annotated_answers"] == 2


@pytest.mark.slow
def test_default_demo_command(tmp_path):
    """README command 1 with its defaults (takes minutes): report with real before/after pass@1."""
    exe = Path(sys.executable).with_name("trl-text2grad")
    result = subprocess.run(
        [str(exe), "demo", "--output_dir", str(tmp_path / "demo_out")], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, summary = _read(tmp_path / "demo_out")
    assert summary["skipped"] == {}
    assert summary["metrics"]["held_out_problems"] == 20


def test_demo_with_an_llm_critic_and_no_training(tiny_model_dir, tmp_path):
    """--critic transformers (a local LLM critic; here the tiny model, so its critiques do not parse) and --steps 0."""
    from trl_text2grad.cli.demo.config import DemoConfig
    from trl_text2grad.cli.demo.run import run_demo

    config = DemoConfig(
        model=tiny_model_dir,
        critic="transformers",
        output_dir=str(tmp_path / "out"),
        train_problems=2,
        eval_problems=1,
        annotate_problems=1,
        steps=0,
        eval_max_new_tokens=8,
        color=False,
    )
    summary = run_demo(config)
    assert "critic" not in summary["skipped"] and "annotation" not in summary["skipped"]
    assert summary["skipped"]["span PPO"] == "--steps 0"
    assert summary["metrics"]["stage1_annotated_answers"] == 1
    assert "pass@1 before" in summary["metrics"] and "pass@1 after" not in summary["metrics"]
