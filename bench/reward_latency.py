"""Per-sample scoring latency of the two span reward model forms at equal batch size.

    python bench/reward_latency.py --token-head runs/rm_token_repeat --generative runs/rm_gen \
        --data runs/reward_data --samples 16 --batch-sizes 1 8 --threads 1

Both checkpoints are loaded with ``SpanRewardModel.from_pretrained`` (LoRA merged) and score the same
(prompt, response) pairs of the held-out split (``--data``, written by ``bench/reward_real_run.py data``; without it,
HumanEval canonical solutions). Each measurement is preceded by one warm-up batch; the two forms are timed
alternately so that background load affects both alike. Prints a table and one JSON line with seconds per sample,
the ratio generative / token_head, and the mean number of tokens the generative model wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_pairs(data: str | None, samples: int) -> tuple[list[str], list[str]]:
    if data:
        from datasets import load_from_disk

        split = load_from_disk(data)["test"].shuffle(seed=1).select(range(samples))
        return list(split["prompt"]), list(split["response"])
    from trl_text2grad.tasks.humaneval import load_humaneval

    ds = load_humaneval().select(range(samples))
    return list(ds["prompt"]), list(ds["canonical_solution"])


def time_scoring(model, prompts, responses, batch_size: int, repeats: int) -> list[float]:
    model.batch_size = batch_size
    model.predict(prompts[:batch_size], responses[:batch_size])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(prompts, responses)
        times.append((time.perf_counter() - start) / len(prompts))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token-head", required=True, help="token_head checkpoint folder")
    parser.add_argument("--generative", required=True, help="generative checkpoint folder")
    parser.add_argument("--data", default=None, help="dataset folder from reward_real_run.py data")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the generative checkpoint's")
    args = parser.parse_args()

    import torch

    from trl_text2grad.reward.scoring import SpanRewardModel

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts, responses = load_pairs(args.data, args.samples)
    token_head = SpanRewardModel.from_pretrained(args.token_head)
    generative = SpanRewardModel.from_pretrained(args.generative)
    if args.max_new_tokens:
        generative.config["max_new_tokens"] = args.max_new_tokens
    device = str(token_head.device)
    results = []
    print(f"device={device} threads={torch.get_num_threads()} samples={len(prompts)}")
    print(f"{'batch':>5} {'token_head s/sample':>20} {'generative s/sample':>20} {'ratio':>8}")
    for batch_size in args.batch_sizes:
        th, gen = [], []
        for _ in range(args.repeats):
            th += time_scoring(token_head, prompts, responses, batch_size, 1)
            gen += time_scoring(generative, prompts, responses, batch_size, 1)
        th_s, gen_s = statistics.median(th), statistics.median(gen)
        results.append(
            {"batch_size": batch_size, "token_head_s": round(th_s, 4), "generative_s": round(gen_s, 4),
             "ratio": round(gen_s / th_s, 1)}
        )  # fmt: skip
        print(f"{batch_size:>5} {th_s:>20.4f} {gen_s:>20.4f} {gen_s / th_s:>8.1f}")
    outputs = generative.predict(prompts, responses)
    tokenizer = generative.tokenizer
    written = [len(tokenizer(p.raw_output or "", add_special_tokens=False)["input_ids"]) for p in outputs]
    summary = {
        "device": device,
        "threads": torch.get_num_threads(),
        "samples": len(prompts),
        "generative_mean_new_tokens": round(sum(written) / len(written), 1),
        "generative_max_new_tokens": generative.config.get("max_new_tokens"),
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
