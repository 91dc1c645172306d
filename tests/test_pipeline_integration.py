"""The whole Text2Grad pipeline on tiny random models (fast).

annotated rows -> ``SpanRewardTrainer`` (token head) trains and saves -> ``SpanRewardModel.from_pretrained`` ->
``reward_model`` of ``SpanPPOTrainer`` in span mode -> one rollout whose per-token rewards must be exactly the token
rewards implied by the reward model's critiques (located in the decoded responses here, independently).
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from conftest import QUIET_PPO_SETTINGS
from trl_text2grad.alignment import token_char_offsets
from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer
from trl_text2grad.reward.scoring import SpanRewardModel
from trl_text2grad.reward.span_reward_config import SpanRewardConfig
from trl_text2grad.reward.span_reward_trainer import SpanRewardTrainer
from trl_text2grad.spans import Critique, locate_critique

GOOD, POOR = 2.0, -3.0  # distinct from the defaults, so a wrong score mapping cannot pass


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _annotated_rows(n: int = 8) -> list[dict]:
    """Rows of the annotation schema; most of every response is quoted so the head learns to emit spans."""
    rows = []
    for i in range(n):
        buggy = i % 2 == 0
        op = "-" if buggy else "+"
        quote = f"def add(x, y): return x {op} y"
        rows.append(
            {
                "prompt": f"Write add for case {i}.",
                "response": f"{quote}  # v{i}",
                "critique": "Subtracts instead of adding." if buggy else "Correct.",
                "good_spans": [] if buggy else [quote],
                "poor_spans": [quote] if buggy else [],
                "task_id": f"t{i}",
            }
        )
    return rows


def _expected_token_rewards(text: str, offsets: list[tuple[int, int]], critique: Critique, fuzzy: float) -> list:
    """Reward per sampled token: the score of the last located span (poor after good) sharing a visible char."""
    located = locate_critique(text, critique, good_score=GOOD, poor_score=POOR, fuzzy_threshold=fuzzy)
    rewards = []
    for start, end in offsets:
        value = 0.0
        for s, e, score in located.span_tuples():
            if text[max(start, s) : min(end, e)].strip():
                value = score
        rewards.append(value)
    return rewards


def test_annotations_to_reward_model_to_span_ppo(tmp_path, tiny_llama, smollm2_tokenizer):
    tok = smollm2_tokenizer
    rows = _annotated_rows()

    # 1. train the token-head span reward model on the annotations and save it
    reward_args = SpanRewardConfig(
        str(tmp_path / "reward"),
        model_form="token_head",
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=2e-2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        max_length=96,
        use_cpu=True,
        seed=0,
        good_span_reward=GOOD,
        poor_span_reward=POOR,
    )
    reward_trainer = SpanRewardTrainer(
        tiny_llama(seed=1), args=reward_args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    head_before = reward_trainer.model.span_head.weight.detach().clone()
    reward_trainer.train()
    assert not torch.equal(head_before, reward_trainer.model.span_head.weight.detach())
    losses = [entry["loss"] for entry in reward_trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(v) for v in losses)
    reward_trainer.save_model()

    # 2. reload it from disk and check it emits spans on its own training data (otherwise step 3 proves little)
    reward_model = SpanRewardModel.from_pretrained(reward_args.output_dir, batch_size=4)
    critiques = reward_model.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    assert any(c.good or c.poor for c in critiques)

    # 3. PPO in span mode with the reloaded model as reward_model: one rollout, two optimizer steps
    ppo_args = SpanPPOConfig(
        output_dir=str(tmp_path / "ppo"),
        reward_mode="span",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        num_ppo_epochs=2,
        num_mini_batches=1,
        response_length=12,
        total_episodes=4,
        learning_rate=1e-3,
        kl_coef=0.0,  # the per-token reward is then exactly the span reward
        good_span_reward=GOOD,
        poor_span_reward=POOR,
        **QUIET_PPO_SETTINGS,
    )
    prompts = Dataset.from_dict({"prompt": [r["prompt"] for r in rows[:4]], "task_id": list(range(4))})
    policy = tiny_llama(seed=2)
    trainer = SpanPPOTrainer(ppo_args, tok, policy, None, reward_model, prompts, value_model=None)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()

    assert trainer.state.global_step == 2
    changed = sum(int(not torch.equal(a, b)) for a, b in zip(before, trainer.model.parameters()))
    assert changed == len(before)
    log = trainer.state.log_history[0]
    for key in ("loss/policy_avg", "loss/value_avg", "objective/kl", "objective/entropy", "policy/approxkl_avg"):
        assert math.isfinite(log[key]), (key, log[key])
    assert log["span/critic_failures"] == 0

    # 4. the trainer's per-token rewards are exactly those implied by the reward model's critiques
    rollout, scored = trainer.last_rollout["rollout"], trainer.last_rollout["scored"]
    responses, mask = rollout["responses"], rollout["response_mask"].bool()
    texts, offsets = [], []
    for row in range(responses.shape[0]):
        text, row_offsets = token_char_offsets(tok, responses[row][mask[row]].tolist())
        texts.append(text)
        offsets.append(row_offsets)
    assert texts == scored.texts
    fresh = reward_model.score(rollout["prompts"], texts)  # deterministic (eval mode, argmax)
    nonzero = 0
    for row, (text, row_offsets, critique) in enumerate(zip(texts, offsets, fresh)):
        expected = _expected_token_rewards(text, row_offsets, critique, ppo_args.fuzzy_threshold)
        n = len(expected)
        assert scored.span_rewards[row, :n].tolist() == expected, (text, critique)
        assert not scored.span_rewards[row, n:].any()  # nothing past the response
        assert trainer.last_rollout["rewards"][row, :n].tolist() == pytest.approx(expected)
        nonzero += sum(v != 0 for v in expected)
    assert nonzero > 0, f"the reward model quoted nothing in {texts!r}: the check above is vacuous"
