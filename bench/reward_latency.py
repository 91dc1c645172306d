"""Per-sample scoring latency of the two span reward model forms at equal batch size.

    python bench/reward_latency.py --token-head runs/rm_token_repeat --generative runs/rm_gen \
        --data runs/reward_data --samples 16 --batch-sizes 1 8 --threads 1
    python bench/reward_latency.py --synthetic --samples 8 --batch-sizes 8 1 --threads 1

Both checkpoints are loaded with ``SpanRewardModel.from_pretrained`` (LoRA merged) and score the same
(prompt, response) pairs of the held-out split (``--data``, written by ``bench/reward_real_run.py data``; without it,
HumanEval prompts and canonical solutions). ``--synthetic`` needs no checkpoints: both forms are built from the
packaged SmolLM2-135M-Instruct (token head: an untrained head on it, ``repeat`` layout; generative: the model
itself), and the generative form is made to write exactly ``--generative-new-tokens`` tokens (default 64, about what
the trained generative model wrote per critique) so that the comparison does not depend on what an untrained model
happens to write. Each measurement is preceded by one warm-up batch; the two forms are timed alternately so that
background load affects both alike, in wall-clock and CPU seconds (``time.process_time``; with ``--threads 1`` it is
robust to other jobs on the machine). Prints a table and one JSON line with seconds per sample, the ratios
generative / token_head, and the mean number of tokens the generative model wrote. ``--dtype bfloat16`` loads both
forms' backbones in bfloat16 (the token head's linear layer stays float32).
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


def time_scoring(model, prompts, responses, batch_size: int, repeats: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per sample of scoring all pairs ``batch_size`` at a time, ``repeats`` times."""
    model.batch_size = batch_size
    model.predict(prompts[:batch_size], responses[:batch_size])  # warm-up
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        model.predict(prompts, responses)
        times.append(((time.perf_counter() - wall) / len(prompts), (time.process_time() - cpu) / len(prompts)))
    return times


def synthetic_models(new_tokens: int, dtype=None):
    """Both forms from the packaged SmolLM2-135M-Instruct, the generative one writing exactly ``new_tokens``."""
    from trl_text2grad.models import load_default_model, load_default_tokenizer
    from trl_text2grad.reward.modeling import SpanTokenHeadModel
    from trl_text2grad.reward.scoring import SpanRewardModel

    tokenizer = load_default_tokenizer()
    head = SpanTokenHeadModel(load_default_model(dtype=dtype), num_labels=3).eval()
    token_head = SpanRewardModel(head, tokenizer, {"model_form": "token_head", "head_layout": "repeat"})
    causal_lm = load_default_model(dtype=dtype).eval()
    generate = causal_lm.generate

    def fixed_length_generate(*args, **kwargs):
        kwargs["min_new_tokens"] = kwargs["max_new_tokens"] = new_tokens
        return generate(*args, **kwargs)

    causal_lm.generate = fixed_length_generate
    generative = SpanRewardModel(causal_lm, tokenizer, {"model_form": "generative", "max_new_tokens": new_tokens})
    return token_head, generative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token-head", help="token_head checkpoint folder")
    parser.add_argument("--generative", help="generative checkpoint folder")
    parser.add_argument("--synthetic", action="store_true", help="build both forms from the packaged SmolLM2")
    parser.add_argument("--generative-new-tokens", type=int, default=64, help="--synthetic: tokens it writes")
    parser.add_argument("--data", default=None, help="dataset folder from reward_real_run.py data")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the generative checkpoint's")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of both forms' backbones"
    )
    args = parser.parse_args()
    if not args.synthetic and not (args.token_head and args.generative):
        parser.error("give --token-head and --generative checkpoint folders, or --synthetic")

    import torch

    from trl_text2grad.reward.scoring import SpanRewardModel

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts, responses = load_pairs(args.data, args.samples)
    if args.synthetic:
        token_head, generative = synthetic_models(args.generative_new_tokens, getattr(torch, args.dtype))
    else:
        token_head = SpanRewardModel.from_pretrained(args.token_head, dtype=getattr(torch, args.dtype))
        generative = SpanRewardModel.from_pretrained(args.generative, dtype=getattr(torch, args.dtype))
    if args.max_new_tokens:
        generative.config["max_new_tokens"] = args.max_new_tokens
    device = str(token_head.device)
    results = []
    print(f"device={device} threads={torch.get_num_threads()} samples={len(prompts)}")
    print(
        f"{'batch':>5} {'token_head s/sample':>20} {'generative s/sample':>20} {'ratio':>7} "
        f"{'token_head CPU s':>17} {'generative CPU s':>17} {'CPU ratio':>10}"
    )
    for batch_size in args.batch_sizes:
        th, gen = [], []
        for _ in range(args.repeats):
            th += time_scoring(token_head, prompts, responses, batch_size, 1)
            gen += time_scoring(generative, prompts, responses, batch_size, 1)
        th_s, gen_s = statistics.median(t[0] for t in th), statistics.median(t[0] for t in gen)
        th_c, gen_c = statistics.median(t[1] for t in th), statistics.median(t[1] for t in gen)
        results.append(
            {"batch_size": batch_size, "token_head_s": round(th_s, 4), "generative_s": round(gen_s, 4),
             "ratio": round(gen_s / th_s, 1), "token_head_cpu_s": round(th_c, 4), "generative_cpu_s": round(gen_c, 4),
             "cpu_ratio": round(gen_c / th_c, 1)}
        )  # fmt: skip
        print(
            f"{batch_size:>5} {th_s:>20.4f} {gen_s:>20.4f} {gen_s / th_s:>7.1f} {th_c:>17.4f} {gen_c:>17.4f} "
            f"{gen_c / th_c:>10.1f}"
        )
    outputs = generative.predict(prompts, responses)
    tokenizer = generative.tokenizer
    written = [len(tokenizer(p.raw_output or "", add_special_tokens=False)["input_ids"]) for p in outputs]
    summary = {
        "device": device,
        "threads": torch.get_num_threads(),
        "samples": len(prompts),
        "generative_mean_new_tokens": round(sum(written) / len(written), 1),
        "generative_max_new_tokens": generative.config.get("max_new_tokens"),
        "synthetic": bool(args.synthetic),
        "dtype": args.dtype,
        "token_head_max_padding_fraction": getattr(token_head, "max_padding_fraction", None),
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
