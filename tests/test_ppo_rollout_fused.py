"""The optimised rollout gives the numbers of the straightforward computation.

When a rollout is one micro-batch (``rollout_accumulation_steps == 1``), ``SpanPPOTrainer`` takes the old log-probs
and values from the first PPO epoch's own loss forward (train mode, with gradients) instead of a separate no-grad
forward, and it skips the reference forward when nothing needs the KL. These tests recompute everything the
straightforward way, on tiny random models: a full forward of the policy (all positions, full-vocabulary
``log_softmax`` then ``gather``), the value head / value model, the reference (a frozen copy or the policy with its
LoRA adapters disabled), and the rewards. Tolerance: ``atol = rtol = 1e-5`` in float32 (the two paths run the same
kernels on differently shaped inputs, so they may differ by rounding only).
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from conftest import small_span_ppo_config
from trl_text2grad import Critique
from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {"atol": 1e-5, "rtol": 1e-5}
TEMPERATURE = 0.7


def _args(tmp_path, **overrides) -> SpanPPOConfig:
    # learning rate 0: the weights stay those of the rollout, so it can be recomputed afterwards
    settings = dict(learning_rate=0.0, temperature=TEMPERATURE)
    settings.update(overrides)
    return small_span_ppo_config(tmp_path / "out", **settings)


def _dataset(n: int = 4) -> Dataset:
    return Dataset.from_dict({"prompt": [f"Say something about the number {i}:" for i in range(n)]})


def first_word_critic(prompts, responses, **context):
    """Deterministic: the first 5 characters good, the last 3 poor (when the response is long enough)."""
    return [
        Critique("", good=[r[:5]] if r[:5].strip() else [], poor=[r[-3:]] if len(r) > 10 and r[-3:].strip() else [])
        for r in responses
    ]


def _randomise_lora(model: torch.nn.Module, scale: float = 0.3) -> None:
    """Non-zero LoRA B matrices: the policy then differs from the adapter-disabled reference."""
    generator = torch.Generator().manual_seed(5)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def _straightforward(trainer: SpanPPOTrainer, rollout: dict) -> dict[str, torch.Tensor]:
    """Log-probs, values and reference log-probs by full forwards (no logits_to_keep, no selective log-softmax)."""
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    policy = wrapper.policy
    responses = rollout["responses"]
    length = responses.shape[1]
    input_ids = torch.cat([rollout["prompt_ids"], responses], dim=1)
    attention_mask = torch.cat([rollout["prompt_mask"], rollout["response_mask"]], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)

    def chosen_logprobs(logits: torch.Tensor) -> torch.Tensor:
        shifted = logits[:, -length - 1 : -1].float() / (TEMPERATURE + 1e-7)
        return torch.log_softmax(shifted, dim=-1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)

    with torch.no_grad():
        out = policy(**inputs, output_hidden_states=True)
        logprobs = chosen_logprobs(out.logits)
        if wrapper.v_head is not None:
            values = wrapper.v_head(out.hidden_states[-1][:, -length - 1 : -1]).squeeze(-1)
        else:
            value_model = wrapper.value_model
            hidden = getattr(value_model, value_model.base_model_prefix)(**inputs).last_hidden_state
            values = value_model.score(hidden[:, -length - 1 : -1]).squeeze(-1)
        if trainer.ref_model is None:
            with policy.disable_adapter():
                ref_logits = policy(**inputs).logits
        else:
            ref_logits = trainer.ref_model(**inputs).logits
        ref_logprobs = chosen_logprobs(ref_logits)
    return {"logprobs": logprobs, "values": values.float(), "ref_logprobs": ref_logprobs}


def _assert_close_on_mask(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    keep = mask.bool()
    assert keep.sum() > 0
    torch.testing.assert_close(actual[keep], expected[keep], **TOL, msg=lambda m: f"{name}: {m}")


def _build(tmp_path, smollm2_tokenizer, tiny_llama, variant: str, lora_scale: float = 0.3, **overrides):
    from conftest import build_tiny_llama

    peft_config = value_model = None
    if variant == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    if variant == "value_model":
        from transformers import LlamaForSequenceClassification

        config = copy.deepcopy(build_tiny_llama(smollm2_tokenizer).config)
        config.num_labels = 1
        torch.manual_seed(3)
        value_model = LlamaForSequenceClassification(config)
    trainer = SpanPPOTrainer(
        _args(tmp_path, **overrides),
        smollm2_tokenizer,
        tiny_llama(seed=1),
        None,
        first_word_critic,
        _dataset(),
        value_model=value_model,
        peft_config=peft_config,
    )
    if variant == "lora":
        _randomise_lora(trainer.model, lora_scale)
    return trainer


@pytest.mark.parametrize("variant", ["value_head", "lora", "value_model"])
def test_rollout_from_the_loss_forward_equals_the_straightforward_rollout(
    tmp_path, smollm2_tokenizer, tiny_llama, variant
):
    trainer = _build(tmp_path, smollm2_tokenizer, tiny_llama, variant)
    calls = {"rollout_forwards": 0}
    original_forward = trainer.model.forward

    def counting_forward(*args, **kwargs):
        calls["rollout_forwards"] += 1
        return original_forward(*args, **kwargs)

    trainer.model.forward = counting_forward
    trainer.train()  # one rollout, 2 PPO epochs of one micro-batch: the first epoch's forward is the rollout's
    trainer.model.forward = original_forward
    assert trainer.state.global_step == 2
    # policy forwards: 1 (rollout = epoch 1) + 1 (epoch 2), plus the reference (adapters disabled) for LoRA
    assert calls["rollout_forwards"] == (3 if variant == "lora" else 2)

    rollout = trainer.last_rollout["rollout"]
    mask = rollout["response_mask"]
    expected = _straightforward(trainer, rollout)
    for key in ("logprobs", "values", "ref_logprobs"):
        _assert_close_on_mask(rollout[key], expected[key], mask, key)
    if variant == "lora":  # the adapters matter: the policy is not the reference
        assert (rollout["logprobs"] - rollout["ref_logprobs"]).abs()[mask.bool()].max() > 1e-3

    # the trainer's own straightforward path (a separate no-grad forward) on the same responses gives the same numbers
    generated = {k: rollout[k] for k in ("rows", "prompts", "prompt_ids", "prompt_mask", "responses", "response_mask")}
    generated["prompts_truncated"] = rollout["prompts_truncated"]
    trainer.generate = lambda rows: generated
    plain = trainer.rollout(rollout["rows"])
    for key in ("logprobs", "values", "ref_logprobs"):
        _assert_close_on_mask(rollout[key], plain[key], mask, key)

    # rewards: scoring the responses again gives exactly the rollout's rewards and advantages
    scored = trainer.last_rollout["scored"]
    again = trainer.score(rollout)
    assert torch.equal(scored.span_rewards, again.span_rewards) and torch.equal(scored.scores, again.scores)
    assert (scored.span_rewards != 0).any()
    extra = trainer.compute_advantages(plain, again)
    torch.testing.assert_close(extra["advantages"], trainer.last_rollout["advantages"], **TOL)
    torch.testing.assert_close(extra["returns"], trainer.last_rollout["returns"], **TOL)


def test_first_epoch_ratio_is_exactly_one(tmp_path, smollm2_tokenizer, tiny_llama):
    """Old and new log-probs of the first PPO epoch come from the same forward: ratio 1 and approx. KL 0 exactly."""
    trainer = _build(tmp_path, smollm2_tokenizer, tiny_llama, "value_head", num_ppo_epochs=1, learning_rate=1e-3)
    trainer.train()
    log = next(entry for entry in trainer.state.log_history if "val/ratio" in entry)
    assert log["val/ratio"] == 1.0 and log["policy/approxkl_avg"] == 0.0 and log["policy/clipfrac_avg"] == 0.0


@pytest.mark.parametrize(
    ("kl_coef", "log_kl", "runs_reference"), [(0.0, False, False), (0.0, True, True), (0.05, False, True)]
)
def test_reference_forward_runs_only_when_needed(
    tmp_path, smollm2_tokenizer, tiny_llama, kl_coef, log_kl, runs_reference
):
    trainer = _build(
        tmp_path, smollm2_tokenizer, tiny_llama, "value_head", kl_coef=kl_coef, log_kl_without_penalty=log_kl
    )
    calls = []
    handle = trainer.ref_model.register_forward_hook(lambda module, args, output: calls.append(1))
    trainer.train()
    handle.remove()
    assert bool(calls) is runs_reference
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert ("objective/kl" in logged) is runs_reference
    rollout = trainer.last_rollout["rollout"]
    if not runs_reference:  # KL 0 by construction, and nothing else changes
        assert torch.equal(rollout["ref_logprobs"], rollout["logprobs"])
        assert float(trainer.last_rollout["kl"].abs().sum()) == 0.0
    else:
        expected = _straightforward(trainer, rollout)
        _assert_close_on_mask(rollout["ref_logprobs"], expected["ref_logprobs"], rollout["response_mask"], "ref")


# ----------------------------------------------------------------------------------------------------------------
# LoRA adapters merged for generation
# ----------------------------------------------------------------------------------------------------------------
def _bits(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().view(torch.int32) for k, v in model.state_dict().items() if v.dtype == torch.float32}


def test_merged_adapters_give_the_adapter_outputs_and_restore_the_base_bit_for_bit(smollm2_tokenizer, tiny_llama):
    from peft import LoraConfig, get_peft_model

    from trl_text2grad.ppo.merging import merged_lora_adapters

    model = get_peft_model(
        tiny_llama(seed=4), LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    )
    _randomise_lora(model, 0.001)  # trained-adapter sized: deltas ~4 % of the weights
    model.eval()
    ids = torch.randint(5, 500, (3, 9), generator=torch.Generator().manual_seed(0))
    before = _bits(model)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        for _ in range(3):  # repeated merges: no drift either
            with merged_lora_adapters(model) as merge:
                merged = model(input_ids=ids).logits
                changed = sum(int(not torch.equal(before[k], v.view(torch.int32))) for k, v in _bits(model).items())
            assert merge.exact and merge.layers == 14  # 7 linear layers x 2 decoder layers
            assert changed == merge.layers  # the base weights really held the adapters
            torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
            after = _bits(model)
            assert all(torch.equal(before[k], after[k]) for k in before)
        with model.disable_adapter():  # the reference is untouched too
            assert not torch.allclose(model(input_ids=ids).logits, unmerged)


def test_merged_adapters_leave_layers_whose_round_trip_is_mostly_inexact(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from trl_text2grad.ppo.merging import merged_lora_adapters

    model = get_peft_model(
        tiny_llama(seed=4), LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    )
    _randomise_lora(model, 0.001)
    before = _bits(model)
    with merged_lora_adapters(model, max_fixups=0.0) as merge:  # no fix-up allowed: no layer qualifies
        assert merge.layers == 0
    assert all(torch.equal(before[k], v) for k, v in _bits(model).items())


def test_trainer_with_merged_generation_samples_what_the_unmerged_policy_samples(
    tmp_path, smollm2_tokenizer, tiny_llama
):
    """Same seed, same rollout tokens with and without merging (to rounding of the sampling probabilities), and the
    frozen base weights are bit-identical after training."""
    responses = {}
    for merge in (False, True):
        trainer = _build(
            tmp_path / str(merge),
            smollm2_tokenizer,
            tiny_llama,
            "lora",
            lora_scale=0.001,
            merge_adapters_for_generation=merge,
            pack_weights_for_generation=False,  # packing would take precedence over merging
        )
        if merge:  # the adapters are small enough to be merged (not left unmerged for too many fix-ups)
            from trl_text2grad.ppo.merging import merged_lora_adapters

            with merged_lora_adapters(trainer.accelerator.unwrap_model(trainer.model).policy) as check:
                assert check.layers == 14
        base = trainer.accelerator.unwrap_model(trainer.model).policy.get_base_model()
        frozen = {k: v.clone() for k, v in _bits(base).items() if "lora_" not in k}
        trainer.train()
        responses[merge] = trainer.last_rollout["rollout"]["responses"]
        after = _bits(base)
        assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert torch.equal(responses[False], responses[True])


@pytest.mark.parametrize("variant", ["lora", "value_model"])
def test_trainer_with_packed_generation_weights_samples_what_the_plain_policy_samples(
    tmp_path, smollm2_tokenizer, tiny_llama, monkeypatch, variant
):
    """pack_weights_for_generation (the default on CPUs): the same seed gives the same rollout tokens, log-probs,
    values and rewards as sampling through the plain layers; the packed context really ran (LoRA folded in)."""
    import trl_text2grad.ppo.span_ppo_trainer as trainer_module
    from trl_text2grad.ppo.packed_weights import packed_linear_available, packed_linear_weights

    if not packed_linear_available():
        pytest.skip("this PyTorch build has no oneDNN")
    results = []

    def recording(model, **kwargs):
        context = packed_linear_weights(model, **kwargs)
        outer = context.__enter__()
        results.append(outer)
        return _Entered(context, outer)

    monkeypatch.setattr(trainer_module, "packed_linear_weights", recording)
    rollouts = {}
    for pack in (False, True):
        trainer = _build(
            tmp_path / str(pack), smollm2_tokenizer, tiny_llama, variant, pack_weights_for_generation=pack
        )
        assert trainer.packs_generation_weights(trainer.accelerator.unwrap_model(trainer.model).policy) == pack
        trainer.train()
        rollouts[pack] = {**trainer.last_rollout["rollout"], "rewards": trainer.last_rollout["rewards"]}
    assert len(results) == 1 and results[0].layers == 15
    assert results[0].lora_layers == (14 if variant == "lora" else 0)
    plain, packed = rollouts[False], rollouts[True]
    assert torch.equal(plain["responses"], packed["responses"])
    for key in ("logprobs", "values", "ref_logprobs", "rewards"):
        torch.testing.assert_close(packed[key], plain[key], **TOL, msg=lambda m, key=key: f"{key}: {m}")
    assert float(plain["rewards"].abs().sum()) > 0


class _Entered:
    """A context manager already entered (so the test can read what the packing context yielded)."""

    def __init__(self, context, value):
        self.context, self.value = context, value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


def test_a_rollout_without_usable_rewards_is_not_trained_on(tmp_path, smollm2_tokenizer, tiny_llama):
    """The shared forward already ran when the rewards turn out unusable: its graph is dropped, nothing is updated."""

    def dead_critic(prompts, responses, **context):
        return [None] * len(responses)

    trainer = SpanPPOTrainer(
        _args(tmp_path, learning_rate=1e-2, max_consecutive_failed_rollouts=0),
        smollm2_tokenizer,
        tiny_llama(seed=1),
        None,
        dead_critic,
        _dataset(),
        value_model=None,
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 2
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.state.log_history[0]["rollout/skipped"] == 1.0


def test_compiled_generation_samples_what_eager_generation_samples(tmp_path, smollm2_tokenizer, tiny_llama):
    """compile_generation=True (static cache, torch.compile'd decoding step, prompts left-padded to a multiple of
    64): the same seed gives the same rollout tokens as eager decoding, and the rollout's log-probs (from the
    unpadded forward) agree to 1e-5; the compiled step was really used."""
    rollouts = {}
    for compiled in (False, True):
        trainer = _build(tmp_path / str(compiled), smollm2_tokenizer, tiny_llama, "lora", compile_generation=compiled)
        trainer.train()
        rollouts[compiled] = trainer.last_rollout["rollout"]
        base = trainer.accelerator.unwrap_model(trainer.model).policy.get_base_model()
        assert hasattr(base, "_compiled_call") == compiled
    assert rollouts[True]["prompt_ids"].shape == rollouts[False]["prompt_ids"].shape  # the padding stays inside
    assert torch.equal(rollouts[False]["responses"], rollouts[True]["responses"])
    torch.testing.assert_close(rollouts[True]["logprobs"], rollouts[False]["logprobs"], atol=1e-5, rtol=0)


def test_static_cache_samples_what_the_dynamic_cache_samples(tmp_path, smollm2_tokenizer, tiny_llama, monkeypatch):
    """cache_implementation='static' (allocated once per generation, written in place): the same seed gives the
    same rollout tokens and log-probs as transformers' growing cache, and the static cache was really used."""
    from transformers.cache_utils import StaticCache

    used = []
    original_init = StaticCache.__init__

    def recording_init(self, *args, **kwargs):
        used.append(True)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(StaticCache, "__init__", recording_init)
    rollouts = {}
    for cache in (None, "static"):
        trainer = _build(tmp_path / str(cache), smollm2_tokenizer, tiny_llama, "lora", cache_implementation=cache)
        trainer.train()
        rollouts[cache] = trainer.last_rollout["rollout"]
        assert bool(used) == (cache == "static")
    assert torch.equal(rollouts[None]["responses"], rollouts["static"]["responses"])
    torch.testing.assert_close(rollouts["static"]["logprobs"], rollouts[None]["logprobs"], **TOL)


def test_unknown_cache_implementation_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="cache_implementation must be None or one of"):
        _args(tmp_path, cache_implementation="growing")


def test_compiled_generation_is_refused_with_a_quantized_policy(tmp_path, smollm2_tokenizer, tiny_llama):
    from peft import LoraConfig

    model = tiny_llama(seed=1)
    model.is_loaded_in_4bit = True  # what _is_quantized reads
    with pytest.raises(ValueError, match="compile_generation=True .* quantized"):
        SpanPPOTrainer(
            _args(tmp_path, compile_generation=True),
            smollm2_tokenizer,
            model,
            None,
            first_word_critic,
            _dataset(),
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
        )
