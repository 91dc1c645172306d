"""A broken critic never trains silently: per-row failures are counted, and the failure budget stops training.

Tiny random Llama policies (fast); the dead endpoint is a closed port on 127.0.0.1 (no network).
"""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from conftest import accelerate_launch, free_port
from trl_text2grad import CriticFailure, CriticFailureError, Critique
from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer
from trl_text2grad.rewards import UnitTestReward, normalize_reward_output


def _args(tmp_path, **overrides) -> SpanPPOConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_ppo_epochs=1,
        num_mini_batches=1,
        response_length=6,
        total_episodes=16,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return SpanPPOConfig(**settings)


def _dataset(n: int = 16, **columns) -> Dataset:
    return Dataset.from_dict({"prompt": [f"Write answer number {i}:" for i in range(n)], **columns})


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _changed(before, model) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(before, model.parameters()))


class _Counting:
    """Wraps a reward function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __repr__(self) -> str:
        return repr(self.fn)

    def __call__(self, prompts, responses, **context):
        self.calls += 1
        return self.fn(prompts, responses, **context)


def test_dead_endpoint_stops_training_within_the_budget(tmp_path, bpe_tokenizer, tiny_llama):
    pytest.importorskip("openai")
    from trl_text2grad.critics.openai_compatible import OpenAICompatibleCritic

    port = free_port()
    critic = OpenAICompatibleCritic(
        model="judge", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=None, max_retries=0, timeout=2
    )
    counting = _Counting(critic)
    trainer = SpanPPOTrainer(_args(tmp_path), bpe_tokenizer, tiny_llama(bpe_tokenizer), None, counting, _dataset())
    before = _params(trainer.model)
    with pytest.raises(CriticFailureError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "OpenAICompatibleCritic" in message and f"127.0.0.1:{port}" in message
    assert "connection" in message and "max_consecutive_failed_rollouts=2" in message
    assert raised.value.failure.kind == "connection" and raised.value.counts == {"connection": 4}
    assert counting.calls == 2  # stopped after the second failed rollout (default budget), of 4 planned
    assert _changed(before, trainer.model) == 0  # never trained on the zero reward of failed rows
    rollouts = [h for h in trainer.state.log_history if "span/critic_failures" in h]
    assert [(h["span/critic_failures"], h["rollout/skipped"]) for h in rollouts] == [(4, 1), (4, 1)]


def test_rows_the_reward_cannot_judge_stop_training(tmp_path, bpe_tokenizer, tiny_llama):
    """The HumanEval recipe's reward on custom rows without `test` / `entry_point`: a clear error, no training."""

    class NeverRun:  # the sandbox must not even be asked about rows without tests
        last_spans, last_results = [], []

        def critique(self, *args, **kwargs):
            raise AssertionError("a row without tests was sent to the critic")

    reward = UnitTestReward(NeverRun())
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=8), bpe_tokenizer, tiny_llama(bpe_tokenizer), None, reward, _dataset(8)
    )
    before = _params(trainer.model)
    with pytest.raises(CriticFailureError, match="missing_context.*'test'.*'entry_point'"):
        trainer.train()
    assert _changed(before, trainer.model) == 0


def test_unit_test_reward_fails_only_the_rows_without_columns():
    class Passing:
        def critique(self, prompts, responses, tests, entry_point):
            self.last_spans = [[(0, 3, 1.0)] for _ in responses]
            self.last_results = [type("R", (), {"passed": True})() for _ in responses]
            return [Critique("All unit tests passed.") for _ in responses]

    reward = UnitTestReward(Passing())
    check = "def check(candidate):\n    assert candidate() == 1\n"
    pytest_style = "from solution import f\n\ndef test_f():\n    assert f() == 1\n"
    out = reward(
        ["p", "p", "p", 5, "p"],
        ["abc"] * 5,
        test=[check, None, check, check, pytest_style],
        entry_point=["f", "f", "  ", "f", None],  # pytest-style tests need no entry point
    )
    assert out[0] == [(0, 3, 1.0)] and out[4] == [(0, 3, 1.0)]
    assert [o.kind for o in out[1:4]] == ["missing_context", "missing_context", "invalid_input"]
    assert "'entry_point'" in out[2].message and "'test'" in out[1].message
    assert reward.last_passed == [True, False, False, False, True] and reward.num_scored == 2
    assert all(not normalize_reward_output(o, "abc").ok for o in out[1:4])


def test_critic_failures_metric_counts_every_failed_row(tmp_path, bpe_tokenizer, tiny_llama):
    """One of four rows fails per rollout (below the 0.5 rate): training goes on and the metric says 1 each time."""

    def one_bad_row(prompts, responses, **context):
        out = [Critique("fine", good=[r[:3]] if r[:3].strip() else []) for r in responses]
        out[1] = Critique(error=CriticFailure("timeout", "request failed: APITimeoutError: Request timed out."))
        return out

    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=8), bpe_tokenizer, tiny_llama(bpe_tokenizer), None, one_bad_row, _dataset(8)
    )
    trainer.train()
    rollouts = [h for h in trainer.state.log_history if "span/critic_failures" in h]
    assert [h["span/critic_failures"] for h in rollouts] == [1, 1]
    assert [h["rollout/skipped"] for h in rollouts] == [0, 0]
    details = trainer.last_rollout["scored"].failure_details
    assert [d.kind if d else None for d in details] == [None, "timeout", None, None]


def test_failure_rate_above_the_budget_counts_and_stops(tmp_path, bpe_tokenizer, tiny_llama):
    def mostly_broken(prompts, responses, **context):
        return [1.0] + [CriticFailure("parse", "no JSON object in the answer")] * (len(responses) - 1)

    counting = _Counting(mostly_broken)
    trainer = SpanPPOTrainer(
        _args(tmp_path, max_consecutive_failed_rollouts=1),
        bpe_tokenizer,
        tiny_llama(bpe_tokenizer),
        None,
        counting,
        _dataset(),
    )
    with pytest.raises(CriticFailureError, match=r"3 of 4 .*parse: 3"):
        trainer.train()
    assert counting.calls == 1
    # raising the rate lets the same critic train
    counting = _Counting(mostly_broken)
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=8, max_critic_failure_rate=0.9, max_consecutive_failed_rollouts=1),
        bpe_tokenizer,
        tiny_llama(bpe_tokenizer),
        None,
        counting,
        _dataset(8),
    )
    trainer.train()
    assert counting.calls == 2


def test_budget_config_is_validated():
    with pytest.raises(ValueError, match="max_critic_failure_rate"):
        SpanPPOConfig(output_dir="x", max_critic_failure_rate=1.5, report_to=[])
    with pytest.raises(ValueError, match="max_consecutive_failed_rollouts"):
        SpanPPOConfig(output_dir="x", max_consecutive_failed_rollouts=-1, report_to=[])
    config = SpanPPOConfig(output_dir="x", report_to=[])
    assert config.max_critic_failure_rate == 0.5 and config.max_consecutive_failed_rollouts == 2


def test_demo_with_a_dead_critic_exits_non_zero(tiny_model_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("openai")
    from trl_text2grad.cli.demo.main import main

    tiny = ["--train_problems", "2", "--eval_problems", "2", "--annotate_problems", "2", "--steps", "1"]
    tiny += ["--batch_size", "2", "--response_length", "8", "--eval_max_new_tokens", "8", "--color", "false"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "demo_dead"
    argv = ["--model", tiny_model_dir, "--output_dir", str(out), "--critic", "openai", "--critic_model", "judge"]
    argv += ["--critic_base_url", f"http://127.0.0.1:{free_port()}/v1", *tiny]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "failed on every one of the 2 stage-1 answers" in captured.err and "connection" in captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "span PPO" in metrics["skipped"] and "ppo_updates" not in metrics["metrics"]
    # without a key the critic cannot even be built: also exit status 1
    monkeypatch.delenv("OPENAI_API_KEY")
    argv[3] = str(tmp_path / "demo_nokey")
    assert main(argv) == 1
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_reward_contract_failures_have_kinds():
    text = "hello world"
    cases = [
        (None, "no_reward"),
        (CriticFailure("auth", "401"), "auth"),
        (Critique(error=CriticFailure("parse", "no JSON")), "parse"),
        (float("nan"), "invalid_output"),
        ([(0.5, 3, 1.0)], "invalid_output"),  # fractional offsets are never truncated silently
        ([(0, 3, "1")], "invalid_output"),
        (Critique("c", ["not in the text at all"]), "unlocated"),
        (object(), "invalid_output"),
    ]
    for output, kind in cases:
        result = normalize_reward_output(output, text)
        assert not result.ok and result.failure.kind == kind, (output, result)
    assert "span #0" in normalize_reward_output([(0.5, 3, 1.0)], text).reason
    ok = normalize_reward_output(Critique("c", ["hello", 3.0], [], dropped_quotes=2), text)
    assert ok.ok and ok.spans == [(0, 5, 1.0)]


@pytest.mark.multiproc
@pytest.mark.parametrize("dead_ranks, rate", [("all", 0.5), ("1", 0.25)])
def test_two_processes_stop_together(tmp_path, dead_ranks, rate):
    """The budget is decided on counts gathered over the processes: all of them stop at the same rollout."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    cmd = [*accelerate_launch(), "--config_file", str(repo / "recipes" / "accelerate" / "multi_cpu.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()),
           str(repo / "tests" / "scripts" / "multiproc_dead_critic.py"), "--out", str(out),
           "--dead_ranks", dead_ranks, "--max_critic_failure_rate", str(rate)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=repo)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["stopped"] for r in ranks), ranks
    assert [r["critic_calls"] for r in ranks] == [2, 2]  # both stopped after the second failed rollout of 5
    assert all("could not judge" in r["message"] for r in ranks)
    if dead_ranks == "1":  # 2 of 4 responses failed, over the 0.25 budget; rank 0 had none of them
        assert "2 of 4 responses" in ranks[0]["message"] and "on another process" in ranks[0]["message"]
        assert "connection: 2" in ranks[1]["message"]
