"""SpanPPOTrainer on tiny random Llama models with the SmolLM2 tokenizer (fast), plus one real SmolLM2 run (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from conftest import QUIET_PPO_SETTINGS
from trl_text2grad import Critique
from trl_text2grad.alignment import token_char_offsets
from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer
from trl_text2grad.rewards import normalize_reward_output

METRICS = [
    "objective/kl",
    "objective/entropy",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/scores",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "policy/entropy_avg",
    "val/ratio",
    "val/num_eos_tokens",
    "lr",
    "episode",
    "span/frac_tokens_rewarded",
    "span/good_tokens",
    "span/poor_tokens",
    "span/quotes_unlocated",
    "span/critic_failures",
]


def _args(tmp_path, **overrides) -> SpanPPOConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_ppo_epochs=2,
        num_mini_batches=2,
        response_length=8,
        total_episodes=8,
        learning_rate=1e-3,
        **QUIET_PPO_SETTINGS,
    )
    settings.update(overrides)
    return SpanPPOConfig(**settings)


def _dataset(n: int = 8) -> Dataset:
    return Dataset.from_dict(
        {"prompt": [f"Write a short answer number {i}:" for i in range(n)], "task_id": list(range(n))}
    )


def quote_prefix_critic(prompts, responses, task_id=None, **context):
    """Good quote: the first 6 non-space-stripped characters; poor quote: the last 4 (when long enough)."""
    assert task_id is not None and len(task_id) == len(responses)  # dataset columns arrive as context
    out = []
    for text in responses:
        good = [text[:6]] if text[:6].strip() else []
        poor = [text[-4:]] if len(text) >= 12 and text[-4:].strip() else []
        out.append(Critique("critique", good=good, poor=poor))
    return out


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _changed(before, model) -> int:
    return sum(int(not torch.equal(a, b)) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def test_token_char_offsets_tile_the_text(smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = "def f(x): return x² + 1  # café 中文 😀"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    decoded, offsets = token_char_offsets(tok, ids)
    assert decoded == text
    assert offsets[-1][0] == offsets[-1][1] == len(text)  # special token: zero width
    assert offsets[0][0] == 0 and max(e for _, e in offsets) == len(text)
    for (s0, e0), (s1, e1) in zip(offsets, offsets[1:]):
        assert e0 <= e1 and s1 >= s0  # monotonic, contiguous cover
        assert s1 == e0 or (s1, e1) == (s0, e0)  # shared range only for split multi-byte characters
    # a multi-byte character split over several byte tokens: all its tokens share its range
    emoji_tokens = [i for i, (s, e) in enumerate(offsets) if "😀" in text[s:e]]
    assert len(emoji_tokens) >= 2 and len({offsets[i] for i in emoji_tokens}) == 1


def test_normalize_reward_output_forms():
    text = "alpha beta gamma"
    assert normalize_reward_output(1.5, text).scalar == 1.5
    assert not normalize_reward_output(float("nan"), text).ok
    assert not normalize_reward_output(None, text).ok
    assert not normalize_reward_output("bad", text).ok
    assert normalize_reward_output([(0, 5, 2.0)], text).spans == [(0, 5, 2.0)]
    assert not normalize_reward_output([(0, 99, 1.0)], text).ok  # out of range
    assert not normalize_reward_output([(0, 3)], text).ok  # malformed
    located = normalize_reward_output(Critique("", good=["beta"], poor=["zzzz qqqq"]), text)
    assert located.ok and located.spans == [(6, 10, 1.0)] and located.num_unlocated == 1
    assert not normalize_reward_output(Critique("", good=["not there at all"], poor=[]), text).ok
    both = normalize_reward_output({"score": 0.5, "good_spans": ["gamma"], "poor_spans": []}, text, 2.0, -3.0)
    assert both.scalar == 0.5 and both.spans == [(11, 16, 2.0)]
    pair = normalize_reward_output((0.25, [(0, 5, -1.0)]), text)
    assert pair.scalar == 0.25 and pair.spans == [(0, 5, -1.0)]


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["span", "scalar", "hybrid"])
def test_updates_change_parameters_and_log_metrics(tmp_path, bpe_tokenizer, tiny_llama, mode):
    trainer = SpanPPOTrainer(
        _args(tmp_path, reward_mode=mode),
        bpe_tokenizer,
        tiny_llama(bpe_tokenizer),
        None,
        quote_prefix_critic,
        _dataset(),
        value_model=None,
    )
    before = _params(trainer.model)
    ref_before = _params(trainer.ref_model)
    trainer.train()
    # 2 rollouts x 2 PPO epochs x 2 mini-batches = 8 optimizer steps
    assert trainer.state.global_step == 8
    assert _changed(before, trainer.model) == len(before)
    assert _changed(ref_before, trainer.ref_model) == 0
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert set(METRICS) <= logged
    first = trainer.state.log_history[0]
    assert first["episode"] == 4 and first["span/critic_failures"] == 0
    assert math.isfinite(first["loss/policy_avg"]) and math.isfinite(first["loss/value_avg"])
    assert first["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the first rollout
    scored = trainer.last_rollout["scored"]
    if mode == "scalar":
        # spans only: the sequence score is the mean token reward, placed on the last valid token
        mask = trainer.last_rollout["rollout"]["response_mask"].float()
        expected = (scored.span_rewards * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(scored.scores, expected)
        assert first["span/frac_tokens_rewarded"] > 0


class FixedResponseTrainer(SpanPPOTrainer):
    """Feeds a known response instead of sampling (the hook a parity run uses for identical rollouts)."""

    fixed_text = "The answer is 42 because six times seven is forty-two."

    def generate_responses(self, policy, prompt_ids, prompt_mask):
        tok = self.processing_class
        ids = tok(self.fixed_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return torch.tensor([ids] * prompt_ids.shape[0], device=prompt_ids.device)


def test_span_rewards_land_exactly_on_quoted_tokens(tmp_path, smollm2_tokenizer, tiny_llama):
    tok = smollm2_tokenizer
    text = FixedResponseTrainer.fixed_text

    def critic(prompts, responses, **context):
        assert all(r == text for r in responses)
        return [Critique("", good=["42 because"], poor=["forty-two"]) for _ in responses]

    trainer = FixedResponseTrainer(
        _args(tmp_path, total_episodes=4, num_ppo_epochs=1, num_mini_batches=1, kl_coef=0.0),
        tok,
        tiny_llama(),
        None,
        critic,
        _dataset(4),
        None,
    )
    trainer.train()
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    good_start, poor_start = text.index("42 because"), text.index("forty-two")
    expected = []
    for s, e in enc["offset_mapping"]:
        piece = text[s:e]
        touches_good = s < good_start + len("42 because") and e > good_start and piece.strip()
        touches_poor = s < poor_start + len("forty-two") and e > poor_start and piece.strip()
        expected.append(-1.0 if touches_poor else (1.0 if touches_good else 0.0))
    expected.append(0.0)  # the EOS token
    span_rewards = trainer.last_rollout["scored"].span_rewards
    mask = trainer.last_rollout["rollout"]["response_mask"]
    assert mask.sum(1).tolist() == [len(expected)] * 4
    for row in range(4):
        assert span_rewards[row, : len(expected)].tolist() == expected
    assert sum(v == 1.0 for v in expected) >= 2 and sum(v == -1.0 for v in expected) >= 2
    # with kl_coef 0 the per-token reward is exactly the span reward (the EOS token also gets nothing)
    rewards = trainer.last_rollout["rewards"]
    assert rewards[0, : len(expected)].tolist() == pytest.approx(expected)


class EmptyResponseTrainer(SpanPPOTrainer):
    """Every response is just the stop token (an empty text)."""

    def generate_responses(self, policy, prompt_ids, prompt_mask):
        eos = self.processing_class.eos_token_id
        return torch.full((prompt_ids.shape[0], 3), eos, device=prompt_ids.device)


def test_empty_responses_train_on_the_stop_token(tmp_path, smollm2_tokenizer, tiny_llama):
    seen = []

    def critic(prompts, responses, **context):
        seen.extend(responses)
        return [Critique("empty", good=[], poor=[]) for _ in responses]

    trainer = EmptyResponseTrainer(
        _args(tmp_path, total_episodes=4, num_ppo_epochs=1, num_mini_batches=1, missing_eos_penalty=2.0),
        smollm2_tokenizer,
        tiny_llama(),
        None,
        critic,
        _dataset(4),
        None,
    )
    trainer.train()
    assert seen == [""] * 4
    rollout = trainer.last_rollout["rollout"]
    assert rollout["response_mask"].tolist() == [[1, 0, 0]] * 4  # only the stop token is trained on
    assert trainer.last_rollout["scored"].scores.tolist() == [0.0] * 4  # it has an EOS: no penalty
    assert trainer.last_rollout["scored"].failures == 0


def test_span_reward_model_object(tmp_path, smollm2_tokenizer, tiny_llama):
    class SpanModel:  # the interface of trl_text2grad.reward.scoring.SpanRewardModel
        def __init__(self):
            self.calls = 0

        def score(self, prompts, responses):
            self.calls += 1
            return [Critique("", good=[], poor=["six times seven"]) for _ in responses]

    span_model = SpanModel()
    trainer = FixedResponseTrainer(
        _args(tmp_path, total_episodes=4, num_ppo_epochs=1, num_mini_batches=1),
        smollm2_tokenizer,
        tiny_llama(),
        None,
        span_model,
        _dataset(4),
        None,
    )
    assert trainer.reward_kind == "span_model"
    trainer.train()
    assert span_model.calls == 1
    rewards = trainer.last_rollout["scored"].span_rewards[0]
    assert (rewards == -1.0).sum() >= 3 and (rewards == 1.0).sum() == 0


def test_fixed_generation_scalar_rewards_on_last_token(tmp_path, smollm2_tokenizer, tiny_llama):
    trainer = FixedResponseTrainer(
        _args(tmp_path, total_episodes=4, num_ppo_epochs=1, num_mini_batches=1, kl_coef=0.0, reward_mode="scalar"),
        smollm2_tokenizer,
        tiny_llama(),
        None,
        lambda prompts, responses, **c: [2.0] * len(responses),
        _dataset(4),
        None,
    )
    trainer.train()
    rewards = trainer.last_rollout["rewards"]
    n = int(trainer.last_rollout["rollout"]["response_mask"][0].sum())
    assert rewards[0, n - 1].item() == 2.0 and rewards[0, : n - 1].abs().sum().item() == 0.0


def test_peft_reference_is_adapter_disabled_policy(tmp_path, bpe_tokenizer, tiny_llama):
    from peft import LoraConfig

    model = tiny_llama(bpe_tokenizer)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = SpanPPOTrainer(
        _args(tmp_path, learning_rate=1e-2),
        bpe_tokenizer,
        model,
        None,
        quote_prefix_critic,
        _dataset(),
        None,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    assert trainer.ref_model is None and trainer.is_peft_model
    trainer.train()
    policy = trainer.model.policy
    lora = {k: v for k, v in policy.state_dict().items() if "lora_" in k}
    assert lora and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
    for name, value in policy.get_base_model().state_dict().items():  # frozen base weights never change
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(value, base_before[key]), name
    history = trainer.state.log_history
    kls = [h["objective/kl"] for h in history if "objective/kl" in h]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero: policy == reference
    assert kls[-1] != pytest.approx(0.0, abs=1e-6)  # afterwards the adapter moved the policy away
    # the saved policy is the adapter
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "adapter_config.json").exists()
    assert (tmp_path / "saved" / "value_head.safetensors").exists()


def test_bad_critic_outputs_never_stop_training(tmp_path, bpe_tokenizer, tiny_llama, caplog):
    calls = {"n": 0}

    def flaky(prompts, responses, **context):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("critic service down")
        if calls["n"] == 2:
            return [None, float("nan"), Critique("", good=["no such quote anywhere"], poor=[]), [(0, 10_000, 1.0)]]
        return [1.0, None, [(0, 0, 1.0)], Critique("", good=[], poor=[])]

    trainer = SpanPPOTrainer(  # a budget of 3 failed rollouts in a row: two all-failed rollouts do not stop it
        _args(tmp_path, total_episodes=12, max_consecutive_failed_rollouts=3),
        bpe_tokenizer,
        tiny_llama(bpe_tokenizer),
        None,
        flaky,
        _dataset(12),
        None,
    )
    before = _params(trainer.model)
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.state.global_step == 12
    rollouts = [h for h in trainer.state.log_history if "span/critic_failures" in h]
    assert [h["span/critic_failures"] for h in rollouts] == [4, 4, 1]
    assert [h["rollout/skipped"] for h in rollouts] == [1, 1, 0]
    assert any("unusable reward" in r.message or "raised" in r.message for r in caplog.records)
    assert _changed(before, trainer.model) > 0  # the last rollout trained
    assert rollouts[0]["span/quotes_unlocated"] == 0 and rollouts[1]["span/quotes_unlocated"] == 1


def test_all_failed_rollout_leaves_parameters_untouched(tmp_path, bpe_tokenizer, tiny_llama):
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=4),
        bpe_tokenizer,
        tiny_llama(bpe_tokenizer),
        None,
        lambda prompts, responses, **c: [None] * len(responses),
        _dataset(4),
        None,
    )
    before = _params(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 4
    assert _changed(before, trainer.model) == 0


def test_skip_mode_drops_failed_samples_from_the_loss(tmp_path, bpe_tokenizer, tiny_llama):
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=4, on_critic_error="skip"),
        bpe_tokenizer,
        tiny_llama(bpe_tokenizer),
        None,
        lambda prompts, responses, **c: [1.0, None, 0.5, float("inf")],
        _dataset(4),
        None,
    )
    trainer.train()
    keep = trainer.last_rollout["scored"].keep.tolist()
    assert sorted(keep) == [False, False, True, True]
    train_mask = trainer.last_rollout["train_mask"]
    rows = trainer.last_rollout["rollout"]["rows"]
    assert len(rows) == 4
    for row, kept in enumerate(keep):
        assert (train_mask[row].sum() > 0) == kept
        if not kept:
            assert trainer.last_rollout["advantages"][row].abs().sum() == 0


def test_classifier_reward_and_separate_value_model(tmp_path, bpe_tokenizer, tiny_llama):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = bpe_tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(1)
    reward_model = LlamaForSequenceClassification(config)
    value_model = LlamaForSequenceClassification(config)
    trainer = SpanPPOTrainer(
        _args(tmp_path, reward_mode="scalar", missing_eos_penalty=1.0, stop_token=None, stop_token_id=None),
        tok,
        tiny_llama(bpe_tokenizer),
        None,
        reward_model,
        _dataset(),
        value_model,
    )
    value_before = _params(value_model)
    trainer.train()
    assert trainer.reward_kind == "classifier"
    assert _changed(value_before, trainer.model.value_model) > 0
    rollout = trainer.last_rollout["rollout"]
    # no stop token: full-length responses, no EOS -> every score carries the missing-EOS penalty
    assert rollout["response_mask"].sum().item() == rollout["response_mask"].numel()
    raw = trainer._classifier_scores(rollout)
    torch.testing.assert_close(trainer.last_rollout["scored"].scores, raw - 1.0)
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "value_model" / "config.json").exists()


def test_reward_function_without_kwargs_gets_only_named_columns(tmp_path, bpe_tokenizer, tiny_llama):
    seen = {}

    def reward(prompts, responses, task_id):  # no **kwargs: the extra `note` column must not be passed
        seen["task_id"] = list(task_id)
        return [0.5] * len(responses)

    ds = _dataset(4).add_column("note", ["x"] * 4)
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=4), bpe_tokenizer, tiny_llama(bpe_tokenizer), None, reward, ds, None
    )
    trainer.train()
    assert sorted(seen["task_id"]) == [0, 1, 2, 3]
    assert trainer.state.log_history[0]["span/critic_failures"] == 0


def test_tokenized_prompts_and_prompt_truncation(tmp_path, bpe_tokenizer, tiny_llama):
    tok = bpe_tokenizer
    long_ids = tok("one two three four five six seven eight nine ten", add_special_tokens=False)["input_ids"]
    ds = Dataset.from_dict({"input_ids": [long_ids, long_ids[:3], long_ids, long_ids[:2]]})
    seen = []

    def critic(prompts, responses, **context):
        seen.extend(prompts)
        return [0.0] * len(responses)

    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=4, max_prompt_length=5), tok, tiny_llama(bpe_tokenizer), None, critic, ds, None
    )
    trainer.train()
    history = [h for h in trainer.state.log_history if "rollout/prompts_truncated" in h]
    assert history[0]["rollout/prompts_truncated"] == 2
    assert trainer.last_rollout["rollout"]["prompt_ids"].shape[1] == 5
    assert any(p.endswith("ten") for p in seen)  # left truncation keeps the end of the prompt


def test_chat_prompts_and_bad_rows(tmp_path, smollm2_tokenizer, tiny_llama):
    tok = smollm2_tokenizer
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Say {i}"}] for i in range(4)]})
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=4), tok, tiny_llama(), None, lambda p, r, **c: [0.0] * len(r), ds, None
    )
    trainer.train()
    prompt_ids = trainer.last_rollout["rollout"]["prompt_ids"][0].tolist()
    assert "<|im_start|>assistant" in tok.decode(prompt_ids)
    with pytest.raises(ValueError, match="neither `input_ids` nor `prompt`"):
        trainer._encode_rows([{"question": "x"}])
    with pytest.raises(ValueError, match="empty prompt"):
        trainer._encode_rows([{"prompt": ""}])
    with pytest.raises(ValueError, match="batch_size"):
        SpanPPOTrainer(_args(tmp_path), tok, tiny_llama(), None, lambda p, r, **c: [0.0], _dataset(2), None)


def _final_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resume_equals_uninterrupted_run(tmp_path, bpe_tokenizer, tiny_llama):
    # 8 rows, 4 per rollout -> 2 rollouts per data epoch; 3 rollouts x 2 PPO epochs x 2 mini-batches = 12 steps
    def make(output_dir, **overrides):
        args = _args(
            tmp_path,
            output_dir=str(output_dir),
            total_episodes=12,
            save_strategy="steps",
            save_steps=3,
            adaptive_kl=True,
            kl_target=0.01,
            **overrides,
        )
        return SpanPPOTrainer(
            args, bpe_tokenizer, tiny_llama(bpe_tokenizer), None, quote_prefix_critic, _dataset(), None
        )

    full = make(tmp_path / "full")
    full.train()
    assert full.state.global_step == 12
    expected = _final_state(full)
    expected_kl_coef = full.kl_coef
    assert expected_kl_coef != 0.05
    # checkpoint-3 is in the middle of a rollout and of a PPO epoch; checkpoint-9 is in the second data epoch
    for step in (3, 9):
        resumed = make(tmp_path / "full")
        resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{step}"))
        assert resumed.state.global_step == 12
        got = _final_state(resumed)
        for key, value in expected.items():
            assert torch.equal(got[key], value), f"{key} after resume at {step}"  # bit for bit on CPU
        assert resumed.kl_coef == expected_kl_coef


def test_config_validation():
    with pytest.raises(ValueError, match="reward_mode"):
        SpanPPOConfig(output_dir="x", reward_mode="token", report_to=[])
    with pytest.raises(ValueError, match="both"):
        SpanPPOConfig(output_dir="x", stop_token="eos", stop_token_id=3, report_to=[])
    with pytest.raises(ValueError, match="on_critic_error"):
        SpanPPOConfig(output_dir="x", on_critic_error="crash", report_to=[])
    config = SpanPPOConfig(output_dir="x", report_to=[])
    assert (config.learning_rate, config.num_ppo_epochs, config.kl_coef, config.response_length) == (3e-6, 4, 0.05, 53)
    assert (config.vf_coef, config.cliprange, config.cliprange_value, config.gamma, config.lam) == (
        0.1,
        0.2,
        0.2,
        1.0,
        0.95,
    )


def test_config_computes_every_derived_size():
    config = SpanPPOConfig(
        output_dir="x", report_to=[], per_device_train_batch_size=2, gradient_accumulation_steps=8,
        num_mini_batches=2, num_ppo_epochs=3, total_episodes=100, use_cpu=True,
    )  # fmt: skip
    assert config.world_size == 1  # TrainingArguments.world_size, not a field that hides it
    assert config.rollout_accumulation_steps == 8  # the user's gradient_accumulation_steps: the rollout size
    assert (config.local_batch_size, config.batch_size, config.micro_batch_size) == (16, 16, 2)
    assert (config.local_mini_batch_size, config.mini_batch_size) == (8, 8)
    assert config.gradient_accumulation_steps == 4  # the Trainer's: micro-batches of one mini-batch
    assert (config.steps_per_rollout, config.micro_steps_per_rollout) == (6, 24)
    assert config.num_total_batches == 7 and config.max_steps == 42  # ceil(100 / 16) rollouts of 6 steps
    # re-creating the config from its serialised form gives the same sizes (no drift of gradient_accumulation_steps)
    import dataclasses

    init_fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    assert "batch_size" not in init_fields and "world_size" not in init_fields
    again = SpanPPOConfig(**init_fields)
    for name in ("local_batch_size", "batch_size", "gradient_accumulation_steps", "max_steps", "num_total_batches"):
        assert getattr(again, name) == getattr(config, name), name
    assert dataclasses.replace(config).gradient_accumulation_steps == 4
    # max_steps wins over total_episodes; without both the trainer derives the budget from the data set
    assert SpanPPOConfig(output_dir="x", report_to=[], max_steps=10, num_ppo_epochs=2).num_total_batches == 5
    assert SpanPPOConfig(output_dir="x", report_to=[]).num_total_batches is None
    with pytest.raises(ValueError, match="num_mini_batches"):
        SpanPPOConfig(output_dir="x", report_to=[], per_device_train_batch_size=2, num_mini_batches=3)
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        SpanPPOConfig(output_dir="x", report_to=[], per_device_train_batch_size=4, num_mini_batches=4)
    with pytest.raises(ValueError, match="rollout_accumulation_steps"):
        SpanPPOConfig(output_dir="x", report_to=[], rollout_accumulation_steps=4, gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        SpanPPOConfig(output_dir="x", report_to=[], load_best_model_at_end=True, eval_strategy="steps")
    with pytest.raises(TypeError):
        SpanPPOConfig(output_dir="x", report_to=[], batch_size=4)  # computed, not an argument


def test_trainer_never_writes_to_its_arguments(tmp_path, bpe_tokenizer, tiny_llama):
    import copy

    args = _args(tmp_path, total_episodes=None, num_train_epochs=1.5, save_strategy="steps", save_steps=100)
    before = copy.deepcopy(args.__dict__)
    trainer = SpanPPOTrainer(
        args, bpe_tokenizer, tiny_llama(bpe_tokenizer), None, quote_prefix_critic, _dataset(), None
    )
    # total_episodes defaults to num_train_epochs * len(train_dataset) = 12 -> 3 rollouts of 4 steps
    assert trainer.num_total_batches == 3 and args.num_total_batches is None
    trainer.train()
    assert trainer.state.global_step == 12 and trainer.state.max_steps == 12
    after = args.__dict__
    changed = {k for k in before if k in after and repr(before[k]) != repr(after[k])}
    assert not changed - {"_n_gpu", "distributed_state", "_setup_devices"}, changed
    assert args.max_steps == -1 and args.gradient_accumulation_steps == 1 and args.total_episodes is None


def test_trl112_switches_are_not_in_the_public_config():
    from trl_text2grad.ppo.parity import Trl112ParityConfig

    assert not any(f.startswith("trl112") for f in SpanPPOConfig.__dataclass_fields__)
    with pytest.raises(TypeError):
        SpanPPOConfig(output_dir="x", report_to=[], trl112_score_placement=True)
    assert Trl112ParityConfig(output_dir="x", report_to=[], trl112_score_placement=True).trl112_score_placement
    for name in ("sft_model_path", "exp_name", "dataset_num_proc"):  # accepted, documented as not read
        assert "not read" in SpanPPOConfig.__dataclass_fields__[name].metadata["help"]


# ----------------------------------------------------------------------------------------------------------------
# evaluation: sample generations, evaluate(), eval_strategy
# ----------------------------------------------------------------------------------------------------------------
def _eval_args(tmp_path, **overrides) -> SpanPPOConfig:
    """One optimizer step per rollout of 2 prompts (fast)."""
    settings = dict(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        num_ppo_epochs=1,
        num_mini_batches=1,
        per_device_eval_batch_size=2,
        num_sample_generations=0,
    )
    settings.update(overrides)
    return _args(tmp_path, **settings)


def _read_jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sample_generations_cadence_and_table_scores(tmp_path, bpe_tokenizer, tiny_llama, capsys):
    given = {}

    def reward(prompts, responses, task_id):
        scores = [len(text) / 10 + t for text, t in zip(responses, task_id)]
        given.update(zip(zip(prompts, responses), scores))
        return scores

    eval_ds = Dataset.from_dict(
        {"prompt": ["Eval prompt A:", "Eval prompt B:", "Eval prompt C:"], "task_id": [7, 8, 9]}
    )
    # 5 rollouts, num_sample_generations=2 -> every max(1, 5 // 2) = 2 updates, from the first: updates 1, 3, 5
    args = _eval_args(tmp_path, total_episodes=10, num_sample_generations=2)
    trainer = SpanPPOTrainer(
        args, bpe_tokenizer, tiny_llama(bpe_tokenizer), None, reward, _dataset(10), None, eval_dataset=eval_ds
    )
    assert trainer.sample_generations_freq == 2
    trainer.train()
    assert trainer.state.global_step == 5
    directory = tmp_path / "out" / "completions"
    assert sorted(p.name for p in directory.iterdir()) == ["update_1.jsonl", "update_3.jsonl", "update_5.jsonl"]
    for name in ("update_1.jsonl", "update_3.jsonl", "update_5.jsonl"):
        table = _read_jsonl(directory / name)
        # the first eval batch (per_device_eval_batch_size=2 prompts), scored by the reward function
        assert [row["query"] for row in table] == ["Eval prompt A:", "Eval prompt B:"]
        for row, task_id in zip(table, (7, 8)):
            assert row["score"] == pytest.approx(given[row["query"], row["response"]])
            assert row["score"] == pytest.approx(len(row["response"]) / 10 + task_id)
            assert row["good_spans"] == 0 and row["poor_spans"] == 0
    assert capsys.readouterr().out.count("Sample completions after update") == 3


class PerPromptResponseTrainer(SpanPPOTrainer):
    """Eval prompt i ("... number i:") gets response A + EOS for even i and the longer response B (no EOS) for odd i."""

    text_a = "The answer is 42."
    text_b = "I am not sure what the answer could be here, sorry about that"

    def generate_responses(self, policy, prompt_ids, prompt_mask):
        tok = self.processing_class
        ids_a = tok(self.text_a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids_b = tok(self.text_b, add_special_tokens=False)["input_ids"]
        assert len(ids_b) > len(ids_a)  # B fills the width: no padding after it
        out = []
        for ids in prompt_ids:
            number = int(tok.decode(ids, skip_special_tokens=True).rstrip(":").split()[-1])
            row = ids_a if number % 2 == 0 else ids_b
            out.append(row + [tok.pad_token_id] * (len(ids_b) - len(row)))
        return torch.tensor(out, device=prompt_ids.device)


def test_evaluate_metrics_equal_hand_computation(tmp_path, bpe_tokenizer, tiny_llama):
    tok = bpe_tokenizer
    text_a, text_b = PerPromptResponseTrainer.text_a, PerPromptResponseTrainer.text_b
    seen_ids = []

    def reward(prompts, responses, task_id):
        seen_ids.extend(task_id)
        out = []
        for text, t in zip(responses, task_id):
            critique = Critique("", good=["answer"], poor=["42"]) if text == text_a else None
            critique = critique or Critique("", good=[], poor=["not sure", "could be"])
            out.append((t + 0.5, critique))
        return out

    trainer = PerPromptResponseTrainer(
        _eval_args(tmp_path, reward_mode="scalar", missing_eos_penalty=1.0, total_episodes=2),
        tok,
        tiny_llama(tok),
        None,
        reward,
        _dataset(2),
        None,
        eval_dataset=_dataset(5),  # 3 batches of 2, 2, 1 prompts
    )
    metrics = trainer.evaluate()
    assert sorted(seen_ids) == [0, 1, 2, 3, 4]
    # scalar mode: the task reward is the explicit score, minus missing_eos_penalty for the odd rows (no EOS)
    scores = [i + 0.5 - (i % 2) * 1.0 for i in range(5)]
    len_a = len(tok(text_a, add_special_tokens=False)["input_ids"]) + 1  # + the EOS token
    len_b = len(tok(text_b, add_special_tokens=False)["input_ids"])
    assert metrics["eval_score"] == pytest.approx(sum(scores) / 5)  # 2.1
    assert metrics["eval_eos_fraction"] == pytest.approx(3 / 5)
    assert metrics["eval_response_length"] == pytest.approx((3 * len_a + 2 * len_b) / 5)
    assert metrics["eval_good_spans"] == pytest.approx(3 / 5)  # "answer" in the 3 A rows
    assert metrics["eval_poor_spans"] == pytest.approx((3 * 1 + 2 * 2) / 5)
    assert metrics["eval_failed_fraction"] == 0.0
    assert {"eval_runtime", "eval_samples_per_second"} <= set(metrics)
    logged = trainer.state.log_history[-1]
    assert logged["eval_score"] == pytest.approx(2.1) and "objective/kl" not in logged
    # another prefix, a dataset passed in
    other = trainer.evaluate(_dataset(2), metric_key_prefix="test")
    assert other["test_score"] == pytest.approx((0.5 + 0.5) / 2) and "eval_score" not in other


def test_evaluate_counts_bad_reward_outputs(tmp_path, bpe_tokenizer, tiny_llama):
    calls = {"n": 0}

    def flaky(prompts, responses, **context):
        calls["n"] += 1
        if calls["n"] == 1:
            return [None, 1.0]
        if calls["n"] == 2:
            raise RuntimeError("critic service down")
        return [Critique("", good=["no such quote anywhere in it"], poor=[])] * len(responses)

    trainer = SpanPPOTrainer(
        _eval_args(tmp_path, total_episodes=2),
        bpe_tokenizer,
        tiny_llama(bpe_tokenizer),
        None,
        flaky,
        _dataset(2),
        None,
        eval_dataset=_dataset(5),
    )
    metrics = trainer.evaluate()
    assert calls["n"] == 3
    assert metrics["eval_failed_fraction"] == pytest.approx(4 / 5)
    assert metrics["eval_score"] == pytest.approx(1.0)  # the one usable reward
    assert metrics["eval_good_spans"] == 0.0
    trainer.reward_model = lambda prompts, responses, **c: [float("nan")] * len(responses)
    metrics = trainer.evaluate()
    assert metrics["eval_failed_fraction"] == 1.0 and math.isnan(metrics["eval_score"])


def test_eval_strategy_steps_evaluates_during_training(tmp_path, bpe_tokenizer, tiny_llama):
    reward = lambda prompts, responses, **c: [0.25] * len(responses)  # noqa: E731
    # 2 rollouts x 2 PPO epochs = 4 optimizer steps; evaluation every 2 steps (after each rollout)
    args = _eval_args(tmp_path, total_episodes=4, num_ppo_epochs=2, eval_strategy="steps", eval_steps=2)
    trainer = SpanPPOTrainer(
        args, bpe_tokenizer, tiny_llama(bpe_tokenizer), None, reward, _dataset(4), None, eval_dataset=_dataset(2)
    )
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_score" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert all(h["eval_score"] == pytest.approx(0.25) for h in evals)
    assert not any("objective/kl" in h for h in evals)  # training statistics stay in the training entries
    assert sum("objective/kl" in h for h in trainer.state.log_history) == 2  # one per rollout
    with pytest.raises(ValueError, match="eval_dataset"):
        SpanPPOTrainer(
            _eval_args(tmp_path, eval_strategy="epoch"), bpe_tokenizer, tiny_llama(bpe_tokenizer), None, reward,
            _dataset(4), None,
        )  # fmt: skip


def test_best_checkpoint_is_tracked_under_its_final_name(tmp_path, bpe_tokenizer, tiny_llama):
    """Checkpoints are staged under a hidden name: the best one must be recorded (and kept) under checkpoint-N."""
    import json

    from trl_text2grad.checkpoints import checkpoint_problem

    scores = iter([0.5, 0.9, 0.1, 0.2, 0.3, 0.4])  # eval after steps 1..6: the best is step 2

    def reward(prompts, responses, **context):
        value = next(scores) if len(responses) == 2 and prompts[0].startswith("Eval") else 0.0
        return [value] * len(responses)

    eval_ds = Dataset.from_dict({"prompt": ["Eval a:", "Eval b:"]})
    args = _eval_args(
        tmp_path, total_episodes=12, eval_strategy="steps", eval_steps=1, save_strategy="best",
        metric_for_best_model="score", save_total_limit=1,
    )  # fmt: skip
    trainer = SpanPPOTrainer(
        args, bpe_tokenizer, tiny_llama(bpe_tokenizer), None, reward, _dataset(12), None, eval_dataset=eval_ds
    )
    trainer.train()
    out = tmp_path / "out"
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-2")
    assert checkpoint_problem(out / "checkpoint-2", trainer.checkpoint_required_files()) is None
    saved = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(out / "checkpoint-2")
    assert not list(out.glob(".tmp-*"))


def test_model_adapter_name_selects_the_trained_adapter(tmp_path, bpe_tokenizer, tiny_llama):
    from peft import LoraConfig, get_peft_model

    def lora():
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)

    model = get_peft_model(tiny_llama(bpe_tokenizer), lora())  # adapter "default"
    model.add_adapter("policy", lora())
    assert model.active_adapter == "default"

    def make(**overrides):
        args = _eval_args(tmp_path, total_episodes=2, learning_rate=1e-2, **overrides)
        return SpanPPOTrainer(args, bpe_tokenizer, model, None, quote_prefix_critic, _dataset(2), None)

    with pytest.raises(ValueError, match="model_adapter_name='nope' is not an adapter"):
        make(model_adapter_name="nope")
    with pytest.raises(ValueError, match="ref_adapter_name='nope' is not an adapter"):
        make(model_adapter_name="policy", ref_adapter_name="nope")
    with pytest.raises(ValueError, match="need a PEFT policy"):
        SpanPPOTrainer(
            _eval_args(tmp_path, model_adapter_name="policy"), bpe_tokenizer, tiny_llama(bpe_tokenizer), None,
            quote_prefix_critic, _dataset(2), None,
        )  # fmt: skip
    assert model.active_adapter == "default"  # failed validation changed nothing

    trainer = make(model_adapter_name="policy", ref_adapter_name="default")
    assert model.active_adapter == "policy"
    grads = {name: p.requires_grad for name, p in model.named_parameters() if "lora_" in name}
    assert all(grads[n] for n in grads if ".policy." in n) and not any(grads[n] for n in grads if ".default." in n)
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert model.active_adapter == "policy"  # the reference context switches back to the trained adapter
    after = dict(model.named_parameters())
    assert any(not torch.equal(v, after[n]) for n, v in lora_b.items() if ".policy." in n)
    assert all(torch.equal(v, after[n]) for n, v in lora_b.items() if ".default." in n)


@pytest.mark.slow
@pytest.mark.ci_real_model
def test_smollm2_two_updates_span_mode(tmp_path):
    from trl_text2grad.models import load_default_model, load_default_tokenizer

    tok = load_default_tokenizer()
    model = load_default_model()
    ds = Dataset.from_dict(
        {
            "prompt": [
                [{"role": "user", "content": "Write a Python function that adds two numbers."}],
                [{"role": "user", "content": "What is the capital of France?"}],
            ]
        }
    )

    def critic(prompts, responses, **context):
        out = []
        for text in responses:
            words = text.split()
            out.append(Critique("", good=[" ".join(words[:2])] if words else [], poor=[words[-1]] if words else []))
        return out

    args = _args(
        tmp_path,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=2,
        total_episodes=2,
        response_length=16,
        learning_rate=1e-5,
        heatmap_every_n_steps=1,
    )
    trainer = SpanPPOTrainer(args, tok, model, None, critic, ds, None)
    before = _params(trainer.model.policy)
    trainer.train()
    assert trainer.state.global_step == 2
    assert _changed(before, trainer.model.policy) > 0
    history = [h for h in trainer.state.log_history if "span/frac_tokens_rewarded" in h]
    assert len(history) == 1 and history[0]["span/frac_tokens_rewarded"] > 0
    assert all(np.isfinite(h["loss/policy_avg"]) for h in trainer.state.log_history if "loss/policy_avg" in h)
    assert list((tmp_path / "out" / "heatmaps").glob("update_*.html"))


MULTIPROC_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[2])
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl_text2grad import Critique
from trl_text2grad.models import load_default_tokenizer
from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer

tok = load_default_tokenizer()
torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id)
model = LlamaForCausalLM(config)
ds = Dataset.from_dict({"prompt": [f"Write a short answer number {i}:" for i in range(8)]})

def critic(prompts, responses, **context):
    if prompts[0].startswith("Eval"):  # evaluation: score = the prompt's number
        return [float(p.split()[-1]) for p in prompts]
    return [Critique("", good=[r[:6]] if r[:6].strip() else [], poor=[]) for r in responses]

args = SpanPPOConfig(output_dir=sys.argv[1], per_device_train_batch_size=2, gradient_accumulation_steps=1,
                     num_ppo_epochs=1, num_mini_batches=1, response_length=6, total_episodes=8, learning_rate=1e-3,
                     logging_steps=1, report_to=[], bf16=False, gradient_checkpointing=False, save_strategy="no",
                     stop_token="eos", disable_tqdm=True, use_cpu=True, per_device_eval_batch_size=2,
                     num_sample_generations=1)
eval_ds = Dataset.from_dict({"prompt": [f"Eval {i}" for i in range(5)]})  # 5 rows over 2 ranks x 2: uneven
trainer = SpanPPOTrainer(args, tok, model, None, critic, ds, None, eval_dataset=eval_ds)
before = [p.detach().clone() for p in trainer.model.parameters()]
trainer.train()
after = [p.detach().clone() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]
first = sum(p.double().sum().item() for p in after)
result = {"rank": trainer.accelerator.process_index, "world": trainer.accelerator.num_processes,
          "steps": trainer.state.global_step, "checksum": first,
          "changed": sum(int(not torch.equal(a, b)) for a, b in zip(before, after)),
          "episodes": [h["episode"] for h in trainer.state.log_history if "episode" in h],
          "eval": trainer.evaluate()}
with open(f"{sys.argv[1]}/rank{result['rank']}.json", "w") as f:
    json.dump(result, f)
"""


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_process_cpu_training(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "train.py"
    script.write_text(MULTIPROC_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    # torchrun sets RANK/WORLD_SIZE; accelerate (inside the Trainer) then uses gloo on CPU
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    cmd += [str(script), str(out), str(Path(__file__).parent)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in results)
    # batch_size = 2 per rank * 2 ranks = 4 prompts per rollout -> 2 rollouts, 1 step each
    assert [r["steps"] for r in results] == [2, 2]
    assert all(r["changed"] > 0 for r in results)
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)  # DDP kept replicas equal
    assert results[0]["episodes"] == [4.0, 8.0]
    # evaluate(): 5 prompts on 2 ranks, each counted once (gather_for_metrics drops the padding duplicates)
    assert all(r["eval"]["eval_score"] == pytest.approx((0 + 1 + 2 + 3 + 4) / 5) for r in results)
    assert all(r["eval"]["eval_failed_fraction"] == 0.0 for r in results)
    # sample generations: after update 1 of 2 only, the first eval batch of each rank (2 x 2 prompts)
    tables = sorted(p.name for p in (out / "completions").iterdir())
    assert tables == ["update_1.jsonl"]
    rows = [json.loads(line) for line in (out / "completions" / "update_1.jsonl").read_text().splitlines()]
    assert sorted(row["query"] for row in rows) == ["Eval 0", "Eval 1", "Eval 2", "Eval 3"]
    assert all(row["score"] == float(row["query"].split()[-1]) for row in rows)
