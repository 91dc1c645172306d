"""SpanRLOOTrainer on a tiny random Llama: exact equality with TRL's RLOOTrainer without a span term, the
token-level span surrogate against an independent computation, and end-to-end training."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from trl import RLOOConfig, RLOOTrainer

from trl_text2grad import Critique
from trl_text2grad.grpo.advantages import group_span_advantages, rloo_span_loss
from trl_text2grad.rloo import SpanRLOOConfig, SpanRLOOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

G = 2


def _dataset(n: int = 4) -> Dataset:
    return Dataset.from_dict({"prompt": [f"Answer number {i}:" for i in range(n)], "task_id": list(range(n))})


def _settings(tmp_path, **overrides) -> dict:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=G,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        beta=0.0,
    )
    settings.update(overrides)
    return settings


def length_reward(prompts, completions, completion_ids, **kwargs):
    return [float(len(c) % 5) - 2.0 + 0.25 * i for i, c in enumerate(completions)]


def prefix_spans(prompts, completions, completion_ids, **kwargs):
    """Spans only: the first 4 characters, poor on even rows, good on odd rows."""
    return [[(0, min(4, len(c)), 1.0 if i % 2 else -1.0)] for i, c in enumerate(completions)]


def _score(trainer, rows, seed=123):
    trainer.model.train()
    torch.manual_seed(seed)
    return trainer._generate_and_score_completions([dict(r) for r in rows for _ in range(G)])


def _loss_and_grads(trainer, batch):
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _pair(tmp_path, tokenizer, model_dir, ours_reward, **overrides):
    theirs = RLOOTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=RLOOConfig(**_settings(tmp_path, **{k: v for k, v in overrides.items() if k != "span_advantage_weight"})),
        processing_class=tokenizer,
        train_dataset=_dataset(),
    )
    ours = SpanRLOOTrainer(
        model=model_dir,
        reward_funcs=ours_reward,
        args=SpanRLOOConfig(**_settings(tmp_path, **overrides)),
        processing_class=tokenizer,
        train_dataset=_dataset(),
    )
    return theirs, ours


@pytest.mark.parametrize("overrides", [{}, {"beta": 0.05, "normalize_advantages": True}], ids=["plain", "kl-norm"])
@pytest.mark.parametrize("span_case", ["floats", "weight0"])
def test_equals_trl_rloo_without_span_term(tmp_path, smollm2_tokenizer, tiny_model_dir, overrides, span_case):
    """Same weights, seed and generations: with float rewards (or spans at weight 0) the span term is exactly zero
    and the loss and every gradient equal TRL's RLOOTrainer bit for bit (the span surrogate still runs)."""

    def with_spans(prompts, completions, completion_ids, **kwargs):
        floats = length_reward(prompts, completions, completion_ids)
        return [(f, [(0, len(c), -1.0)]) for f, c in zip(floats, completions)]

    if span_case == "floats":
        theirs, ours = _pair(tmp_path, smollm2_tokenizer, tiny_model_dir, length_reward, **overrides)
    else:
        theirs, ours = _pair(
            tmp_path, smollm2_tokenizer, tiny_model_dir, with_spans, span_advantage_weight=0.0, **overrides
        )
    rows = list(_dataset(2))
    batch_theirs, batch_ours = _score(theirs, rows), _score(ours, rows)
    assert torch.equal(batch_theirs["completion_ids"], batch_ours["completion_ids"])
    assert batch_theirs["advantages"].abs().sum() > 0
    assert torch.equal(batch_ours["advantages"], batch_theirs["advantages"])
    assert not batch_ours["span_advantages"].any()
    loss_theirs, grads_theirs = _loss_and_grads(theirs, batch_theirs)
    loss_ours, grads_ours = _loss_and_grads(ours, batch_ours)
    assert ours._metrics["train"]["span/policy_loss"]  # the token-level term ran (and added exactly zero)
    assert torch.equal(loss_ours, loss_theirs)
    assert grads_ours.keys() == grads_theirs.keys() and grads_ours
    for name, grad in grads_theirs.items():
        assert torch.equal(grads_ours[name], grad), name


def test_span_term_adds_the_token_level_surrogate(tmp_path, smollm2_tokenizer, tiny_model_dir):
    """With spans, the loss is TRL's RLOO loss on the same batch plus the span surrogate computed independently
    (its own forward pass and the span rewards recomputed from the critic's character spans)."""
    theirs, ours = _pair(tmp_path, smollm2_tokenizer, tiny_model_dir, prefix_spans, span_advantage_weight=0.5)
    rows = list(_dataset(2))
    batch = _score(ours, rows)
    span_term = batch["span_advantages"]
    assert span_term.any() and (span_term >= -0.5).all() and (span_term <= 0.5).all()
    # rows 0, 2 are poor (negative term), rows 1, 3 good (positive)
    assert (span_term[0::2] <= 0).all() and (span_term[1::2] >= 0).all()
    assert torch.equal(span_term, group_span_advantages(span_term / 0.5, batch["completion_mask"], G, 0.5))

    loss_ours, grads_ours = _loss_and_grads(ours, batch)
    # independent: TRL's loss on the same batch (weights equal, nothing trained yet) + the surrogate by hand
    theirs.current_gradient_accumulation_steps = 1
    theirs.model.train()
    theirs.model.zero_grad(set_to_none=True)
    trl_loss = theirs.compute_loss(theirs.model, {k: v for k, v in batch.items() if k != "span_advantages"})
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logits = theirs.model(input_ids=ids, attention_mask=attention).logits[
        :, -batch["completion_ids"].shape[1] - 1 : -1
    ]
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    mask = batch["completion_mask"]
    log_ratio = (logps * mask).sum(1) - batch["old_logps"]
    extra = rloo_span_loss(logps, log_ratio, span_term, mask, theirs.epsilon_low, theirs.epsilon_high).mean()
    total = trl_loss + extra
    total.backward()
    assert torch.allclose(loss_ours, total.detach(), atol=1e-5)
    for name, param in theirs.model.named_parameters():
        if param.grad is not None:
            assert torch.allclose(grads_ours[name], param.grad, rtol=1e-4, atol=1e-6), name
    # and the span term really changes the update
    assert not torch.allclose(extra, torch.zeros(()))


def test_trains_end_to_end(tmp_path, smollm2_tokenizer, tiny_llama):
    def critic(prompts, completions, completion_ids, **kwargs):
        return [
            Critique("", good=[c[:3]] if c[:3].strip() else [], poor=[]) if i % 2 else None
            for i, c in enumerate(completions)
        ]

    model = tiny_llama()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = SpanRLOOTrainer(
        model=model,
        reward_funcs=[critic, length_reward],
        args=SpanRLOOConfig(**_settings(tmp_path, heatmap_every_n_steps=1)),
        processing_class=smollm2_tokenizer,
        train_dataset=_dataset(),
    )
    trainer.train()
    assert sum(int(not torch.equal(a, b)) for a, b in zip(before, model.parameters())) > 0
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    for entry in logged:
        assert math.isfinite(entry["loss"]) and math.isfinite(entry["span/policy_loss"])
        assert entry["span/critic_failures"] == 2.0  # the two None outputs per batch of 4
    assert (tmp_path / "out" / "heatmaps").is_dir()


def test_plain_rloo_config_is_accepted(tmp_path, smollm2_tokenizer, tiny_llama):
    trainer = SpanRLOOTrainer(
        model=tiny_llama(),
        reward_funcs=length_reward,
        args=RLOOConfig(**_settings(tmp_path)),
        processing_class=smollm2_tokenizer,
        train_dataset=_dataset(),
    )
    assert isinstance(trainer.args, SpanRLOOConfig) and trainer.args.span_advantage_normalization == "group"
    with pytest.raises(ValueError, match="fuzzy_threshold"):
        SpanRLOOConfig(**_settings(tmp_path, fuzzy_threshold=120))
