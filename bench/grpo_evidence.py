"""Span credit in GRPO: TRL's own ``GRPOTrainer`` against ``SpanGRPOTrainer``, same judgement, same settings.

One run per command (writes ``OUT/<task>_<arm>_seed<N>.jsonl``, one row per GRPO step)::

    python bench/grpo_evidence.py --task text --arm span --seed 0 --steps 12 --out docs/evidence/grpo

Summarise every run in ``OUT`` (mean ± std across seeds; Markdown to stdout)::

    python bench/grpo_evidence.py --summary --out docs/evidence/grpo

Arms (equal compute: same policy, LoRA, prompts, completions per step, GRPO and KL settings):

- ``scalar``: ``trl.GRPOTrainer``; the reward function returns the critic's judgement collapsed to one number
  (``collapse_to_scalar`` of ``trl_text2grad.tasks.programmatic``: the normalised sum of span scores).
- ``span``: ``SpanGRPOTrainer``; the reward function returns ``(the same scalar, the critic's spans)``, so the
  sequence advantage is the scalar arm's and the only difference is the span term ``w * r[i, t] / s``.

Per step the run records the success rate and the mean scalar reward of the sampled completions (before the update
that uses them) and the KL to the reference (``beta > 0``, logged by TRL).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ARMS = ("scalar", "span")


def run_one(args) -> str:
    import torch
    from datasets import Dataset
    from learning_curves import get_task
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from trl_text2grad import SpanGRPOConfig, SpanGRPOTrainer
    from trl_text2grad.models import default_model_path, load_default_tokenizer

    torch.manual_seed(args.seed)
    task = get_task(args.task)
    prompts_per_step = args.completions_per_step // args.num_generations
    rows = task.prompts(prompts_per_step * args.steps, args.seed)
    dataset = Dataset.from_list(rows)
    records: list[dict] = []

    def judge(completions, kwargs):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        context = {k: v for k, v in kwargs.items() if k not in ("trainer_state", "log_extra", "log_metric")}
        judgements = task.judge(texts, **context)
        records.append(
            {
                "success": statistics.fmean(j.success for j in judgements),
                "scalar": statistics.fmean(j.scalar for j in judgements),
                "spans": statistics.fmean(len(j.spans) for j in judgements),
            }
        )
        return judgements

    def critic_scalar(prompts, completions, completion_ids, **kwargs):
        return [j.scalar for j in judge(completions, kwargs)]

    def critic_spans(prompts, completions, completion_ids, **kwargs):
        return [(j.scalar, j.spans) for j in judge(completions, kwargs)]

    settings = dict(
        output_dir=os.path.join(args.work_dir, f"{args.task}_{args.arm}_seed{args.seed}"),
        per_device_train_batch_size=args.completions_per_step,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        beta=args.beta,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=args.seed,
        shuffle_dataset=False,
    )
    if args.model:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    else:
        tokenizer = load_default_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(args.model or default_model_path(), dtype=torch.float32)
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    common = dict(model=model, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    start = time.perf_counter()
    if args.arm == "scalar":
        trainer = GRPOTrainer(reward_funcs=critic_scalar, args=GRPOConfig(**settings), **common)
    else:
        config = SpanGRPOConfig(**settings, span_advantage_weight=args.span_weight)
        trainer = SpanGRPOTrainer(reward_funcs=critic_spans, args=config, **common)
    trainer.train()
    total = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.task}_{args.arm}_seed{args.seed}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for step, (record, log) in enumerate(zip(records, logs)):
            row = {"step": step, **record, "kl": log.get("kl"), "loss": log.get("loss")}
            row.update({k: v for k, v in log.items() if k.startswith("span/")})
            handle.write(json.dumps(row) + "\n")
        handle.write(json.dumps({"total_s": total, "args": vars(args)}) + "\n")
    return str(path)


def summary(out: str, max_steps: int | None = None) -> str:
    runs = {key: list(seeds.values()) for key, seeds in _load_runs(out, max_steps).items()}
    lines = [
        "| task | arm | seeds | success, first half | success, second half | mean scalar, second half | KL, second half |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def ms(values):
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return "n/a"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.2f} ± {sd:.2f}"

    for (task, arm), seeds in sorted(runs.items()):
        first, last, scalar, kl = [], [], [], []
        for rows in seeds:
            half = max(1, len(rows) // 2)
            first.append(statistics.fmean(r["success"] for r in rows[:half]))
            last.append(statistics.fmean(r["success"] for r in rows[-half:]))
            scalar.append(statistics.fmean(r["scalar"] for r in rows[-half:]))
            kls = [r["kl"] for r in rows[-half:] if r.get("kl") is not None]
            kl.append(statistics.fmean(kls) if kls else float("nan"))
        lines.append(f"| {task} | {arm} | {len(seeds)} | {ms(first)} | {ms(last)} | {ms(scalar)} | {ms(kl)} |")
    return "\n".join(lines)


def _load_runs(out: str, max_steps: int | None = None) -> dict[tuple[str, str], dict[int, list[dict]]]:
    """``(task, arm) -> {seed: per-step rows}`` for every run file in ``out`` (only the first ``max_steps`` steps of
    each run when given, so that runs of different lengths are compared over the same steps)."""
    runs: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for path in sorted(Path(out).glob("*_seed*.jsonl")):
        task, arm, seed = path.stem.split("_")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        steps = [r for r in rows if "step" in r][:max_steps]
        runs.setdefault((task, arm), {})[int(seed.removeprefix("seed"))] = steps
    return runs


def _second_half(rows: list[dict]) -> float:
    half = max(1, len(rows) // 2)
    return statistics.fmean(r["success"] for r in rows[-half:])


def paired(out: str, max_steps: int | None = None, resamples: int = 10000, seed: int = 0) -> str:
    """Per seed: second-half success of ``span`` minus ``scalar`` (same seed = same prompts and first policy), their
    mean, and a 95 % bootstrap interval of the mean over seeds (resampling seeds)."""
    import random

    runs = _load_runs(out, max_steps)
    rng = random.Random(seed)
    lines = [
        "| task | seeds | span − scalar per seed | mean | 95 % bootstrap CI | span ahead |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task in sorted({t for t, _ in runs}):
        span, scalar = runs.get((task, "span"), {}), runs.get((task, "scalar"), {})
        seeds = sorted(set(span) & set(scalar))
        if not seeds:
            continue
        diffs = [_second_half(span[s]) - _second_half(scalar[s]) for s in seeds]
        means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
        low, high = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
        ahead = sum(d > 0 for d in diffs)
        per_seed = ", ".join(f"{d:+.2f}" for d in diffs)
        lines.append(
            f"| {task} | {len(seeds)} | {per_seed} | {statistics.fmean(diffs):+.3f} | [{low:+.3f}, {high:+.3f}] "
            f"| {ahead} of {len(seeds)} |"
        )
    return "\n".join(lines)


def plot(out: str, plot_dir: str, max_steps: int | None = None) -> list[str]:
    """One PNG per task: success rate (3-step moving average) and KL per GRPO step, mean ± std across seeds per arm,
    with every seed as a thin line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _load_runs(out, max_steps)
    written = []
    for task in sorted({t for t, _ in runs}):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for arm, color in (("scalar", "tab:blue"), ("span", "tab:red")):
            seeds = runs.get((task, arm), {})
            for key, axis in (("success", axes[0]), ("kl", axes[1])):
                curves = []
                for rows in seeds.values():
                    values = [float(r[key]) if r.get(key) is not None else float("nan") for r in rows]
                    if key == "success":
                        values = [statistics.fmean(values[max(0, i - 2) : i + 1]) for i in range(len(values))]
                    curves.append(values)
                    axis.plot(range(1, len(values) + 1), values, color=color, alpha=0.25, linewidth=0.8)
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
                std = [statistics.pstdev([c[i] for c in curves]) for i in range(length)]
                steps = range(1, length + 1)
                label = f"{arm} ({'SpanGRPOTrainer' if arm == 'span' else 'trl GRPOTrainer'}, {len(curves)} seeds)"
                axis.plot(steps, mean, color=color, linewidth=2, label=label)
                axis.fill_between(
                    steps,
                    [m - s for m, s in zip(mean, std)],
                    [m + s for m, s in zip(mean, std)],
                    color=color,
                    alpha=0.15,
                )
        axes[0].set(title=f"{task}: success (3-step moving average)", xlabel="GRPO step", ylabel="success rate")
        axes[1].set(title=f"{task}: KL to the reference (TRL's log)", xlabel="GRPO step", ylabel="KL")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        os.makedirs(plot_dir, exist_ok=True)
        path = os.path.join(plot_dir, f"grpo_{task}_curves.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("text", "code"), default="text")
    parser.add_argument("--arm", choices=ARMS, default="span")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps (one generation batch each).")
    parser.add_argument("--completions-per-step", type=int, default=16)
    parser.add_argument("--num-generations", type=int, default=4, help="Completions per prompt (group size).")
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (also makes TRL log the KL).")
    parser.add_argument("--span-weight", type=float, default=1.0, help="span_advantage_weight of the span arm.")
    parser.add_argument("--model", default=None, help="Policy checkpoint (default: the packaged SmolLM2-135M).")
    parser.add_argument("--out", default="docs/evidence/grpo")
    parser.add_argument("--work-dir", default="/tmp/grpo_evidence")
    parser.add_argument("--summary", action="store_true", help="Summarise the runs in --out and exit.")
    parser.add_argument("--plot-dir", default=None, help="With --summary: also write one PNG per task here.")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="With --summary: compare only the first N steps of every run."
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.summary:
        print(summary(arguments.out, arguments.max_steps))
        print()
        print(paired(arguments.out, arguments.max_steps))
        if arguments.plot_dir:
            for written in plot(arguments.out, arguments.plot_dir, arguments.max_steps):
                print(f"wrote {written}")
    else:
        print(run_one(arguments))
