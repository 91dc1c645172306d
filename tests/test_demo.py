"""The offline main job (`trl-text2grad demo`): end to end on a tiny random model (fast) and on SmolLM2 (slow), for
the default constrained-text task and for `--task humaneval`; the learning-curve statistics by hand."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


TINY = [
    "--task",
    "humaneval",
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


def test_demo_humaneval_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
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
    defaults = DemoConfig(task="humaneval")
    split = split_by_problem(load_humaneval(), test_fraction=defaults.test_fraction, seed=defaults.split_seed)
    assert [task_id for task_id, _, _ in table] == split["test"]["task_id"][:2]
    assert not set(split["train"]["task_id"]) & {task_id for task_id, _, _ in table}
    assert metrics["pass@1 before"] == sum(before == "✔" for _, before, _ in table) / len(table)
    assert metrics["pass@1 after"] == sum(after == "✔" for _, _, after in table) / len(table)
    assert metrics["pass@1 before"] == 0.0  # 8 tokens from a random model never define a working function
    assert metrics["ppo_updates"] == 1 and metrics["held-out problems"] == 2
    held_out = summary["held_out"]
    assert held_out["metric"] == "pass@1" and held_out["decoding"].startswith("one greedy answer")
    assert held_out["before"]["n"] == 2 and held_out["before"]["low"] == 0.0 and 0 < held_out["before"]["high"] < 1
    # the rollout of the single update was judged by the unit tests: one curve point with its 2 answers
    assert summary["curve"]["responses"] == [2] and summary["curve"]["successes"] == [0]
    assert any("objective/scores" in row for row in summary["log_history"])
    assert "How small this run is" in report and "2 problems (one greedy answer per problem" in report
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
        task="humaneval",
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
    assert summary["curve"] is None and "No learning curve" in _read(out)[0]
    report, _ = _read(out)
    assert "Skipped stages" in report and "reward_model_path" in report
    assert "!! " in capsys.readouterr().out


def test_demo_config_rejects_bad_values():
    from trl_text2grad.cli.demo.config import DemoConfig

    with pytest.raises(ValueError, match="--critic"):
        DemoConfig(critic="gpt")
    with pytest.raises(ValueError, match="--steps"):
        DemoConfig(steps=-1)
    with pytest.raises(ValueError, match="--task"):
        DemoConfig(task="gsm8k")
    with pytest.raises(ValueError, match="no tests"):
        DemoConfig(critic="unit_tests")  # the default task has no unit tests
    with pytest.raises(ValueError, match="--eval_samples"):
        DemoConfig(eval_samples=-1)
    with pytest.raises(ValueError, match="--test_fraction"):
        DemoConfig(test_fraction=1.0)


def test_demo_config_per_task_defaults_and_overrides():
    from trl_text2grad.cli.demo.config import TASK_DEFAULTS, DemoConfig

    text, code = DemoConfig(), DemoConfig(task="humaneval")
    assert text.task == "constrained_text" and text.critic == "programmatic" and text.response_length == 32
    assert code.critic == "unit_tests" and code.response_length == 128 and code.eval_samples == 0
    for config in (text, code):  # every per-task field was filled from the table
        for name, value in TASK_DEFAULTS[config.task].items():
            assert getattr(config, name) == value, (config.task, name)
    # a value given explicitly wins over the task's default, also when it equals the other task's default
    assert DemoConfig(task="humaneval", response_length=32, steps=0).response_length == 32
    assert DemoConfig(steps=3).steps == 3 and DemoConfig(critic="unit_tests", task="humaneval").critic == "unit_tests"


def test_unit_test_reward_marks_failing_and_passing_code():
    from trl_text2grad.critics import UnitTestCritic
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
    # rows without the test columns cannot be judged: per-row failures naming the columns, not a crash or a pass/fail
    failures = reward(rows["prompt"], [good, bad], problem=rows["problem"])
    assert [f.kind for f in failures] == ["missing_context", "missing_context"]
    assert "'test'" in failures[0].message and "'entry_point'" in failures[0].message


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
    for flag in ("--task", "--steps", "--model", "--critic", "--output_dir", "--eval_samples", "--curve_window"):
        assert flag in result.stdout


@pytest.mark.slow
def test_demo_on_smollm2_small(tmp_path):
    """The real pipeline on the packaged SmolLM2: real generation, sandboxed tests, one LoRA PPO rollout, report.
    (Slow only: CI runs the default task's real-model demo below; the HumanEval path is wired in a fast test.)"""
    from trl_text2grad.cli.demo.main import main

    out = tmp_path / "demo_out"
    args = [
        "--task",
        "humaneval",
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
@pytest.mark.ci_real_model
def test_default_task_demo_on_smollm2_small(tmp_path):
    """The default task on the packaged SmolLM2: real sampling, the programmatic critic's spans, two LoRA PPO
    updates recorded on the learning curve, held-out topics before/after with intervals, report (about a minute)."""
    from trl_text2grad.cli.demo.main import main

    out = tmp_path / "demo_text"
    args = ["--output_dir", str(out), "--steps", "2", "--batch_size", "4", "--num_ppo_epochs", "1"]
    args += ["--eval_problems", "2", "--eval_samples", "2", "--annotate_problems", "2", "--color", "false"]
    assert main(args) == 0
    report, summary = _read(out)
    assert summary["skipped"] == {}, summary["skipped"]
    assert "smollm2" in summary["model"].lower() and summary["task"] == "constrained_text"
    assert summary["curve"]["responses"] == [4, 4] and summary["curve"]["verdict"]["k"] == 1
    assert summary["held_out"]["before"]["n"] == 4 and summary["held_out"]["after"]["n"] == 4
    # SmolLM2 answers with real sentences: the critic found spans to reward in the annotated answers
    assert summary["metrics"]["stage1_answers_with_spans"] >= 1
    assert report.index("alt='learning curve'") < report.index("Token-reward heatmaps")


@pytest.mark.slow
def test_default_demo_command(tmp_path):
    """README command 1 with its defaults (takes minutes): report with real before/after pass@1."""
    exe = Path(sys.executable).with_name("trl-text2grad")
    result = subprocess.run(
        [str(exe), "demo", "--output_dir", str(tmp_path / "demo_out")], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report, summary = _read(tmp_path / "demo_out")
    assert summary["skipped"] == {}
    assert summary["task"] == "constrained_text" and len(summary["curve"]["rate"]) == 30
    assert summary["held_out"]["before"]["n"] == 96 and summary["held_out"]["after"]["n"] == 96
    assert report.index("learning-curve") < report.index("Token-reward heatmaps")


def test_demo_with_an_llm_critic_and_no_training(tiny_model_dir, tmp_path):
    """--critic transformers (a local LLM critic; here the tiny model, so its critiques do not parse) and --steps 0."""
    from trl_text2grad.cli.demo.config import DemoConfig
    from trl_text2grad.cli.demo.run import run_demo

    config = DemoConfig(
        model=tiny_model_dir,
        task="humaneval",
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


TINY_TEXT = ["--steps", "4", "--batch_size", "2", "--num_ppo_epochs", "1", "--response_length", "6"]
TINY_TEXT += ["--eval_max_new_tokens", "6", "--eval_problems", "2", "--eval_samples", "3", "--annotate_problems", "2"]
TINY_TEXT += ["--curve_window", "2", "--color", "false"]


def test_demo_default_task_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    """The default task (constrained text): curve recorded per update, held-out topics never trained on, verdict
    computed from the recorded counts, report ordered curve → before/after → heatmaps."""
    from trl_text2grad.cli.demo.config import DemoConfig
    from trl_text2grad.cli.demo.main import main
    from trl_text2grad.cli.demo.stats import rise_verdict
    from trl_text2grad.tasks import constrained_text
    from trl_text2grad.tasks.programmatic import split_items

    out = tmp_path / "demo_text"
    assert main(["--model", tiny_model_dir, "--output_dir", str(out), *TINY_TEXT]) == 0
    printed = capsys.readouterr().out
    for stage in range(1, 6):
        assert f"Stage {stage}/5" in printed
    assert "rollout success per update" in printed and "verdict:" in printed and "95% Wilson" in printed

    report, summary = _read(out)
    assert summary["skipped"] == {}, summary["skipped"]
    assert summary["task"] == "constrained_text" and summary["critic"] == "programmatic"
    curve = summary["curve"]
    assert curve["responses"] == [2, 2, 2, 2] and len(curve["rate"]) == 4 and len(curve["sparkline"]) == 4
    assert all(0 <= s <= 2 for s in curve["successes"])
    # the verdict is recomputed from the recorded counts (k = 4 // 3 = 1)
    assert curve["verdict"] == rise_verdict(curve["successes"], curve["responses"]).as_dict()
    assert curve["verdict"]["k"] == 1
    # held-out: 2 held-out topics x 3 sampled answers, before and after; no held-out topic was trained on
    held_out = summary["held_out"]
    assert held_out["before"]["n"] == 6 and held_out["after"]["n"] == 6 and held_out["difference"] is not None
    assert "3 sampled answers per held-out topic at temperature 0.7" == held_out["decoding"]
    defaults = DemoConfig()
    test_topics = [t[0] for t in split_items(constrained_text.TOPICS, "test", defaults.test_fraction, 0)][:2]
    train_topics = {t[0] for t in split_items(constrained_text.TOPICS, "train", defaults.test_fraction, 0)}
    shown = re.findall(r"<tr><td><code>([^<]+)</code></td><td>(\d+)/3</td><td>(\d+)/3</td></tr>", report)
    assert [topic for topic, _, _ in shown] == test_topics and not train_topics & set(test_topics)
    assert sum(int(b) for _, b, _ in shown) == held_out["before"]["successes"]
    assert sum(int(a) for _, _, a in shown) == held_out["after"]["successes"]
    # the report shows the curve first, then before/after, then the heatmaps
    curve_at, held_at, heat_at = (
        report.index("id='learning-curve'"),
        report.index("Held-out success: before and after"),
        report.index("Token-reward heatmaps"),
    )
    assert curve_at < held_at < heat_at
    assert report.index("alt='learning curve'") < held_at
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert "Verdict:" in report and "t2g-heatmap" in report


def test_demo_humaneval_flag_is_wired(tiny_model_dir, tmp_path, monkeypatch):
    """`--task humaneval` selects the HumanEval rows, the unit-test reward and greedy pass@1 (no training here)."""
    from trl_text2grad.cli.demo import run as demo_run
    from trl_text2grad.cli.demo.config import DemoConfig
    from trl_text2grad.rewards import UnitTestReward

    built = []
    original = demo_run.DemoRun.build_reward

    def spy(self):
        original(self)
        built.append(self.reward_fn)

    monkeypatch.setattr(demo_run.DemoRun, "build_reward", spy)
    config = DemoConfig(
        model=tiny_model_dir, task="humaneval", output_dir=str(tmp_path / "o"), steps=0, train_problems=2
    )
    config.eval_problems, config.annotate_problems, config.eval_max_new_tokens = 1, 1, 4
    summary = demo_run.run_demo(config)
    assert isinstance(built[0], UnitTestReward)
    assert summary["held_out"]["metric"] == "pass@1" and summary["held_out"]["before"]["n"] == 1
    assert summary["metrics"]["held-out problems"] == 1 and summary["metrics"]["train problems"] == 2


# -- the statistics of the curve, by hand -----------------------------------------------------------------------


def test_wilson_interval_known_values():
    from trl_text2grad.cli.demo.stats import wilson_interval

    # 0/10: upper = (z²/n) / (1 + z²/n) = 0.38415 / 1.38415
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27753, abs=1e-4)
    # 5/10: 0.5 ± (z / (1 + z²/10)) * sqrt(0.025 + z²/400) = 0.5 ± 0.26335
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(0.72247, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
    with pytest.raises(TypeError):
        wilson_interval(1.5, 2)


def test_newcombe_difference_by_hand():
    from trl_text2grad.cli.demo.stats import newcombe_difference, proportion, wilson_interval

    first, second = proportion(2, 10), proportion(8, 10)
    l1, u1 = wilson_interval(2, 10)
    l2, u2 = wilson_interval(8, 10)
    d = newcombe_difference(first, second)
    assert d.value == pytest.approx(0.6)
    assert d.low == pytest.approx(0.6 - ((0.8 - l2) ** 2 + (u1 - 0.2) ** 2) ** 0.5)
    assert d.high == pytest.approx(0.6 + ((u2 - 0.8) ** 2 + (0.2 - l1) ** 2) ** 0.5)
    # Wilson 2/10 = [0.0567, 0.5098], 8/10 = [0.4902, 0.9433]:
    # low = 0.6 − √(0.3098² + 0.3098²) = 0.1619, high = 0.6 + √(0.1433² + 0.1433²) = 0.8026
    assert d.low == pytest.approx(0.1619, abs=1e-3) and d.high == pytest.approx(0.8026, abs=1e-3)
    same = newcombe_difference(proportion(5, 10), proportion(5, 10))
    assert same.value == 0 and same.low < 0 < same.high and same.low == pytest.approx(-same.high)
    assert newcombe_difference(proportion(0, 0), proportion(1, 2)).value is None


def test_moving_average_band_pools_the_trailing_window():
    from trl_text2grad.cli.demo.stats import moving_average_band, wilson_interval

    points = moving_average_band([0, 2, 4, 4], [4, 4, 4, 4], window=2)
    assert [p.rate for p in points] == [0.0, 0.5, 1.0, 1.0]
    assert [p.average for p in points] == [0.0, 0.25, 0.75, 1.0]  # (0)/4, (0+2)/8, (2+4)/8, (4+4)/8
    assert (points[1].low, points[1].high) == wilson_interval(2, 8)
    assert (points[0].low, points[0].high) == wilson_interval(0, 4)
    # an update whose success could not be measured (0 responses) adds nothing to its window
    gap = moving_average_band([1, 0, 3], [2, 0, 4], window=2)
    assert gap[1].rate is None and gap[1].average == 0.5 and gap[2].average == 0.75
    with pytest.raises(ValueError, match="window"):
        moving_average_band([1], [1], window=0)
    with pytest.raises(ValueError, match="totals"):
        moving_average_band([1, 2], [4], window=1)


def test_rise_verdict_rise_flat_fall_and_too_short():
    from trl_text2grad.cli.demo.stats import default_compare_updates, rise_verdict

    n = [8] * 30
    rising = rise_verdict([2] * 10 + [4] * 10 + [7] * 10, n)  # first 10: 20/80, last 10: 70/80
    assert rising.k == 10 and rising.label == "rise beyond noise" and rising.rises
    assert rising.difference.value == pytest.approx(0.625) and rising.difference.low > 0.45
    flat = rise_verdict([4] * 30, n)  # the same success throughout: no clear rise
    assert flat.label == "no clear rise" and not flat.rises and flat.difference.value == 0
    assert flat.difference.low < 0 < flat.difference.high
    noisy = rise_verdict([3, 4, 5] * 10, n)  # fluctuates around 0.5 with no trend
    assert noisy.label == "no clear rise"
    small = rise_verdict([3] * 10 + [5] * 10 + [5] * 10, n)  # +0.25 on 80 vs 80 answers is beyond noise ...
    assert small.label == "rise beyond noise"
    tiny = rise_verdict([3, 5], [8, 8])  # ... but +0.25 on 8 vs 8 answers is not
    assert tiny.k == 1 and tiny.label == "no clear rise"
    falling = rise_verdict([7] * 10 + [1] * 10, [8] * 20, k=5)
    assert falling.label == "fall beyond noise" and falling.difference.high < 0
    assert rise_verdict([4], [8]).label == "too few updates to judge"
    assert rise_verdict([4, 4, 4], [8, 8, 8], k=2).difference is None
    assert [default_compare_updates(u) for u in (1, 2, 3, 9, 30, 100)] == [1, 1, 1, 3, 10, 10]
    assert "Newcombe" in flat.rule and "no clear rise" in str(flat)


def test_sparkline_is_on_a_fixed_scale():
    from trl_text2grad.cli.demo.stats import sparkline

    assert sparkline([0.0, 0.5, 1.0, None]) == "▁▅█·"
    assert sparkline([0.4] * 5) == "▄▄▄▄▄"  # a flat curve looks flat (no min-max rescaling)


def test_success_recorder_records_per_call_and_survives_a_broken_metric():
    from trl_text2grad.cli.demo.config import DemoConfig
    from trl_text2grad.cli.demo.tasks import ConstrainedTextDemo, SuccessRecorder

    task = ConstrainedTextDemo(DemoConfig())
    reward = task.programmatic_reward()
    recorder = SuccessRecorder(reward, task)
    context = {"required": ["waves", "waves"], "forbidden": [["water", "blue"], ["water", "blue"]]}
    good, bad = "The waves roll in.", "Blue water. More."
    spans = recorder(["p", "p"], [good, bad], **context)
    assert recorder.records == [(1, 2)] and reward.last_passed == [True, False]
    assert spans[0] == [(4, 9, 1.0)] and all(score < 0 for _, _, score in spans[1])
    recorder(["p"], [bad], required=["waves"], forbidden=[["water", "blue"]])
    assert recorder.records == [(1, 2), (0, 1)]

    class Broken:
        def rollout_success(self, *args):
            raise RuntimeError("no metric")

    broken = SuccessRecorder(lambda prompts, responses, **kw: [0.0] * len(responses), Broken())
    assert broken(["p"], ["x"]) == [0.0] and broken.records == [(0, 0)] and broken.failures == 1
