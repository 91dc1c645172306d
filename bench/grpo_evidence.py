"""Span credit in GRPO: TRL's own ``GRPOTrainer`` against ``SpanGRPOTrainer``, same judgement, same settings.

One run per command (writes ``OUT/<task>_<arm>_seed<N>.jsonl``, one row per GRPO step)::

    python bench/grpo_evidence.py --task text --arm span --seed 0 --steps 12 --out docs/evidence/grpo

Summarise every run in ``OUT`` (mean ± std across seeds; Markdown to stdout)::

    python bench/grpo_evidence.py --summary --out docs/evidence/grpo

Arms (equal compute: same policy, LoRA, prompts, completions per step, GRPO and KL settings):

- ``scalar``: ``trl.GRPOTrainer``; the reward function returns the critic's judgement collapsed to one number
  (``collapse_to_scalar`` of ``bench/evidence_tasks.py``: the normalised sum of span scores).
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


def summary(out: str) -> str:
    runs: dict[tuple[str, str], list[list[dict]]] = {}
    for path in sorted(Path(out).glob("*_seed*.jsonl")):
        task, arm, _ = path.stem.split("_")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        runs.setdefault((task, arm), []).append([r for r in rows if "step" in r])
    lines = [
        "| task | arm | seeds | success, first third | success, last third | mean scalar, last third | KL, last third |",
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
            third = max(1, len(rows) // 3)
            first.append(statistics.fmean(r["success"] for r in rows[:third]))
            last.append(statistics.fmean(r["success"] for r in rows[-third:]))
            scalar.append(statistics.fmean(r["scalar"] for r in rows[-third:]))
            kls = [r["kl"] for r in rows[-third:] if r.get("kl") is not None]
            kl.append(statistics.fmean(kls) if kls else float("nan"))
        lines.append(f"| {task} | {arm} | {len(seeds)} | {ms(first)} | {ms(last)} | {ms(scalar)} | {ms(kl)} |")
    return "\n".join(lines)


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
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.summary:
        print(summary(arguments.out))
    else:
        print(run_one(arguments))
