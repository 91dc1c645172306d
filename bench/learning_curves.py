"""Do span rewards learn faster than scalar rewards? One reproducible PPO run per command, plus plotting.

Run (one arm, one seed; writes ``DIR/<task>_<arm>_seed<N>.jsonl`` and ``.csv``, one row per PPO update)::

    python bench/learning_curves.py --task text --arm span --seed 0 --updates 24 --out docs/evidence/runs

Aggregate every run in ``DIR`` (mean ± std across seeds) into PNGs, a summary CSV and a Markdown table::

    python bench/learning_curves.py --plot --out docs/evidence/runs --plot-dir docs/evidence

Arms (equal compute: same model, LoRA, prompts, batch size, number of updates, KL and PPO settings):

- ``span``: ``SpanPPOTrainer(reward_mode="span")``; the reward function returns the critic's character spans, which
  become per-token rewards (+1 good, -1 poor).
- ``scalar``: ``SpanPPOTrainer(reward_mode="scalar")``; the reward function returns the *same* judgement collapsed
  to one number (normalised sum of span scores, see ``trl_text2grad.tasks.programmatic``), placed on the last token.
- ``trl112``: TRL 1.12's classic ``PPOTrainer`` (``trl.experimental.ppo``, in the separate venv made by
  ``scripts/make_trl112_venv.sh``) with the same scalar reward: the critic is wrapped as a sequence-classification
  reward model (``bench/trl112/run_evidence_trl112.py``), and the value function is TRL 1.12's separate value model.
- ``span-vmodel`` / ``scalar-vmodel``: the ``span`` / ``scalar`` arm with a separate, fully trained value model
  (``AutoModelForSequenceClassification`` from the policy checkpoint, as TRL 1.12 has) instead of the value head on
  the policy; separates the effect of the value function from that of the reward shape.

Per update the run records the task metric (success rate of the sampled responses), the mean critic reward (the
scalar collapse, identical for every arm so the curves are comparable), per-criterion rates, the KL to the reference
policy and the wall time. The task prompts depend only on ``--seed``, so the arms see the same prompts in the same
order.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from trl_text2grad.tasks import constrained_text, simple_code
from trl_text2grad.tasks.programmatic import JudgingCritic

ARMS = ("span", "scalar", "trl112", "span-vmodel", "scalar-vmodel")
# The threshold of the "updates to reach it" figure, fixed before the runs (a 32-sample probe of SmolLM2-135M-Instruct
# at temperature 1.0 and 40/48 new tokens succeeded on about 0.35 of the prompts of both tasks; see docs/evidence.md).
DEFAULT_THRESHOLDS = {"text": 0.6, "code": 0.6}
SMOOTH_WINDOW = 3


@dataclass
class EvidenceTask:
    """An evidence task: its prompt rows (``prompts(num, seed)``) and its programmatic critic."""

    name: str
    prompts: Callable[[int, int], list[dict]]
    critic: JudgingCritic

    def judge(self, responses, **context):
        return self.critic.judge(responses, **context)


#: ``--task`` name -> the package task it runs (``trl_text2grad.tasks.constrained_text`` / ``.simple_code``)
TASKS = {
    "text": lambda: EvidenceTask("text", constrained_text.prompt_rows, constrained_text.ConstrainedTextCritic()),
    "code": lambda: EvidenceTask("code", simple_code.prompt_rows, simple_code.SimpleCodeCritic()),
}


def get_task(name: str) -> EvidenceTask:
    if name not in TASKS:
        raise ValueError(f"Unknown evidence task {name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[name]()


class RewardRecorder:
    """The reward function given to the trainer: judges responses with the task critic and records per-call metrics.

    ``mode="span"`` returns character spans ``[(start, end, score)]`` per response; ``mode="scalar"`` returns the
    normalised sum of span scores as a float. Every call is one rollout (one PPO update).
    """

    def __init__(self, task, mode: str):
        self.task = task
        self.mode = mode
        self.records: list[dict] = []
        self.samples: list[dict] = []
        self.start = time.perf_counter()

    def __call__(self, prompts, responses, **context):
        t0 = time.perf_counter()
        judgements = self.task.judge(list(responses), **context)
        n = max(len(judgements), 1)
        record = {
            "success": sum(j.success for j in judgements) / n,
            "critic_reward": sum(j.scalar for j in judgements) / n,
            "num_spans": sum(len(j.spans) for j in judgements) / n,
            "response_chars": sum(len(r) for r in responses) / n,
            "critic_s": time.perf_counter() - t0,
            "wall_s": time.perf_counter() - self.start,
        }
        keys = sorted({k for j in judgements for k in j.details})
        for key in keys:
            record[f"rate_{key}"] = sum(j.details.get(key, 0.0) for j in judgements) / n
        self.records.append(record)
        self.last_judgements = judgements
        if len(self.samples) < 64:
            self.samples.append(
                {
                    "update": len(self.records),
                    "response": responses[0],
                    "context": {key: values[0] for key, values in context.items()},
                    "critique": judgements[0].critique.text,
                    "success": judgements[0].success,
                }
            )
        if self.mode == "span":
            return [list(j.spans) for j in judgements]
        return [j.scalar for j in judgements]


def progress_callback(args, recorder: RewardRecorder, logs: list[dict], run_name: str):
    """A ``TrainerCallback`` that keeps every trainer log in ``logs`` and appends each finished update's row to
    ``OUT/<run_name>.jsonl`` as soon as it is final, so an interrupted run keeps its data. Works with any
    ``transformers.Trainer``-based PPO trainer (ours, and trl 1.12's ``PPOTrainer`` in ``bench/trl112``)."""
    from transformers import TrainerCallback

    os.makedirs(args.out, exist_ok=True)
    partial_path = os.path.join(args.out, f"{run_name}.jsonl")
    open(partial_path, "w").close()
    written = [0]

    class _Progress(TrainerCallback):
        def on_log(self, _args, state, control, logs_=None, **kwargs):
            entry = dict(kwargs.get("logs") or logs_ or {})
            entry["_global_step"] = state.global_step
            entry["_rollouts"] = len(recorder.records)
            logs.append(entry)
            rows = _rows(args, recorder, logs)
            # a rollout's row is final once the trainer logged its KL (the first log after that rollout)
            final = [r for r in rows if not math.isnan(r["kl"])]
            with open(partial_path, "a") as f:
                for row in final[written[0] :]:
                    f.write(json.dumps(row) + "\n")
            written[0] = max(written[0], len(final))

    return _Progress()


def ppo_settings(args, run_name: str) -> dict:
    """The PPO settings every arm shares, as keyword arguments of TRL 1.12's ``PPOConfig`` (``SpanPPOConfig`` keeps
    its field names): batch, epochs, length, sampling, learning rate, KL coefficient, seed and quiet logging."""
    return {
        "output_dir": os.path.join(args.work_dir, run_name),
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "num_mini_batches": args.num_mini_batches,
        "num_ppo_epochs": args.ppo_epochs,
        "total_episodes": args.updates * args.batch_size,
        "response_length": args.response_length,
        "temperature": args.temperature,
        "stop_token": "eos",
        "learning_rate": args.learning_rate,
        "kl_coef": args.kl_coef,
        "seed": args.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "num_sample_generations": 0,
        "local_rollout_forward_batch_size": args.batch_size,  # one reward call per rollout
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def lora_config(args):
    """The LoRA adapter of every arm: rank ``--lora-r``, alpha 2r, no dropout, on all attention and MLP projections."""
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )


def _context_columns(rows: list[dict]) -> list[str]:
    return [k for k in rows[0] if k != "prompt"]


def build_dataset(task, num: int, seed: int):
    from datasets import Dataset

    rows = task.prompts(num, seed)
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    return Dataset.from_dict(columns)


def run_one(args) -> str:
    import torch

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    from trl_text2grad import SpanPPOConfig, SpanPPOTrainer
    from trl_text2grad.models import load_default_model, load_default_tokenizer

    task = get_task(args.task)
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, padding_side="left")
    else:
        tokenizer = load_default_tokenizer()
    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model)
    else:
        model = load_default_model()
    dataset = build_dataset(task, args.updates * args.batch_size, args.seed)
    reward_mode = "span" if args.arm.startswith("span") else "scalar"
    recorder = RewardRecorder(task, reward_mode)
    value_model = None  # a value head on the policy (our default)
    if args.arm.endswith("-vmodel"):  # a separate, fully trained value model, as TRL 1.12 has
        from transformers import AutoModelForSequenceClassification

        from trl_text2grad.models import default_model_path

        value_model = AutoModelForSequenceClassification.from_pretrained(
            args.model or default_model_path(), num_labels=1
        )
        value_model.config.pad_token_id = tokenizer.pad_token_id

    logs: list[dict] = []
    run_name = f"{args.task}_{args.arm}_seed{args.seed}"
    progress = progress_callback(args, recorder, logs, run_name)

    config = SpanPPOConfig(reward_mode=reward_mode, **ppo_settings(args, run_name))
    peft_config = lora_config(args)
    trainer = SpanPPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=model,
        ref_model=None,
        reward_model=recorder,
        train_dataset=dataset,
        value_model=value_model,
        peft_config=peft_config,
        callbacks=[progress],
    )
    t0 = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - t0
    return write_run(args, run_name, recorder, logs, total_s)


def _kl_by_rollout(logs: list[dict]) -> dict[int, float]:
    """Map rollout index (1-based) -> the KL the trainer logged for it (first matching key found)."""
    out: dict[int, float] = {}
    for entry in logs:
        for key in ("objective/kl", "kl", "rollout/kl", "objective/kl_mean"):
            if key in entry and entry["_rollouts"] >= 1:
                out.setdefault(entry["_rollouts"], float(entry[key]))
                break
    return out


def _rows(args, recorder: RewardRecorder, logs: list[dict]) -> list[dict]:
    kl = _kl_by_rollout(logs)
    rows = []
    for i, rec in enumerate(recorder.records, start=1):
        row = {"task": args.task, "arm": args.arm, "seed": args.seed, "update": i, "episodes": i * args.batch_size}
        row.update(rec)
        row["kl"] = kl.get(i, float("nan"))
        rows.append(row)
    return rows


def write_run(args, run_name: str, recorder: RewardRecorder, logs: list[dict], total_s: float) -> str:
    """Write a finished run: ``OUT/<run_name>.jsonl`` and ``.csv`` (one row per update) and ``.meta.json`` (command,
    settings, the trainer's logs, sample responses). Returns the JSONL path. Used by every arm."""
    os.makedirs(args.out, exist_ok=True)
    rows = _rows(args, recorder, logs)
    path = os.path.join(args.out, f"{run_name}.jsonl")
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("task", "arm", "seed", "update"), k))
    with open(os.path.join(args.out, f"{run_name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "run": run_name,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "total_train_s": total_s,
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "trainer_logs": logs,
        "samples": recorder.samples,
    }
    with open(os.path.join(args.out, f"{run_name}.meta.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    print(f"wrote {path} ({len(rows)} updates, {total_s:.0f}s)")
    return path


# ----------------------------------------------------------------------------------------------------------------
# plotting / aggregation
# ----------------------------------------------------------------------------------------------------------------


def _smooth(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def _mean_std(columns: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per-index mean and sample std over the columns that have that index (runs may be of unequal length)."""
    length = max(len(c) for c in columns)
    means, stds = [], []
    for i in range(length):
        vals = [c[i] for c in columns if i < len(c) and not math.isnan(c[i])]
        if not vals:
            means.append(float("nan"))
            stds.append(float("nan"))
            continue
        m = sum(vals) / len(vals)
        means.append(m)
        stds.append(math.sqrt(sum((v - m) ** 2 for v in vals) / max(len(vals) - 1, 1)))
    return means, stds


def updates_to_threshold(success: list[float], threshold: float, window: int = SMOOTH_WINDOW) -> int | None:
    """First update (1-based) whose moving average (``window`` updates) of the success rate reaches ``threshold``."""
    for i, v in enumerate(_smooth(success, window), start=1):
        if i >= window and v >= threshold:
            return i
    return None


def load_runs(directory: str) -> dict[tuple[str, str], dict[int, list[dict]]]:
    runs: dict[tuple[str, str], dict[int, list[dict]]] = defaultdict(dict)
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if rows:
            runs[(rows[0]["task"], rows[0]["arm"])][rows[0]["seed"]] = rows
    return runs


def summarise(runs, thresholds: dict[str, float]) -> list[dict]:
    summary = []
    full_length = defaultdict(int)
    for (task, _), seeds in runs.items():
        full_length[task] = max([full_length[task]] + [len(rows) for rows in seeds.values()])
    for (task, arm), all_seeds in sorted(runs.items()):
        threshold = thresholds.get(task, 0.6)
        # only complete runs enter the summary (an interrupted run is plotted but not summarised)
        seeds = {s: rows for s, rows in all_seeds.items() if len(rows) == full_length[task]}
        partial = sorted(s for s in all_seeds if s not in seeds)
        if not seeds:
            continue
        reached = {s: updates_to_threshold([r["success"] for r in rows], threshold) for s, rows in seeds.items()}
        first3 = [sum(r["success"] for r in rows[:3]) / len(rows[:3]) for rows in seeds.values()]
        last3 = [sum(r["success"] for r in rows[-3:]) / len(rows[-3:]) for rows in seeds.values()]
        last3_reward = [sum(r["critic_reward"] for r in rows[-3:]) / len(rows[-3:]) for rows in seeds.values()]
        wall = [rows[-1]["wall_s"] for rows in seeds.values()]
        kl_last = [rows[-1]["kl"] for rows in seeds.values()]

        def ms(vals):
            vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
            if not vals:
                return float("nan"), float("nan")
            m = sum(vals) / len(vals)
            return m, math.sqrt(sum((v - m) ** 2 for v in vals) / max(len(vals) - 1, 1))

        hits = [v for v in reached.values() if v is not None]
        # pooled over seeds: success of the responses sampled in the second half of the run (binomial standard error)
        late = [r for rows in seeds.values() for r in rows[len(rows) // 2 :]]
        batch = {id(r): r["episodes"] / r["update"] for r in late}  # responses behind each success rate
        late_n = sum(batch.values())
        late_p = sum(r["success"] * batch[id(r)] for r in late) / late_n
        summary.append(
            {
                "task": task,
                "arm": arm,
                "seeds": len(seeds),
                "partial_seeds_excluded": ";".join(str(s) for s in partial),
                "updates": min(len(rows) for rows in seeds.values()),
                "threshold": threshold,
                "success_first3_mean": ms(first3)[0],
                "success_first3_std": ms(first3)[1],
                "success_last3_mean": ms(last3)[0],
                "success_last3_std": ms(last3)[1],
                "critic_reward_last3_mean": ms(last3_reward)[0],
                "critic_reward_last3_std": ms(last3_reward)[1],
                "seeds_reaching_threshold": len(hits),
                "updates_to_threshold": ";".join(
                    "-" if reached[s] is None else str(reached[s]) for s in sorted(reached)
                ),
                "updates_to_threshold_mean_of_reached": (sum(hits) / len(hits)) if hits else float("nan"),
                "success_second_half_pooled": late_p,
                "success_second_half_se": math.sqrt(late_p * (1 - late_p) / late_n),
                "success_second_half_samples": int(late_n),
                "kl_last_mean": ms(kl_last)[0],
                "wall_s_mean": ms(wall)[0],
                "wall_s_std": ms(wall)[1],
            }
        )
    return summary


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = dict(DEFAULT_THRESHOLDS)
    for item in args.threshold or []:
        task, value = item.split("=")
        thresholds[task] = float(value)
    runs = load_runs(args.out)
    if not runs:
        raise SystemExit(f"No run files (*.jsonl) in {args.out!r}; run some arms first (see --help).")
    # interrupted runs (fewer updates than the longest run of their task) are left out of plots and tables
    full = defaultdict(int)
    for (task, _), seeds in runs.items():
        full[task] = max([full[task]] + [len(rows) for rows in seeds.values()])
    for (task, arm), seeds in list(runs.items()):
        for seed in [s for s, rows in seeds.items() if len(rows) < full[task]]:
            print(f"leaving out {task}/{arm}/seed {seed}: {len(seeds[seed])} of {full[task]} updates (interrupted)")
            del seeds[seed]
        if not seeds:
            del runs[(task, arm)]
    plot_dir = args.plot_dir or args.out
    os.makedirs(plot_dir, exist_ok=True)
    colors = {
        "span": "tab:blue",
        "scalar": "tab:orange",
        "trl112": "tab:green",
        "span-vmodel": "tab:purple",
        "scalar-vmodel": "tab:red",
    }
    metrics = [
        ("success", "task success rate"),
        ("critic_reward", "mean critic reward (scalar collapse)"),
        ("kl", "KL to reference"),
    ]
    for task in sorted({t for t, _ in runs}):
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8))
        for ax, (metric, label) in zip(axes, metrics):
            for arm in ARMS:
                seeds = runs.get((task, arm))
                if not seeds:
                    continue
                curves = [
                    _smooth([r.get(metric, float("nan")) for r in rows], SMOOTH_WINDOW) for rows in seeds.values()
                ]
                mean, std = _mean_std(curves)
                xs = list(range(1, len(mean) + 1))
                ax.plot(xs, mean, color=colors[arm], label=f"{arm} (n={len(seeds)})")
                ax.fill_between(
                    xs,
                    [m - s for m, s in zip(mean, std)],
                    [m + s for m, s in zip(mean, std)],
                    color=colors[arm],
                    alpha=0.2,
                )
            if metric == "success":
                ax.axhline(thresholds.get(task, 0.6), color="grey", linestyle=":", linewidth=1, label="threshold")
            ax.set_xlabel("PPO update")
            ax.set_title(label, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{task}: mean ± std across seeds ({SMOOTH_WINDOW}-update moving average per seed)", fontsize=10)
        fig.tight_layout()
        out = os.path.join(plot_dir, f"{task}_curves.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        print(f"wrote {out}")
    summary = summarise(runs, thresholds)
    path = os.path.join(plot_dir, "summary.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    print(f"wrote {path}")
    print(markdown_table(summary))
    print()
    print(halves_table(runs))
    paired = paired_table(runs)
    if paired:
        print()
        print(paired)
        with open(os.path.join(plot_dir, "paired.md"), "w") as f:
            f.write(paired + "\n")


def halves_table(runs) -> str:
    """Markdown table: every recorded rate, averaged over the first and the second half of each complete run, then
    over seeds (shows *what* changed, e.g. which constraint of the text task)."""
    lines = ["| task | arm | seeds | metric | first half | second half |", "|---|---|---|---|---|---|"]
    full = defaultdict(int)
    for (task, _), seeds in runs.items():
        full[task] = max([full[task]] + [len(r) for r in seeds.values()])
    for (task, arm), seeds in sorted(runs.items()):
        complete = [rows for rows in seeds.values() if len(rows) == full[task]]
        if not complete:
            continue
        half = full[task] // 2
        # a rate missing from a row means no response of that rollout had the flag: 0
        keys = ["success", "critic_reward"] + sorted(
            {k for rows in complete for r in rows for k in r if k.startswith("rate_")}
        )
        keys += ["response_chars", "kl"]
        for key in keys:
            first = sum(sum(r.get(key, 0.0) for r in rows[:half]) / half for rows in complete) / len(complete)
            second = sum(sum(r.get(key, 0.0) for r in rows[half:]) / (len(rows) - half) for rows in complete)
            second /= len(complete)
            lines.append(f"| {task} | {arm} | {len(complete)} | {key} | {first:.3f} | {second:.3f} |")
    return "\n".join(lines)


def paired_table(runs, baselines: tuple[str, ...] = ("scalar", "trl112", "scalar-vmodel")) -> str:
    """Markdown lines: per task, the span arm minus each other arm in success over the second half of the run, paired
    by seed (complete runs of both arms), with the mean and its bootstrap 95 % CI over the seeds; and the pooled
    responses of the second halves with a two-proportion 95 % interval (ignores the correlation within a run)."""
    from trl_text2grad.reward.evaluation import bootstrap_mean_ci

    def second_half(rows):
        part = rows[len(rows) // 2 :]
        n = sum(r["episodes"] / r["update"] for r in part)
        k = sum(r["success"] * r["episodes"] / r["update"] for r in part)
        return sum(r["success"] for r in part) / len(part), k, n

    lines = []
    full = defaultdict(int)
    for (task, _), seeds in runs.items():
        full[task] = max([full[task]] + [len(r) for r in seeds.values()])
    for task in sorted(full):
        span = {s: rows for s, rows in runs.get((task, "span"), {}).items() if len(rows) == full[task]}
        for other in baselines:
            theirs = {s: rows for s, rows in runs.get((task, other), {}).items() if len(rows) == full[task]}
            common = sorted(set(span) & set(theirs))
            if not common:
                continue
            diffs = [second_half(span[s])[0] - second_half(theirs[s])[0] for s in common]
            mean, low, high = bootstrap_mean_ci(diffs)
            ka, na = (sum(second_half(span[s])[i] for s in common) for i in (1, 2))
            kb, nb = (sum(second_half(theirs[s])[i] for s in common) for i in (1, 2))
            pa, pb = ka / na, kb / nb
            se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
            lines.append(
                f"- {task}, {full[task]} updates: span − {other}, success over updates {full[task] // 2 + 1}-"
                f"{full[task]}: " + ", ".join(f"{d:+.3f}" for d in diffs) + f" (seeds {common}); mean {mean:+.3f}, "
                f"bootstrap 95% CI [{low:+.3f}, {high:+.3f}]; pooled {ka:.0f}/{na:.0f} = {pa:.3f} vs "
                f"{kb:.0f}/{nb:.0f} = {pb:.3f}, {pa - pb:+.3f} [{pa - pb - 1.96 * se:+.3f}, {pa - pb + 1.96 * se:+.3f}]"
            )
    return "\n".join(lines)


def markdown_table(summary: list[dict]) -> str:
    head = (
        "| task | arm | seeds | updates | success, updates 1-3 | success, last 3 updates | success, 2nd half pooled "
        "| critic reward, last 3 | updates to threshold (per seed) | final KL | wall time (s) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for s in summary:
        lines.append(
            f"| {s['task']} | {s['arm']} | {s['seeds']} | {s['updates']} | {s['success_first3_mean']:.2f} ± "
            f"{s['success_first3_std']:.2f} | {s['success_last3_mean']:.2f} ± {s['success_last3_std']:.2f} | "
            f"{s['success_second_half_pooled']:.2f} ± {s['success_second_half_se']:.2f} (n={s['success_second_half_samples']}) | "
            f"{s['critic_reward_last3_mean']:.2f} ± {s['critic_reward_last3_std']:.2f} | ≥{s['threshold']}: "
            f"{s['updates_to_threshold']} | {s['kl_last_mean']:.3f} | {s['wall_s_mean']:.0f} ± {s['wall_s_std']:.0f} |"
        )
    return "\n".join(lines)


def trl112_python() -> str:
    """The interpreter of the trl==1.12.0 venv (``$TRL112_VENV``, default ``~/.cache/trl_text2grad/trl112-venv``)."""
    venv = os.environ.get(
        "TRL112_VENV", os.path.join(os.path.expanduser("~"), ".cache", "trl_text2grad", "trl112-venv")
    )
    return os.path.join(venv, "bin", "python")


def run_trl112(args, argv: list[str]) -> None:
    """Run the ``trl112`` arm: ``bench/trl112/run_evidence_trl112.py`` in the trl 1.12 venv, same arguments.

    The policy (``--model``, default the packaged SmolLM2-135M-Instruct checkpoint, converted here first) and the
    tokenizer (``--tokenizer``) are passed as paths, because the trl 1.12 venv does not have this package."""
    import subprocess

    python = trl112_python()
    if not os.path.exists(python):
        raise SystemExit(
            f"--arm trl112 needs the trl==1.12.0 venv, and {python} does not exist. Create it with "
            "`bash scripts/make_trl112_venv.sh` (needs the package registry; set TRL112_VENV to use another place)."
        )
    argv = list(argv)
    if args.model is None or args.tokenizer is None:
        from trl_text2grad.models import default_model_path

        path = default_model_path()  # converts the packaged GGUF once, if needed
        if args.model is None:
            argv += ["--model", path]
        if args.tokenizer is None:
            argv += ["--tokenizer", path]
    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trl112", "run_evidence_trl112.py")
    result = subprocess.run([python, runner, *argv])
    if result.returncode != 0:
        raise SystemExit(f"the trl 1.12 arm failed (exit {result.returncode}); its output is above.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="text",
        help="Evidence task: text = trl_text2grad.tasks.constrained_text, code = trl_text2grad.tasks.simple_code.",
    )
    parser.add_argument("--arm", choices=ARMS, default="span", help="Reward arm.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the prompts order, sampling and LoRA init.")
    parser.add_argument("--updates", type=int, default=24, help="Number of PPO updates (rollouts).")
    parser.add_argument("--batch-size", type=int, default=8, help="Prompts per rollout.")
    parser.add_argument("--response-length", type=int, default=40, help="Maximum new tokens per response.")
    parser.add_argument("--ppo-epochs", type=int, default=2, help="PPO epochs per rollout.")
    parser.add_argument("--num-mini-batches", type=int, default=1, help="Mini-batches per PPO epoch.")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="LoRA learning rate.")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="KL penalty coefficient.")
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature.")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 r).")
    parser.add_argument(
        "--model",
        default=None,
        help="Policy path (default: the packaged SmolLM2-135M-Instruct; tests pass tiny models).",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="Tokenizer path (default: the packaged SmolLM2-135M-Instruct tokenizer).",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    parser.add_argument("--out", default="docs/evidence/runs", help="Directory of the per-run JSONL/CSV files.")
    parser.add_argument("--work-dir", default="/tmp/t2g-evidence", help="Trainer output_dir root (not kept).")
    parser.add_argument("--plot", action="store_true", help="Aggregate the runs in --out instead of training.")
    parser.add_argument("--plot-dir", default=None, help="Where --plot writes PNGs and summary.csv (default --out).")
    parser.add_argument("--threshold", action="append", help="TASK=VALUE success threshold for --plot (repeatable).")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.plot:
        plot(args)
    elif args.arm == "trl112":
        run_trl112(args, argv if argv is not None else sys.argv[1:])
    else:
        run_one(args)


if __name__ == "__main__":
    main()
