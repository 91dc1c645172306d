"""Tiny training runs for ``tests/test_crash_resume.py``: train, optionally pause inside a checkpoint write, resume.

Each ``--runs`` entry is ``<kind>`` (``ppo-full``, ``ppo-lora``, ``ppo-vmodel``, ``reward``); every run writes into
``<out>/<kind>/`` and, when it finishes, its final state to ``<out>/<kind>.result.pt``: every trainable parameter,
the KL coefficient (PPO) and the Python / NumPy / torch RNG states. ``--resume`` passes
``resume_from_checkpoint=True``. ``--pause <stage>:<step>`` blocks the save of ``checkpoint-<step>`` at ``stage`` and
writes ``<out>/PAUSED`` (the test then kills the process with SIGKILL):

- ``after_weights``: the model is written, the optimizer, RNG states and ``trainer_state.json`` are not;
- ``before_extra``: everything of the ``Trainer`` is written, the trainer's own state file is not (PPO's rollout state);
- ``before_marker``: everything is written and flushed, the completion marker is not.

``--pre-seed N`` draws from every global RNG with seed ``N`` before anything is built (a same-seed run must not
depend on it).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import numpy as np
import torch

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The function returns the sum of the two numbers, but it does not handle negative inputs.",
    "This response is correct and well explained; however, the variable names are unclear.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and words: alpha beta gamma delta epsilon.",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|pad|>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 5, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


def llama_config(tok, **overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    settings.update(overrides)
    return LlamaConfig(**settings)


def critic(prompts, responses, **context):
    """Good quote: the first 5 characters; poor quote: the last 3 (when long enough)."""
    from trl_text2grad import Critique

    out = []
    for text in responses:
        good = [text[:5]] if text[:5].strip() else []
        poor = [text[-3:]] if len(text) > 10 and text[-3:].strip() else []
        out.append(Critique("critique", good=good, poor=poor))
    return out


def build_ppo(kind: str, output_dir: str, tok):
    from datasets import Dataset
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
    from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer

    torch.manual_seed(1234)  # the same starting weights in every process
    policy = LlamaForCausalLM(llama_config(tok))
    value_model = LlamaForSequenceClassification(llama_config(tok, num_labels=1)) if kind == "ppo-vmodel" else None
    peft_config = None
    if kind == "ppo-lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    # 8 prompts, 4 per rollout; 2 PPO epochs x 2 mini-batches = 4 steps per rollout; 3 rollouts = 12 steps
    args = SpanPPOConfig(
        output_dir=output_dir, per_device_train_batch_size=2, gradient_accumulation_steps=2, num_ppo_epochs=2,
        num_mini_batches=2, response_length=6, total_episodes=12, learning_rate=1e-3, logging_steps=1, report_to=[],
        bf16=False, use_cpu=True, gradient_checkpointing=False, save_strategy="steps", save_steps=1,
        save_total_limit=3, stop_token="eos", adaptive_kl=True, kl_target=0.01, disable_tqdm=True, seed=7,
        num_sample_generations=0,
    )  # fmt: skip
    data = Dataset.from_dict(
        {"prompt": [f"Question {i}: add {i} and {i + 1}." for i in range(8)], "k": list(range(8))}
    )
    return SpanPPOTrainer(args, tok, policy, None, critic, data, value_model, peft_config=peft_config)


def build_reward(output_dir: str, tok):
    from datasets import Dataset
    from transformers import LlamaForCausalLM

    from trl_text2grad.reward.span_reward_config import SpanRewardConfig
    from trl_text2grad.reward.span_reward_trainer import SpanRewardTrainer

    rows = []
    for i in range(12):
        buggy = i % 2 == 0
        response = f"def add(a, b):\n    return a {'-' if buggy else '+'} b  # {i}"
        quote = f"return a {'-' if buggy else '+'} b"
        rows.append({"prompt": f"Write add number {i}.", "response": response, "critique": "Check the operator.",
                     "good_spans": [] if buggy else [quote], "poor_spans": [quote] if buggy else []})  # fmt: skip
    torch.manual_seed(1234)
    backbone = LlamaForCausalLM(llama_config(tok))
    args = SpanRewardConfig(
        output_dir, model_form="token_head", max_steps=6, per_device_train_batch_size=4, learning_rate=5e-3,
        report_to=[], logging_steps=1, save_strategy="steps", save_steps=1, save_total_limit=2, max_length=64,
        use_cpu=True, seed=5, disable_tqdm=True,
    )  # fmt: skip
    return SpanRewardTrainer(backbone, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def install_pause(trainer, out: str, stage: str, step: int) -> None:
    """Block the save of checkpoint-<step> at ``stage`` (see the module docstring)."""
    import trl_text2grad.checkpoints as checkpoints

    def pause():
        if trainer.state.global_step == step:
            with open(os.path.join(out, "PAUSED"), "w") as f:
                f.write(str(step))
            time.sleep(600)

    if stage == "after_weights":
        original = trainer._save_optimizer_and_scheduler

        def patched(output_dir):
            pause()
            return original(output_dir)

        trainer._save_optimizer_and_scheduler = patched
    elif stage == "before_extra":
        original_extra = trainer.save_checkpoint_extra_state

        def patched_extra(checkpoint_dir):
            pause()
            return original_extra(checkpoint_dir)

        trainer.save_checkpoint_extra_state = patched_extra
    elif stage == "before_marker":
        original_marker = checkpoints.write_completion_marker

        def patched_marker(path, global_step):
            pause()
            return original_marker(path, global_step)

        checkpoints.write_completion_marker = patched_marker
    else:
        raise SystemExit(f"unknown pause stage {stage!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause", default=None)
    parser.add_argument("--pre-seed", type=int, default=None)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    if cli.pre_seed is not None:
        random.seed(cli.pre_seed)
        np.random.seed(cli.pre_seed)
        torch.manual_seed(cli.pre_seed)
        random.random(), np.random.rand(), torch.rand(3)
    tok = make_tokenizer()
    for kind in cli.runs.split(","):
        output_dir = os.path.join(cli.out, kind)
        trainer = build_reward(output_dir, tok) if kind == "reward" else build_ppo(kind, output_dir, tok)
        if cli.pause:
            stage, step = cli.pause.split(":")
            install_pause(trainer, cli.out, stage, int(step))
        trainer.train(resume_from_checkpoint=True if cli.resume else None)
        result = {
            "global_step": trainer.state.global_step,
            "params": {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters() if p.requires_grad},
            "kl_coef": getattr(trainer, "kl_coef", None),
            "python_random": random.getstate(),
            "numpy_random": np.random.get_state()[1].tolist(),
            "torch_random": torch.get_rng_state(),
        }
        torch.save(result, os.path.join(cli.out, f"{kind}.result.pt"))
    print("done", file=sys.stderr)


if __name__ == "__main__":
    from process_group import run_and_tear_down

    run_and_tear_down(main)
