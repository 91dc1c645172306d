"""Real run of the span reward model on HumanEval-derived data annotated by the unit-test critic (issue 5, item 4).

Steps (each a sub-command, so they can run separately and be timed):

    # 1. data: canonical solutions + operator-mutated variants, annotated by UnitTestCritic, split by problem
    python bench/reward_real_run.py data --out runs/reward_data
    # 2. train one form with LoRA on SmolLM2-135M (CPU), evaluate on the held-out problems, save the checkpoint
    python bench/reward_real_run.py train --data runs/reward_data --form token_head --layout repeat \
        --out runs/rm_token_repeat --minutes 5
    python bench/reward_real_run.py train --data runs/reward_data --form generative --out runs/rm_gen --minutes 8

``train`` prints and writes ``metrics.json`` in ``--out``: the held-out span metrics (token-level P/R/F1 of good and
poor spans, exact-span match, parse rate, critique ROUGE-L), training time and steps.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# (pattern, replacement) operator mutations; one occurrence is replaced per variant.
MUTATIONS = [
    (r" \+ ", " - "),
    (r" - ", " + "),
    (r" < ", " <= "),
    (r" <= ", " < "),
    (r" > ", " >= "),
    (r" >= ", " > "),
    (r" == ", " != "),
    (r" != ", " == "),
    (r"\bTrue\b", "False"),
    (r"\bFalse\b", "True"),
    (r" and ", " or "),
    (r" or ", " and "),
    (r"\b1\b", "2"),
    (r"\b0\b", "1"),
    (r"\[1:\]", "[2:]"),
    (r"\[::-1\]", ""),
    (r"\bmax\(", "min("),
    (r"\bmin\(", "max("),
    (r"\.append\(", ".remove("),
    (r"return ", "return not "),
]


def mutants(code: str, rng: random.Random, count: int) -> list[str]:
    """Up to ``count`` distinct single-site operator mutations of ``code``."""
    sites = []
    for pattern, replacement in MUTATIONS:
        for match in re.finditer(pattern, code):
            sites.append((match.start(), match.end(), replacement))
    rng.shuffle(sites)
    out = []
    for start, end, replacement in sites:
        variant = code[:start] + replacement + code[end:]
        if variant != code and variant not in out:
            out.append(variant)
        if len(out) == count:
            break
    return out


def build_data(out: Path, per_problem: int = 2, test_fraction: float = 0.2, seed: int = 0) -> None:
    from datasets import Dataset, DatasetDict

    from trl_text2grad.critics import UnitTestCritic
    from trl_text2grad.spans import locate_critique
    from trl_text2grad.tasks.humaneval import load_humaneval, split_by_problem

    rng = random.Random(seed)
    problems = load_humaneval()
    rows = []
    for problem in problems:
        variants = [problem["canonical_solution"]] + mutants(problem["canonical_solution"], rng, per_problem)
        for index, response in enumerate(variants):
            rows.append(
                {
                    "task_id": problem["task_id"],
                    "variant": index,
                    "prompt": problem["prompt"],
                    "response": response,
                    "test": problem["test"],
                    "entry_point": problem["entry_point"],
                }
            )
    critic = UnitTestCritic(timeout=10.0, max_workers=2)
    start = time.time()
    critiques = critic.critique(
        [r["prompt"] for r in rows],
        [r["response"] for r in rows],
        tests=[r["test"] for r in rows],
        entry_point=[r["entry_point"] for r in rows],
    )
    for row, critique, result in zip(rows, critiques, critic.last_results):
        located = locate_critique(row["response"], critique)
        row.update(critique.to_dict())
        row["located_spans"] = [list(s) for s in located.span_tuples()]
        row["num_unlocated"] = located.num_unlocated
        row["passed"] = bool(result is not None and result.passed)
    print(f"annotated {len(rows)} rows in {time.time() - start:.1f}s; passed: {sum(r['passed'] for r in rows)}")
    splits = split_by_problem(Dataset.from_list(rows), test_fraction=test_fraction, seed=seed)
    DatasetDict(splits).save_to_disk(str(out))
    for name, split in splits.items():
        print(f"{name}: {len(split)} rows, {len(set(split['task_id']))} problems, {sum(split['passed'])} passing")


def top_layers_lora_config(num_top_layers: int):
    """The reward models' LoRA: r=16, alpha=32 on every attention and MLP projection of the top ``num_top_layers``
    layers of the default model (0: all layers); backpropagation then stops below them."""
    from peft import LoraConfig
    from transformers import AutoConfig

    from trl_text2grad.models import default_model_path

    num_layers = AutoConfig.from_pretrained(default_model_path()).num_hidden_layers
    top = list(range(num_layers - num_top_layers, num_layers)) if num_top_layers else None
    return LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=top,
        task_type="CAUSAL_LM",
    )


def train(args: argparse.Namespace) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import TrainerCallback

    from trl_text2grad import SpanRewardConfig, SpanRewardTrainer
    from trl_text2grad.models import default_model_path, load_default_tokenizer
    from trl_text2grad.reward.evaluation import evaluate_span_reward_model
    from trl_text2grad.reward.scoring import SpanRewardModel

    torch.set_num_threads(args.threads)
    data = load_from_disk(args.data)
    train_ds = data["train"]
    test_ds = data["test"]
    if args.eval_rows and len(test_ds) > args.eval_rows:
        test_ds = test_ds.shuffle(seed=0).select(range(args.eval_rows))

    class TimeBudget(TrainerCallback):
        def __init__(self, seconds: float):
            self.seconds, self.start = seconds, None

        def on_train_begin(self, *a, **k):
            self.start = time.time()

        def on_step_end(self, _args, state, control, **kwargs):
            if time.time() - self.start > self.seconds:
                control.should_training_stop = True

    config = SpanRewardConfig(
        args.out,
        model_form=args.form,
        head_layout=args.layout,
        critique_loss_weight=args.critique_weight,
        span_class_weights=args.class_weights,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=5,
        max_length=args.max_length,
        max_target_length=args.max_target_length,
        max_new_tokens=args.max_new_tokens,
        bf16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    lora = top_layers_lora_config(args.lora_layers)
    trainer = SpanRewardTrainer(
        default_model_path(),
        args=config,
        train_dataset=train_ds,
        processing_class=load_default_tokenizer(),
        peft_config=lora,
        callbacks=[TimeBudget(args.minutes * 60)],
    )
    start = time.time()
    result = trainer.train()
    train_seconds = time.time() - start
    trainer.save_model()
    rm = SpanRewardModel.from_pretrained(args.out, batch_size=args.eval_batch_size)
    start = time.time()
    metrics = evaluate_span_reward_model(rm, test_ds)
    eval_seconds = time.time() - start
    report = {
        "form": args.form,
        "layout": args.layout if args.form == "token_head" else None,
        "train_rows": len(train_ds),
        "train_problems": len(set(train_ds["task_id"])),
        "test_rows": len(test_ds),
        "test_problems": len(set(test_ds["task_id"])),
        "steps": result.global_step,
        "epochs": round(trainer.state.epoch or 0, 2),
        "train_seconds": round(train_seconds, 1),
        "train_loss": round(result.training_loss, 4),
        "eval_seconds": round(eval_seconds, 1),
        "scoring_stats": rm.stats,
        "data_stats": trainer.data_stats,
        "heldout": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
        "lora_layers": args.lora_layers or "all",
        "command": " ".join(sys.argv),
    }
    Path(args.out, "metrics.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", default="runs/reward_data")
    d.add_argument("--per-problem", type=int, default=2)
    d.add_argument("--test-fraction", type=float, default=0.2)
    t = sub.add_parser("train")
    t.add_argument("--data", default="runs/reward_data")
    t.add_argument("--form", choices=["token_head", "generative"], default="token_head")
    t.add_argument("--layout", choices=["repeat", "plain"], default="repeat")
    t.add_argument("--critique-weight", type=float, default=0.0)
    t.add_argument("--class-weights", type=float, nargs=3, default=None)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=5.0)
    t.add_argument("--epochs", type=float, default=3.0)
    t.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: epochs)")
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--max-length", type=int, default=512)
    t.add_argument("--max-new-tokens", type=int, default=200)
    t.add_argument("--max-target-length", type=int, default=256)
    t.add_argument("--eval-rows", type=int, default=96)
    t.add_argument("--eval-batch-size", type=int, default=8)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--lora-layers", type=int, default=8, help="LoRA on the top N layers only (0: all layers)")
    args = parser.parse_args()
    if args.command == "data":
        build_data(Path(args.out), per_problem=args.per_problem, test_fraction=args.test_fraction)
    else:
        train(args)


if __name__ == "__main__":
    main()
