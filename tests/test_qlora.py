"""QLoRA through the ``ppo`` script: ``--load_in_4bit`` (TRL's ModelConfig) on a tiny model, on the CPU.

bitsandbytes (the ``quantization`` extra, also in ``dev``) runs nf4 4-bit loading, forward and the LoRA backward on
the CPU, so this runs in CI; without bitsandbytes the tests are skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Llama (+ tokenizer) whose linear layers are at least 64 wide, so that bitsandbytes' CPU
    inference repacking of 4-bit weights (which blocks gradients; the trainer switches it off) would apply here."""
    from conftest import build_tiny_llama

    path = tmp_path_factory.mktemp("tiny_policy_4bit")
    build_tiny_llama(smollm2_tokenizer, hidden_size=64, intermediate_size=128, num_key_value_heads=4).save_pretrained(
        path
    )
    smollm2_tokenizer.save_pretrained(path)
    return str(path)


def _parse(tiny_model_dir: str, out: Path, *extra: str):
    from trl_text2grad.cli.ppo import make_parser

    return make_parser().parse_args_and_config(
        [
            "--config",
            str(ROOT / "recipes/humaneval_smollm2/ppo.yaml"),
            "--model_name_or_path",
            tiny_model_dir,
            "--output_dir",
            str(out),
            "--total_episodes",
            "4",
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "1",
            "--num_ppo_epochs",
            "2",
            "--response_length",
            "8",
            "--max_train_samples",
            "4",
            "--save_strategy",
            "no",
            "--learning_rate",
            "1e-2",
            "--dtype",
            "float32",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            *CPU,
            *extra,
        ]  # fmt: skip
    )


def test_load_in_4bit_trains_lora_adapters_on_a_frozen_nf4_base(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    from trl_text2grad.cli.ppo import run

    script_args, training_args, model_args = _parse(tiny_model_dir, tmp_path / "ppo", "--load_in_4bit")
    assert model_args.load_in_4bit and model_args.use_peft
    trainer = run(script_args, training_args, model_args)

    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    base = policy.get_base_model()
    quantized = [m for m in base.modules() if isinstance(m, Linear4bit)]
    assert quantized and base.is_loaded_in_4bit  # the frozen base is 4-bit
    assert all(m.weight.quant_state.quant_type == "nf4" for m in quantized)
    assert trainer.ref_model is None  # the reference is the policy with its adapters off: no second copy
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("v_head") for n in trainable)
    lora_b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: the adapters trained
    logs = [h for h in trainer.state.log_history if "objective/kl" in h]
    assert len(logs) == 2
    assert logs[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # first rollout: policy == reference
    assert all(torch.isfinite(torch.tensor(h["loss/policy_avg"])) for h in logs)
    assert (tmp_path / "ppo" / "adapter_model.safetensors").is_file()


def test_load_in_4bit_without_peft_is_a_clear_error(tiny_model_dir, tmp_path):
    from trl_text2grad.cli.ppo import load_policy

    _, training_args, model_args = _parse(tiny_model_dir, tmp_path / "ppo", "--load_in_4bit", "--use_peft", "false")
    with pytest.raises(ValueError, match="--use_peft"):
        load_policy(model_args, training_args)


def test_quantized_policy_without_adapters_is_refused_by_the_trainer(tiny_model_dir, tmp_path, smollm2_tokenizer):
    pytest.importorskip("bitsandbytes")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from trl_text2grad import SpanPPOConfig, SpanPPOTrainer

    policy = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map={"": "cpu"}
    )
    args = SpanPPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[])
    prompts = Dataset.from_dict({"prompt": ["a", "b"]})
    with pytest.raises(ValueError, match="peft_config"):
        SpanPPOTrainer(args, smollm2_tokenizer, policy, None, lambda p, r, **c: [0.0] * len(r), prompts, None)
