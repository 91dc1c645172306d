"""Our side of the parity test with trl 1.12 (``tests/test_trl112_parity.py``): ``SpanPPOTrainer`` run in-process
on the tiny models and prompts of the trl 1.12 harness (``bench/trl112/run_trl112_ppo.py --build-tiny``, which runs
in the trl 1.12 venv and writes ``policy/``, ``value/``, ``reward/`` and ``tokenizer/``).

The prompts must be the harness's (``bench/trl112/tiny_setup.py``'s ``PROMPTS``); the parity test compares the
rollouts token by token, so a difference between the two lists fails it. ``bench/ppo_step.py`` keeps its own
runner (with timings) for the benchmark: tests never import ``bench/``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed

from trl_text2grad.ppo.parity import Trl112ParityConfig
from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig
from trl_text2grad.ppo.span_ppo_trainer import SpanPPOTrainer

__all__ = ["PROMPTS", "load_tokenizer", "make_prompts", "run_span_ppo"]

PROMPTS = [
    "Write a function that adds two numbers.",
    "Explain recursion briefly",
    "def fib(n):",
    "Summarise the plot of Hamlet in one sentence, please.",
    "What is the capital of France?",
    "Sort a list",
    "Translate 'good morning' to German and French.",
    "Give me three prime numbers",
    "How do I reverse a string in Python?",
    "Name a colour.",
    "Why is the sky blue?",
    "List two sorting algorithms and their complexity.",
]


def load_tokenizer(path: str | Path):
    """The tokenizer as both sides load it: left padding, EOS as pad when there is none."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def make_prompts(n: int) -> list[str]:
    """The first ``n`` prompts of the fixed list (cycled), plain text as the harness uses them."""
    return [PROMPTS[i % len(PROMPTS)] for i in range(n)]


def run_span_ppo(
    models_dir: Path,
    output_dir: Path,
    num_prompts: int = 8,
    num_updates: int = 3,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    num_mini_batches: int = 1,
    num_ppo_epochs: int = 2,
    response_length: int = 12,
    temperature: float = 0.7,
    learning_rate: float = 3e-4,
    kl_coef: float = 0.05,
    seed: int = 42,
    **extra_config,
) -> dict:
    """``SpanPPOTrainer(reward_mode="scalar")`` with the harness's settings and argmax sampling; returns
    ``{"updates": [logged metrics per update], "rollouts": [{"queries", "responses"} per update]}``.

    What trl 1.12 hard-wires is set explicitly: fp32, no gradient clipping, no gradient checkpointing and a constant
    learning rate (it steps its scheduler once per update, the ``Trainer`` once per optimizer step).
    """
    models_dir = Path(models_dir)
    tokenizer = load_tokenizer(models_dir / "tokenizer")
    set_seed(seed)
    policy = AutoModelForCausalLM.from_pretrained(str(models_dir / "policy"), dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(str(models_dir / "policy"), dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(
        str(models_dir / "value"), num_labels=1, dtype=torch.float32
    )
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        str(models_dir / "reward"), num_labels=1, dtype=torch.float32
    )
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in make_prompts(num_prompts)]})
    # TRL 1.12 reproduction switches (trl112_*) live in the parity config, not in the documented SpanPPOConfig
    config_class = Trl112ParityConfig if any(k.startswith("trl112_") for k in extra_config) else SpanPPOConfig
    config = config_class(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_mini_batches=num_mini_batches,
        num_ppo_epochs=num_ppo_epochs,
        total_episodes=num_updates * batch_size * gradient_accumulation_steps,
        response_length=response_length,
        temperature=temperature,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        kl_coef=kl_coef,
        reward_mode="scalar",
        seed=seed,
        report_to=[],
        logging_steps=num_ppo_epochs * num_mini_batches,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        max_grad_norm=0.0,
        gradient_checkpointing=False,
        num_sample_generations=0,
        **extra_config,
    )
    trainer = SpanPPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
    )
    rollouts: list[dict] = []
    original_rollout = trainer.rollout

    def recording_rollout(rows):
        out = original_rollout(rows)
        rollouts.append({"queries": out["prompt_ids"].tolist(), "responses": out["responses"].tolist()})
        return out

    def argmax_multinomial(probs, num_samples, *args, **kwargs):
        # identical rollouts on both sides: "sample" the most probable token of the tempered distribution
        if num_samples != 1:
            raise RuntimeError("argmax sampling only supports num_samples=1")
        return probs.argmax(dim=-1, keepdim=True)

    trainer.rollout = recording_rollout
    original_multinomial = torch.multinomial
    torch.multinomial = argmax_multinomial
    try:
        trainer.train()
    finally:
        torch.multinomial = original_multinomial
    updates = [log for log in trainer.state.log_history if "loss/policy_avg" in log]
    return {"updates": updates, "rollouts": rollouts}
