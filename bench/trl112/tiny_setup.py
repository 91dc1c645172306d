"""Deterministic tiny PPO setup shared by the trl 1.12 reference harness and our side of the parity test.

This file runs in BOTH virtual environments (ours and the trl==1.12.0 one), so it only imports ``torch`` and
``transformers`` (the same transformers version is pinned in both, see ``scripts/make_trl112_venv.sh``).

``build_tiny_models(out_dir, tokenizer_path, seed)`` writes ``policy/``, ``value/`` and ``reward/`` (random tiny Llama
models built from configs with a fixed seed) plus the tokenizer, so that both trainers load byte-identical weights.
``make_prompts(tokenizer, n)`` gives the fixed prompt set (plain text, no chat template: trl 1.12 masks every
pad-token id in a prompt, and SmolLM2's pad token ``<|im_end|>`` would appear in chat-templated prompts).
"""

from __future__ import annotations

import json
import os

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

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


def tiny_config(vocab_size: int, pad_token_id: int, **overrides) -> LlamaConfig:
    """A 2-layer Llama config small enough to train in milliseconds on CPU."""
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        pad_token_id=pad_token_id,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        num_labels=1,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def load_tokenizer(path: str):
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_tiny_models(out_dir: str, tokenizer_path: str, seed: int = 0, **config_overrides) -> dict[str, str]:
    """Create policy/value/reward tiny models with fixed seeds and save them (float32, safetensors).

    Returns a dict of the saved paths (``policy``, ``value``, ``reward``, ``tokenizer``).
    """
    tokenizer = load_tokenizer(tokenizer_path)
    config = tiny_config(len(tokenizer), tokenizer.pad_token_id, **config_overrides)
    paths = {name: os.path.join(out_dir, name) for name in ("policy", "value", "reward", "tokenizer")}
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(paths["policy"])
    torch.manual_seed(seed + 1)
    LlamaForSequenceClassification(config).save_pretrained(paths["value"])
    torch.manual_seed(seed + 2)
    reward = LlamaForSequenceClassification(config)
    with torch.no_grad():  # make the scores spread over a useful range
        reward.score.weight.mul_(10.0)
    reward.save_pretrained(paths["reward"])
    tokenizer.save_pretrained(paths["tokenizer"])
    with open(os.path.join(out_dir, "setup.json"), "w") as f:
        json.dump({"seed": seed, "config": config.to_dict()}, f, default=str)
    return paths


def make_prompts(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(n)]
