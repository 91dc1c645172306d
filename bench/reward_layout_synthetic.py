"""Token-head layouts on a controlled task: does letting each response token see the whole response help?

Rows ``def add(x, y):\\n    return x <op> y  # v<i>``; the line ``return x <op> y`` is *poor* when ``<op>`` is ``-``
and *good* when it is ``+``. In the ``plain`` layout the tokens ``return`` and `` x`` come before the operator, so a
causal backbone cannot know their label; in the ``repeat`` layout the head reads a second copy of the response and
every token can attend to the operator in the first copy. Tiny random Llama (hidden 64, 2 layers), same seed, same
steps; reports token-level F1 on held-out rows (different ``v<i>`` suffixes and prompts).

    python bench/reward_layout_synthetic.py --steps 150 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rows(start: int, n: int) -> list[dict]:
    out = []
    for i in range(start, start + n):
        op = "-" if i % 2 == 0 else "+"
        line = f"return x {op} y"
        out.append(
            {
                "prompt": f"Write add, variant {i}.",
                "response": f"def add(x, y):\n    {line}  # v{i}",
                "critique": "",
                "good_spans": [line] if op == "+" else [],
                "poor_spans": [line] if op == "-" else [],
            }
        )
    return out


def run(layout: str, seed: int, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from trl_text2grad.models import load_default_tokenizer
    from trl_text2grad.reward import SpanRewardConfig, SpanRewardTrainer

    tokenizer = load_default_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        args = SpanRewardConfig(
            out, model_form="token_head", head_layout=layout, max_steps=steps, per_device_train_batch_size=8,
            learning_rate=5e-3, report_to=[], save_strategy="no", use_cpu=True, seed=seed, logging_steps=steps,
            disable_tqdm=True,
        )  # fmt: skip
        trainer = SpanRewardTrainer(
            model, args=args, train_dataset=Dataset.from_list(rows(0, 32)), processing_class=tokenizer
        )
        trainer.train()
        metrics = trainer.compute_span_metrics(Dataset.from_list(rows(1000, 32)), max_samples=None)
    return {k: metrics[k] for k in ("good_f1", "poor_f1", "span_precision", "exact_span_precision")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    summary = {}
    for layout in ("plain", "repeat"):
        results = [run(layout, seed, args.steps) for seed in args.seeds]
        summary[layout] = {key: round(statistics.mean(r[key] or 0.0 for r in results), 3) for key in results[0]}
        print(layout, summary[layout], flush=True)
    print(json.dumps({"steps": args.steps, "seeds": args.seeds, "results": summary}))


if __name__ == "__main__":
    main()
