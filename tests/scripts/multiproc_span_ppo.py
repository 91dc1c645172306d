"""Tiny SpanPPOTrainer run for ``tests/test_multiprocess.py``; launched with ``accelerate launch`` (2 CPU processes).

Every rank writes ``rank<k>.json`` to ``--out``: world size, torch.distributed backend, the prompts it rolled out per
update, the logged metrics, and fingerprints of the trainable parameters before and after training (DDP must keep
them identical on all ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch


def load_tokenizer():
    from trl_text2grad.models import _gguf_location, cache_dir, load_default_tokenizer

    if (cache_dir() / "smollm2-135m-instruct" / "config.json").is_file():
        return load_default_tokenizer()
    from transformers import AutoTokenizer

    folder, filename = _gguf_location()
    return AutoTokenizer.from_pretrained(folder, gguf_file=filename, padding_side="left")


def span_critic(prompts, responses, **context):
    """First half of every response good, the rest neutral."""
    return [[(0, max(1, len(text) // 2), 1.0)] if text else [] for text in responses]


def fingerprint(module: torch.nn.Module) -> list[float]:
    return [float(p.detach().double().sum()) for p in module.parameters() if p.requires_grad]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--checkpoint-dir", default=None, help="shared output_dir; a checkpoint after every step")
    parser.add_argument("--resume", action="store_true", help="resume_from_checkpoint=True (needs --checkpoint-dir)")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    cli = parser.parse_args()

    from accelerate import PartialState
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
    from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer

    # No use_cpu anywhere: on a machine without an accelerator SpanPPOConfig selects the CPU itself, and the
    # PartialState created by its __post_init__ is the 2-process gloo group that PartialState() returns below.
    probe = SpanPPOConfig(output_dir=tempfile.mkdtemp(prefix="multiproc_probe_"), report_to=[])
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    assert probe.use_cpu != deepspeed, "use_cpu must be automatic without an accelerator, and off under DeepSpeed"
    state = PartialState()
    torch.set_num_threads(1)
    tokenizer = load_tokenizer()
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    policy = LlamaForCausalLM(config)
    per_device, world = 2, state.num_processes
    dataset = Dataset.from_dict({"prompt": [f"Question {i}: name a number." for i in range(8)]})
    args = SpanPPOConfig(
        output_dir=cli.checkpoint_dir or tempfile.mkdtemp(prefix=f"multiproc_rank{state.process_index}_"),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cli.gradient_accumulation_steps,
        num_ppo_epochs=1,
        num_mini_batches=1,
        response_length=6,
        total_episodes=cli.updates * per_device * cli.gradient_accumulation_steps * world,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="steps" if cli.checkpoint_dir else "no",
        save_steps=1,
        disable_tqdm=True,
        seed=0,
        reward_mode="span",
    )
    trainer = SpanPPOTrainer(args, tokenizer, policy, None, span_critic, dataset, value_model=None)
    before = fingerprint(trainer.model)
    seen: list[list[str]] = []
    original_rollout = trainer.rollout

    def recording_rollout(rows):
        seen.append([str(row.get("prompt")) for row in rows])
        return original_rollout(rows)

    trainer.rollout = recording_rollout
    trainer.train(resume_from_checkpoint=True if cli.resume else None)
    after = fingerprint(trainer.model)
    backend = str(state.backend) if torch.distributed.is_initialized() else None
    result = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "backend": backend,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "dataloader_batches": len(trainer.get_train_dataloader()),
        "prompts": seen,
        "log_history": trainer.state.log_history,
        "params_before": before,
        "params_after": after,
    }
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:  # the DeepSpeed config accelerate generated (its "auto" values filled in by the Trainer)
        config = plugin.deepspeed_config
        result["deepspeed"] = {
            "zero_stage": config["zero_optimization"]["stage"],
            "train_batch_size": config["train_batch_size"],
            "train_micro_batch_size_per_gpu": config["train_micro_batch_size_per_gpu"],
            "gradient_accumulation_steps": config["gradient_accumulation_steps"],
            "gradient_clipping": config.get("gradient_clipping"),
            "engine_world_size": trainer.model_wrapped.world_size,
            "engine_train_batch_size": trainer.model_wrapped.train_batch_size(),
        }
    os.makedirs(cli.out, exist_ok=True)
    with open(os.path.join(cli.out, f"rank{state.process_index}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    from process_group import run_and_tear_down

    run_and_tear_down(main)
