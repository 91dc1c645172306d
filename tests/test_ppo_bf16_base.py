"""LoRA on a bfloat16 base, the recipes' ``dtype: bfloat16`` setting: ``SpanPPOTrainer`` trains the fp32 adapters and
the value head, leaves the frozen bf16 base (also the reference policy) untouched, and logs finite metrics."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from conftest import small_span_ppo_config
from trl_text2grad import Critique
from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _critic(prompts, responses, **context):
    return [
        Critique("", good=[r[:5]] if r[:5].strip() else [], poor=[r[-3:]] if len(r) > 10 else []) for r in responses
    ]


def test_lora_on_a_bf16_base_trains_the_adapters_and_keeps_the_base(tmp_path, tiny_llama, smollm2_tokenizer):
    peft = pytest.importorskip("peft")
    model = tiny_llama().to(torch.bfloat16)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = small_span_ppo_config(tmp_path / "out", total_episodes=8, learning_rate=1e-2)
    trainer = SpanPPOTrainer(
        args=config,
        processing_class=smollm2_tokenizer,
        model=model,
        ref_model=None,
        reward_model=_critic,
        train_dataset=Dataset.from_dict({"prompt": [f"Say something about {i}:" for i in range(8)]}),
        peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert any("lora_B" in n for n in trainable) and any("v_head" in n for n in trainable)
    lora_b_before = {n: p.detach().clone() for n, p in trainable.items() if "lora_B" in n}
    trainer.train()

    updates = [log for log in trainer.state.log_history if "loss/policy_avg" in log]
    assert len(updates) == 2
    for log in updates:
        for key in ("loss/policy_avg", "loss/value_avg", "objective/kl", "policy/approxkl_avg"):
            assert math.isfinite(log[key]), (key, log)
    assert any(not torch.equal(p, lora_b_before[n]) for n, p in trainable.items() if n in lora_b_before)
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    for name, parameter in policy.named_parameters():
        if "lora_" in name:
            continue
        original = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert parameter.dtype == torch.bfloat16, name
        assert torch.equal(parameter, base_before[original]), name
