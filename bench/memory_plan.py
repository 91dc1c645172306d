"""Memory per GPU of span PPO on an 8B policy, computed (not measured) for each recipe, so that a GPU user can pick a
recipe before renting hardware.

    python bench/memory_plan.py                     # Llama-3.1-8B, the SLF5K recipe's sizes, 8 GPUs for ZeRO
    python bench/memory_plan.py --gpus 4 --micro-batch 2 --prompt-length 1024 --response-length 256

Model of the memory (bytes per GPU, bf16 mixed precision as in the recipes):

* weights: 2 bytes per parameter (bf16); nf4 4-bit (QLoRA): 0.5625 bytes per quantised parameter (4 bits + the
  double-quantised block constants), the embedding and the LM head stay bf16 (bitsandbytes quantises only the
  linear layers of the blocks);
* trainable parameters: gradients 2 bytes, AdamW 12 bytes (fp32 master weights, first and second moments).
  ZeRO-2 partitions gradients and optimizer states over the GPUs, ZeRO-3 also the weights, offload moves the
  optimizer states to CPU memory;
* reference policy: none with LoRA/QLoRA (the adapter-disabled policy), a frozen bf16 copy with full fine-tuning;
  value: a value head on the policy backbone (4,097 parameters), the package's default;
* activations with gradient checkpointing: the input of every layer (2·s·b·h bytes per layer) plus one layer
  recomputed in full (34·s·b·h bytes, Korthikanti et al. 2022 with fused attention), s = prompt + response tokens,
  b = micro-batch, h = hidden size;
* logits of the response tokens in the loss: b·r·V·6 bytes (bf16 logits + one fp32 row at a time for the
  log-softmax), r = response tokens, V = vocabulary;
* generation: the KV cache of ``local_rollout_forward_batch_size`` sequences (2·L·kv_heads·head_dim·2 bytes per
  token);
* ``rollout_peak``: with ZeRO-3 and ``ds3_gather_for_generation=True`` (the default) generation gathers the whole
  policy on every GPU; set it to ``False`` to generate from the shards (much slower, no gather);
* the span reward model is not included: add its weights (16.1 GB for an 8B model in bf16, replicated on every
  GPU) when it runs on the GPUs, nothing when the critic is an API.

CUDA context, allocator fragmentation and NCCL buffers come on top (count 2-4 GB per GPU).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer's sizes (defaults: Llama-3.1-8B)."""

    hidden: int = 4096
    layers: int = 32
    intermediate: int = 14336
    vocab: int = 128256
    heads: int = 32
    kv_heads: int = 8

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def block_linear_params(self) -> int:
        kv = self.kv_heads * self.head_dim
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp)

    @property
    def embedding_params(self) -> int:
        return 2 * self.vocab * self.hidden  # input embedding + untied LM head

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.block_linear_params + self.embedding_params + norms

    def lora_params(self, rank: int) -> int:
        """Trainable parameters of LoRA on every linear layer of the blocks (``target_modules='all-linear'``)."""
        kv = self.kv_heads * self.head_dim
        shapes = [
            (self.hidden, self.hidden),
            (self.hidden, kv),
            (self.hidden, kv),
            (self.hidden, self.hidden),
            (self.hidden, self.intermediate),
            (self.hidden, self.intermediate),
            (self.intermediate, self.hidden),
        ]
        return self.layers * sum(rank * (a + b) for a, b in shapes)


@dataclass(frozen=True)
class Workload:
    micro_batch: int = 1
    prompt_length: int = 640
    response_length: int = 90
    rollout_batch: int = 1  # local_rollout_forward_batch_size (sequences generated at once)
    lora_rank: int = 16


def memory_per_gpu(arch: Architecture, work: Workload, recipe: str, gpus: int) -> dict[str, float]:
    """GB per GPU by component for ``recipe`` in {lora, qlora, full} x {none, zero2, zero3, zero3-offload}."""
    method, _, zero = recipe.partition("+")
    zero = zero or "none"
    shards = gpus if zero != "none" else 1
    linear, other = arch.block_linear_params, arch.params - arch.block_linear_params
    if method == "qlora":
        weights = linear * 0.5625 + other * 2
    else:
        weights = arch.params * 2.0
    trainable = arch.lora_params(work.lora_rank) if method in ("lora", "qlora") else arch.params
    trainable += arch.hidden + 1  # value head
    reference = arch.params * 2.0 if method == "full" else 0.0
    gradients = trainable * 2.0
    optimizer = trainable * 12.0
    if zero in ("zero2", "zero3", "zero3-offload"):
        gradients /= shards
        optimizer /= shards
    if zero in ("zero3", "zero3-offload"):
        weights /= shards
        reference /= shards
    if zero == "zero3-offload":
        optimizer = 0.0
    tokens = work.prompt_length + work.response_length
    activations = (
        arch.layers * 2 * tokens * work.micro_batch * arch.hidden + 34 * tokens * work.micro_batch * arch.hidden
    )
    logits = work.micro_batch * work.response_length * arch.vocab * 6.0
    kv_cache = work.rollout_batch * tokens * arch.layers * 2 * arch.kv_heads * arch.head_dim * 2.0
    parts = {
        "weights": weights,
        "reference": reference,
        "gradients": gradients,
        "optimizer": optimizer,
        "activations": activations,
        "logits": logits,
        "kv_cache": kv_cache,
    }
    parts = {k: v / GB for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    # ZeRO-3 with ds3_gather_for_generation=True (the default) gathers the whole policy to generate
    gathered = (weights * (shards - 1)) / GB if zero in ("zero3", "zero3-offload") else 0.0
    parts["rollout_peak"] = parts["total"] + gathered
    return parts


RECIPES = [
    ("lora", "LoRA r=16, 1 GPU"),
    ("qlora", "QLoRA (nf4) r=16, 1 GPU"),
    ("lora+zero2", "LoRA r=16, ZeRO-2"),
    ("lora+zero3", "LoRA r=16, ZeRO-3"),
    ("full", "full fine-tuning, 1 GPU"),
    ("full+zero2", "full fine-tuning, ZeRO-2"),
    ("full+zero3", "full fine-tuning, ZeRO-3"),
    ("full+zero3-offload", "full fine-tuning, ZeRO-3 + optimizer offload"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the ZeRO recipes shard over")
    parser.add_argument("--micro-batch", type=int, default=1, help="per_device_train_batch_size")
    parser.add_argument("--prompt-length", type=int, default=640, help="max_prompt_length")
    parser.add_argument("--response-length", type=int, default=90, help="response_length")
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args(argv)
    arch = Architecture()
    work = Workload(args.micro_batch, args.prompt_length, args.response_length, lora_rank=args.lora_rank)
    print(
        f"Llama-3.1-8B-shaped policy ({arch.params / 1e9:.2f}B parameters, LoRA r={work.lora_rank}: "
        f"{arch.lora_params(work.lora_rank) / 1e6:.1f}M), micro-batch {work.micro_batch}, {work.prompt_length} prompt + "
        f"{work.response_length} response tokens, ZeRO over {args.gpus} GPUs; GB per GPU\n"
    )
    columns = [
        "weights",
        "reference",
        "gradients",
        "optimizer",
        "activations",
        "logits",
        "kv_cache",
        "total",
        "rollout_peak",
    ]
    print("| recipe | " + " | ".join(columns) + " |")
    print("| --- | " + " | ".join("---:" for _ in columns) + " |")
    for recipe, label in RECIPES:
        parts = memory_per_gpu(arch, work, recipe, args.gpus)
        cells = [f"{parts[c]:.1f}" if c != "total" else f"**{parts[c]:.1f}**" for c in columns]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
