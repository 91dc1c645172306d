"""Rollout decoding speed against the machine's memory-bandwidth bound.

    python bench/generation.py                                   # SmolLM2-135M, batch 8, 32 new tokens
    python bench/generation.py --batch 8 --new-tokens 64 --repeats 3 --threads 2

Batched decoding of a small model on a CPU is memory-bound: every decoding step reads all the weights once, so
``decode steps/s <= copy bandwidth / parameter bytes``. The script measures the copy bandwidth (a large tensor copy:
read + write, the best of several rounds), times ``generate`` with greedy decoding (no early stop: exactly
``new_tokens`` steps) for the plain model, for the model with unmerged LoRA adapters (r=16 on every linear layer,
the rollout configuration the docs recommend) and with the adapters merged into the weights
(``trl_text2grad.ppo.merging.merged_lora_adapters``: exact restore of the base weights; what
``SpanPPOTrainer(merge_adapters_for_generation=True)`` does around each rollout's generation), and prints decode
tokens/s, steps/s and the fraction of the bound. Times exclude the prompt's prefill (a 1-token generation is timed
separately and subtracted). The merged row also gives the seconds one merge + restore costs, paid once per rollout.
The packed rows decode as ``SpanPPOConfig(pack_weights_for_generation=True)`` does on a CPU (the default): every
linear layer on oneDNN with a pre-packed copy of its weight (``trl_text2grad.ppo.packed_weights``), LoRA adapters
folded into the copies; their row gives the seconds packing costs, paid once per rollout (skipped without oneDNN).
``--compile`` adds the plain and merged models decoding as ``SpanPPOConfig(compile_generation=True)`` does (static
KV cache, ``torch.compile``d step); their compilation happens in the warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import time

import torch
from peft import LoraConfig, get_peft_model

from trl_text2grad.models import load_default_model, load_default_tokenizer
from trl_text2grad.ppo.merging import merged_lora_adapters
from trl_text2grad.ppo.packed_weights import packed_linear_available, packed_linear_weights


def copy_bandwidth_gbs(megabytes: int = 512, rounds: int = 5) -> float:
    """Best read+write bandwidth of a ``megabytes`` float32 tensor copy, in GB/s (bytes read + bytes written)."""
    source = torch.empty(megabytes * 1024 * 1024 // 4, dtype=torch.float32).uniform_()
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best / 1e9


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def compiled_generation_kwargs() -> dict:
    """What ``SpanPPOConfig(compile_generation=True)`` passes to ``generate`` on a CPU: a static KV cache and
    transformers' ``torch.compile``d decoding step."""
    from trl_text2grad.ppo.span_ppo_trainer import compiled_generation_config

    return {"cache_implementation": "static", "compile_config": compiled_generation_config("cpu")}


def time_generate(model, inputs: dict, new_tokens: int, repeats: int, **generate_kwargs) -> float:
    """Seconds of ``new_tokens - 1`` decoding steps (best of ``repeats``; the prefill step is subtracted)."""

    def run(tokens: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **generate_kwargs)
        return time.perf_counter() - start

    run(2)  # warm-up (with a static cache every length is a shape of its own: each is compiled here once)
    if generate_kwargs.get("compile_config") is not None:
        run(1), run(new_tokens)
    prefill = min(run(1) for _ in range(repeats))
    full = min(run(new_tokens) for _ in range(repeats))
    return max(full - prefill, 1e-9)


def context_seconds(make_context, repeats: int) -> float:
    """Best seconds of entering and leaving a fresh ``make_context()`` (what a rollout pays once), of ``repeats``."""
    costs = []
    for _ in range(repeats):
        start = time.perf_counter()
        with make_context():
            pass
        costs.append(time.perf_counter() - start)
    return min(costs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="Also time compile_generation's decoding (static cache, compiled step; compiled in the warm-up).",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:  # one graph per (model, generated length): more than dynamo's default of 8 in this script
        torch._dynamo.config.cache_size_limit = 64
    torch.manual_seed(0)
    tokenizer = load_default_tokenizer()
    tokenizer.padding_side = "left"
    model = load_default_model().eval()
    prompts = [f"Write a short story about the number {i}." for i in range(args.batch)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    bandwidth = copy_bandwidth_gbs()
    weights = parameter_bytes(model)
    bound = bandwidth * 1e9 / weights
    steps = args.new_tokens - 1
    print(
        f"copy bandwidth {bandwidth:.1f} GB/s; weights {weights / 1e6:.0f} MB -> bound {bound:.1f} decoding steps/s "
        f"({bound * args.batch:.0f} tokens/s at batch {args.batch}); {torch.get_num_threads()} threads\n"
    )
    print("| model | decode tokens/s | steps/s | fraction of the bound |")
    print("| --- | ---: | ---: | ---: |")

    def row(name: str, m, **generate_kwargs) -> None:
        seconds = time_generate(m, inputs, args.new_tokens, args.repeats, **generate_kwargs)
        rate = steps / seconds
        print(f"| {name} | {rate * args.batch:.1f} | {rate:.2f} | {rate / bound:.2f} |")

    row("plain", model)
    if packed_linear_available():
        with packed_linear_weights(model, batch_size=args.batch) as packed:
            row(f"plain, packed weights ({packed.layers} layers)", model)
    if args.compile:
        row("plain, static cache (eager)", model, cache_implementation="static", disable_compile=True)
        row("plain, static cache + compiled step", model, **compiled_generation_kwargs())
        del model._compiled_call  # the LoRA rows below wrap the same modules
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    for module in lora.modules():  # non-zero B so that merging changes the weights as after training
        if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {}):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=1e-3)
    lora.eval()
    row("LoRA r=16, unmerged", lora)
    cost = context_seconds(lambda: merged_lora_adapters(lora), args.repeats)
    with merged_lora_adapters(lora) as merge:
        row(f"LoRA r=16, merged ({merge.layers} layers; merge + exact restore: {cost:.2f} s)", lora)
        if args.compile:
            row("LoRA r=16, merged, static cache + compiled step", lora, **compiled_generation_kwargs())
    if not packed_linear_available():
        print("(packed rows skipped: this PyTorch build has no oneDNN)")
        return
    cost = context_seconds(lambda: packed_linear_weights(lora, batch_size=args.batch), args.repeats)
    with packed_linear_weights(lora, batch_size=args.batch) as packed:
        row(
            f"LoRA r=16, packed with the adapters folded in ({packed.lora_layers} of {packed.layers} layers; "
            f"packing + freeing: {cost:.2f} s)",
            lora,
        )


if __name__ == "__main__":
    main()
