"""The whole Text2Grad pipeline, offline: critic -> span reward model -> PPO driven by the reward model only.

One command per stage (raw outputs under ``docs/evidence/pipeline/``)::

    # (a) sample responses of SmolLM2-135M-Instruct to the text task's prompts, annotate them with the task's critic
    python bench/pipeline_evidence.py data --per-topic 48
    # (b) train the token-level span reward model (LoRA, SpanRewardTrainer) on the annotations of the training
    #     topics, evaluate it on the held-out topics against the trivial baselines; and the scalar reward model
    #     (same trainer, same rows, the annotation collapsed to one number per response)
    python bench/pipeline_evidence.py train-rm --kind span --max-steps 300
    python bench/pipeline_evidence.py train-rm --kind scalar --max-steps 300
    # (c) PPO, one run per command (arm, seed, KL coefficient)
    python bench/pipeline_evidence.py ppo --arm rm-span --seed 0 --kl-coef 0.05 --updates 12
    # (d) tables, plots and bootstrap confidence intervals over every finished run (of runs/, or of another
    #     folder: ppo --out docs/evidence/pipeline/runs30 ... then report --runs runs30)
    python bench/pipeline_evidence.py report

Every stage takes ``--task text`` (the default; outputs in ``docs/evidence/pipeline/``, reward models in
``/tmp/t2g-pipeline/``) or ``--task code`` (``trl_text2grad.tasks.simple_code``: 42 generated Python problems, split
by problem with the same ``split_items`` partition, annotated by the sandboxed unit-test critic
``SimpleCodeCritic``; outputs in ``docs/evidence/pipeline_code/``, reward models in ``/tmp/t2g-pipeline-code/``).

Data (``data``): the text task is ``trl_text2grad.tasks.constrained_text`` (16 topics, one prompt per topic).
Its fixed topic split (``split_items(TOPICS, ..., test_fraction=0.25, seed=0)``: 12 train topics, 4 test topics)
is the held-out split BY PROMPT of the reward model. Within the train topics a further ``--indist-fraction`` of the
responses is held out too (new responses to prompts the reward model was trained on: what it sees during PPO, whose
prompts are the train topics). Responses are sampled as PPO samples them (temperature 0.7, no top-k/top-p, at most
32 new tokens, stop at ``<|im_end|>``) and annotated through ``trl_text2grad.annotate`` with the task's critic.

PPO arms (``ppo``; all ``SpanPPOTrainer`` with the settings of ``bench/learning_curves.py``: LoRA r=16, batch 8,
32 new tokens, 2 PPO epochs, lr 3e-4, temperature 0.7, value head; prompts: the train topics):

- ``rm-span``: the trained span reward model is the ONLY reward (``reward_mode="span"``: its predicted good/poor
  spans become per-token +1/-1 rewards);
- ``critic-span``: the critic's spans directly (``bench/learning_curves.py --arm span``);
- ``rm-scalar``: the scalar reward model (``reward_mode="scalar"``: the mean of its per-token rewards over the
  response, one number on the last token).

Every rollout is also judged by the critic (success, critic reward, per-criterion rates) in every arm; the run
files have ``bench/learning_curves.py``'s format (one JSON line per update) plus the reward model's agreement with
the critic on that rollout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_OUT = "docs/evidence/pipeline"
DEFAULT_WORK = "/tmp/t2g-pipeline"
ARMS = ("rm-span", "critic-span", "rm-scalar")


# ----------------------------------------------------------------------------------------------------------------
# (a) data
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineTask:
    """What the pipeline needs of a task: its prompt groups (``items``: the text task's topics, one prompt each; the
    code task's problems), a row per item, the critic and the critic's context columns.

    The rows' ``topic`` field names the item a response answers (the text task's topic; the code task's function
    name): the reward model's held-out split is by that field.
    """

    name: str
    items: tuple
    items_label: str  # what the items are called in the report ("topics", "problems")
    item_name: Callable[[Any], str]
    make_row: Callable[[Any], dict]
    prompt_rows: Callable[[int, int, list], list[dict]]
    make_critic: Callable[[], Any]
    context_columns: tuple[str, ...]
    default_out: str
    default_work: str


def _text_task() -> PipelineTask:
    from trl_text2grad.tasks import constrained_text

    return PipelineTask(
        name="text",
        items=constrained_text.TOPICS,
        items_label="topics",
        item_name=lambda topic: topic[0],
        make_row=lambda topic: constrained_text.make_row(topic[0], topic[1], [topic[2], topic[3]]),
        prompt_rows=constrained_text.prompt_rows,
        make_critic=constrained_text.ConstrainedTextCritic,
        context_columns=("required", "forbidden"),
        default_out=DEFAULT_OUT,
        default_work=DEFAULT_WORK,
    )


def _code_task() -> PipelineTask:
    from trl_text2grad.tasks import simple_code

    return PipelineTask(
        name="code",
        items=simple_code.PROBLEMS,
        items_label="problems",
        item_name=lambda problem: problem.entry_point,
        make_row=lambda problem: simple_code.prompt_rows(1, 0, [problem])[0],
        prompt_rows=simple_code.prompt_rows,
        make_critic=simple_code.SimpleCodeCritic,
        context_columns=("entry_point", "tests"),
        default_out=DEFAULT_OUT + "_code",
        default_work=DEFAULT_WORK + "-code",
    )


PIPELINE_TASKS = {"text": _text_task, "code": _code_task}


def get_pipeline_task(name: str) -> PipelineTask:
    if name not in PIPELINE_TASKS:
        raise SystemExit(f"unknown task {name!r}; choose one of {sorted(PIPELINE_TASKS)}")
    return PIPELINE_TASKS[name]()


def item_split(task: PipelineTask, test_fraction: float = 0.25, seed: int = 0) -> tuple[list, list]:
    """The task's fixed partition of its items (train items, test items): the reward model's split by prompt."""
    from trl_text2grad.tasks.programmatic import split_items

    return split_items(task.items, "train", test_fraction, seed), split_items(task.items, "test", test_fraction, seed)


def judge_rows(task: PipelineTask, rows: list[dict]) -> list:
    """The task critic's judgements of ``rows`` (their ``response`` and context columns)."""
    context = {c: [r[c] for r in rows] for c in task.context_columns}
    return task.make_critic().judge([r["response"] for r in rows], **context)


def sample_responses(rows: list[dict], temperature: float, max_new_tokens: int, batch_size: int, seed: int):
    """Sample one response per row from the default policy, as PPO's rollout samples (pure temperature sampling)."""
    import torch

    from trl_text2grad.models import load_default_model, load_default_tokenizer

    torch.manual_seed(seed)
    tokenizer = load_default_tokenizer()
    model = load_default_model()
    model.eval()
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for begin in range(0, len(rows), batch_size):
        batch = rows[begin : begin + batch_size]
        texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=stop_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = generated[:, enc["input_ids"].shape[1] :]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
        print(f"sampled {len(out)}/{len(rows)}", flush=True)
    return out


def cmd_data(args) -> None:
    import torch

    from trl_text2grad.annotate import annotate, format_summary, summarize

    torch.set_num_threads(args.threads)
    task = get_pipeline_task(args.task)
    train_items, test_items = item_split(task)
    test_names = {task.item_name(item) for item in test_items}
    rng = random.Random(args.seed)
    rows = []
    for item in task.items:
        name = task.item_name(item)
        split = "test" if name in test_names else "train"
        for i in range(args.per_topic):
            row = task.make_row(item)
            row.update({"topic": name, "split": split, "sample": i})
            rows.append(row)
    # in-distribution held-out responses: a fixed share of each train item's samples
    for item in train_items:
        idx = [i for i, r in enumerate(rows) if r["topic"] == task.item_name(item)]
        for i in rng.sample(idx, round(len(idx) * args.indist_fraction)):
            rows[i]["split"] = "indist"
    t0 = time.perf_counter()
    responses = sample_responses(rows, args.temperature, args.response_length, args.batch_size, args.seed)
    sample_s = time.perf_counter() - t0
    for row, response in zip(rows, responses):
        row["response"] = response
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "annotations.jsonl"
    t0 = time.perf_counter()
    records = annotate(
        rows,
        task.make_critic(),
        path,
        batch_size=64,
        context_columns={c: c for c in task.context_columns},
        resume=False,
        progress=False,
        return_dataset=False,
    )
    annotate_s = time.perf_counter() - t0
    summary = summarize(records)
    print(format_summary(summary))
    meta = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "task": task.name,
        "rows": len(records),
        "rows_by_split": {s: sum(r["split"] == s for r in records) for s in ("train", "indist", "test")},
        "train_topics": [task.item_name(item) for item in train_items],
        "test_topics": sorted(test_names),
        "sample_s": round(sample_s, 1),
        "annotate_s": round(annotate_s, 2),
        "annotate_summary": summary,
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
    }
    (out / "annotations.meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(json.dumps(meta, indent=1, default=str))


# ----------------------------------------------------------------------------------------------------------------
# (b) reward models
# ----------------------------------------------------------------------------------------------------------------


def load_splits(path: str) -> dict[str, list[dict]]:
    """The annotated rows by split (``train``, ``indist``, ``test``); rows whose annotation failed are dropped
    (counted)."""
    from trl_text2grad.annotate import read_annotations

    rows = read_annotations(path)
    bad = [r for r in rows if r.get("row_error")]
    if bad:
        print(f"dropping {len(bad)} rows whose annotation failed")
    rows = [r for r in rows if not r.get("row_error")]
    return {split: [r for r in rows if r["split"] == split] for split in ("train", "indist", "test")}


def _spans(prediction) -> list[tuple[int, int, float]]:
    return [(s.start, s.end, s.score) for s in prediction.spans]


def evaluate_rm(rm, rows: list[dict], train_rows: list[dict], tokenizer, with_baselines: bool) -> dict:
    """Token-level span metrics and sequence-level agreement of ``rm`` on ``rows`` (references: the critic's
    annotation), and, with ``with_baselines``, the same for all-good / all-poor / random at the training rates."""
    from trl_text2grad.reward.evaluation import (
        constant_predictions,
        random_baseline_metrics,
        random_sequence_baseline,
        reference_spans,
        sequence_agreement,
        span_metrics,
        token_label_rates,
    )

    prompts = [r["prompt"] for r in rows]
    responses = [r["response"] for r in rows]
    references = [reference_spans(r) for r in rows]
    t0 = time.perf_counter()
    predictions = rm.predict(prompts, responses)
    score_s = time.perf_counter() - t0
    keep = ("good_precision", "good_recall", "good_f1", "poor_precision", "poor_recall", "poor_f1")
    keep += ("span_precision", "span_recall", "exact_span_precision", "exact_span_recall")
    result = {"num_rows": len(rows), "score_s": round(score_s, 2)}
    metrics = span_metrics(responses, predictions, references, tokenizer)
    result["rm"] = {k: metrics[k] for k in keep} | sequence_agreement([_spans(p) for p in predictions], references)
    if not with_baselines:
        return result
    train_refs = [reference_spans(r) for r in train_rows]
    rates = token_label_rates([r["response"] for r in train_rows], train_refs, tokenizer)
    test_counts = token_label_rates(responses, references, tokenizer)
    result["train_token_rates"] = rates
    result["eval_token_counts"] = test_counts
    baselines = {}
    for name, score in (("all_good", 1.0), ("all_poor", -1.0)):
        constant = constant_predictions(responses, score)
        m = span_metrics(responses, constant, references, tokenizer)
        baselines[name] = {k: m[k] for k in keep} | sequence_agreement(constant, references)
    baselines["random_at_train_rates"] = random_baseline_metrics(
        test_counts, rates["good_rate"], rates["poor_rate"]
    ) | random_sequence_baseline(train_refs, references)
    result["baselines"] = baselines
    return result


def cmd_train_rm(args) -> None:
    import torch
    from datasets import Dataset
    from reward_real_run import top_layers_lora_config
    from transformers import TrainerCallback

    from trl_text2grad import SpanRewardConfig, SpanRewardTrainer
    from trl_text2grad.models import default_model_path, load_default_tokenizer
    from trl_text2grad.reward.data import collapse_to_sequence_label
    from trl_text2grad.reward.scoring import SpanRewardModel

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    splits = load_splits(os.path.join(args.out, "annotations.jsonl"))
    train_rows = splits["train"]
    fit_rows = train_rows if args.kind == "span" else [collapse_to_sequence_label(r) for r in train_rows]
    columns = ("prompt", "response", "critique", "good_spans", "poor_spans")
    train_ds = Dataset.from_list([{k: r[k] for k in columns} for r in fit_rows])
    tokenizer = load_default_tokenizer()
    out_dir = os.path.join(args.work_dir, f"rm_{args.kind}")
    curve: list[dict] = []
    previous = Path(args.out, f"rm_{args.kind}.json")
    if args.init_from and previous.exists():  # keep the earlier part of the training curve
        curve = json.loads(previous.read_text())["curve"]
        previous.rename(Path(args.out, f"rm_{args.kind}_part1.json"))
    eval_rows = splits["test"][: args.curve_rows] if args.curve_rows else splits["test"]

    class Monitor(TrainerCallback):
        """Stops at the time budget; evaluates on the held-out topics every ``--eval-every`` steps."""

        trainer = None
        start = None

        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, _args, state, control, **kwargs):
            elapsed = time.perf_counter() - self.start
            if args.eval_every and state.global_step % args.eval_every == 0:
                rm = self.trainer.span_reward_model(batch_size=16)
                point = evaluate_rm(rm, eval_rows, train_rows, tokenizer, with_baselines=False)
                point.update(
                    {"step": state.global_step + args.steps_before, "train_s": round(elapsed + args.seconds_before, 1)}
                )
                point["loss"] = next((e["loss"] for e in reversed(state.log_history) if "loss" in e), None)
                curve.append(point)
                m = point["rm"]
                print(
                    f"step {state.global_step} ({elapsed:.0f}s): good F1 {m['good_f1']} poor F1 {m['poor_f1']} "
                    f"sign acc {m['sign_accuracy']:.3f} success acc {m['success_accuracy']:.3f}",
                    flush=True,
                )
                Path(args.out, f"rm_{args.kind}_curve.json").write_text(json.dumps(curve, indent=1))
            if elapsed > args.minutes * 60:
                control.should_training_stop = True

    config = SpanRewardConfig(
        out_dir,
        model_form="token_head",
        head_layout="repeat",
        span_class_weights=args.class_weights,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        max_steps=args.max_steps,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=10,
        max_length=256,
        bf16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    model, peft_config = default_model_path(), top_layers_lora_config(args.lora_layers)
    if args.init_from:  # continue training a saved reward model (its adapter and head), e.g. with a larger budget
        model = SpanRewardModel.from_pretrained(args.init_from, device="cpu", merge_adapter=False).model
        for name, param in model.named_parameters():
            param.requires_grad = "lora_" in name or name.startswith("span_head")
        if args.class_weights is not None:  # the class weights of the continued training
            del model.class_weights
            model.register_buffer("class_weights", torch.tensor(args.class_weights, dtype=torch.float32))
        model.train()
        peft_config = None
    monitor = Monitor()
    trainer = SpanRewardTrainer(
        model,
        args=config,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[monitor],
    )
    monitor.trainer = trainer
    t0 = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - t0
    eval_in_curve_s = sum(p["score_s"] for p in curve)
    trainer.save_model(out_dir)
    rm = SpanRewardModel.from_pretrained(out_dir, batch_size=16)
    report = {
        "kind": args.kind,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "saved_to": out_dir,
        "train_rows": len(train_rows),
        "train_topics": sorted({r["topic"] for r in train_rows}),
        "steps": result.global_step + args.steps_before,
        "continued_from": args.init_from,
        "epochs": round(trainer.state.epoch or 0, 2),
        "train_s_total": round(train_s + args.seconds_before, 1),
        "train_s_without_curve_evals": round(train_s + args.seconds_before - eval_in_curve_s, 1),
        "train_loss": round(result.training_loss, 4),
        "data_stats": trainer.data_stats,
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "heldout_topics": evaluate_rm(rm, splits["test"], train_rows, tokenizer, with_baselines=True),
        "indist_responses": evaluate_rm(rm, splits["indist"], train_rows, tokenizer, with_baselines=True),
        "curve": curve,
    }
    report["heldout_topics"]["topics"] = sorted({r["topic"] for r in splits["test"]})
    Path(args.out, f"rm_{args.kind}.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "curve"}, indent=1, default=str))


def gate(report: dict, f1_margin: float = 0.10, accuracy_margin: float = 0.05) -> tuple[bool, list[str]]:
    """Q1 of docs/evidence.md: on the held-out topics, good F1 and poor F1 each beat the best trivial baseline by
    ``f1_margin``, sign and success accuracy each by ``accuracy_margin``. Returns (passed, one line per check)."""
    heldout = report["heldout_topics"]
    passed = True
    checks = [("good_f1", f1_margin), ("poor_f1", f1_margin), ("sign_accuracy", accuracy_margin)]
    checks.append(("success_accuracy", accuracy_margin))
    lines = []
    for key, margin in checks:
        value = heldout["rm"][key] or 0.0
        best_name, best = max(((n, b[key] or 0.0) for n, b in heldout["baselines"].items()), key=lambda x: x[1])
        ok = value >= best + margin
        passed &= ok
        lines.append(
            f"{key}: RM {value:.3f} vs best baseline {best:.3f} ({best_name}) + {margin}: {'pass' if ok else 'FAIL'}"
        )
    return passed, lines


def cmd_gate(args) -> None:
    report = json.loads(Path(args.out, f"rm_{args.kind}.json").read_text())
    passed, lines = gate(report)
    print("\n".join(lines))
    print(f"gate {'passed' if passed else 'FAILED'} ({report['steps']} steps, {report['train_s_total']:.0f} s)")
    raise SystemExit(0 if passed else 1)


# ----------------------------------------------------------------------------------------------------------------
# (c) PPO
# ----------------------------------------------------------------------------------------------------------------


def make_recorder(task, mode: str, rm, kl_coef: float):
    """``learning_curves.RewardRecorder`` (the critic judges and records every rollout) whose reward, when ``rm`` is
    given, is the reward model's predicted spans instead of the critic's; it also records how far the reward
    model agrees with the critic on the rollout."""
    from learning_curves import RewardRecorder

    from trl_text2grad.reward.evaluation import sequence_agreement

    class PipelineRecorder(RewardRecorder):
        def __call__(self, prompts, responses, **context):
            critic_out = super().__call__(prompts, responses, **context)
            record = self.records[-1]
            record["kl_coef"] = kl_coef
            if rm is None:
                return critic_out
            t0 = time.perf_counter()
            predictions = [_spans(p) for p in rm.predict(list(prompts), list(responses))]
            record["rm_s"] = time.perf_counter() - t0
            judgements = self.last_judgements  # the critic's verdicts on this rollout (judged once)
            agreement = sequence_agreement(predictions, [j.spans for j in judgements])
            record["rm_sign_agreement"] = agreement["sign_accuracy"]
            record["rm_success_agreement"] = agreement["success_accuracy"]
            record["rm_predicted_success"] = agreement["predicted_success_rate"]
            return predictions

    return PipelineRecorder(task, mode)


def cmd_ppo(args) -> None:
    import torch
    from datasets import Dataset
    from learning_curves import get_task, lora_config, ppo_settings, progress_callback, write_run

    from trl_text2grad import SpanPPOConfig, SpanPPOTrainer
    from trl_text2grad.models import load_default_model, load_default_tokenizer
    from trl_text2grad.reward.scoring import SpanRewardModel

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    task = get_pipeline_task(args.task)
    # the fields learning_curves' helpers read
    args.num_mini_batches, args.ppo_epochs, args.lora_r = 1, 2, 16
    rm = None
    if args.arm.startswith("rm-"):
        kind = args.arm.split("-", 1)[1]
        path = args.rm_dir or os.path.join(args.work_dir, f"rm_{kind}")
        rm = SpanRewardModel.from_pretrained(path, batch_size=args.batch_size)
    train_items, _ = item_split(task)
    rows = task.prompt_rows(args.updates * args.batch_size, args.seed, train_items)
    dataset = Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})
    reward_mode = "scalar" if args.arm == "rm-scalar" else "span"
    recorder = make_recorder(get_task(task.name), reward_mode, rm, args.kl_coef)
    run_name = f"{task.name}_{args.arm}_kl{args.kl_coef:g}_seed{args.seed}"
    logs: list[dict] = []
    progress = progress_callback(args, recorder, logs, run_name)
    config = SpanPPOConfig(reward_mode=reward_mode, **ppo_settings(args, run_name))
    trainer = SpanPPOTrainer(
        args=config,
        processing_class=load_default_tokenizer(),
        model=load_default_model(),
        ref_model=None,
        reward_model=recorder,
        train_dataset=dataset,
        peft_config=lora_config(args),
        callbacks=[progress],
    )
    t0 = time.perf_counter()
    trainer.train()
    write_run(args, run_name, recorder, logs, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------------
# (d) report
# ----------------------------------------------------------------------------------------------------------------

COLORS = {"rm-span": "tab:blue", "critic-span": "tab:green", "rm-scalar": "tab:orange"}


def load_pipeline_runs(directory: str) -> dict[tuple[str, float], dict[int, list[dict]]]:
    """Complete runs by (arm, kl_coef) and seed; interrupted runs (fewer updates than the longest) are left out."""
    import glob

    runs: dict[tuple[str, float], dict[int, list[dict]]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if rows:
            runs.setdefault((rows[0]["arm"], float(rows[0]["kl_coef"])), {})[rows[0]["seed"]] = rows
    full = max((len(r) for seeds in runs.values() for r in seeds.values()), default=0)
    for key, seeds in list(runs.items()):
        for seed in [s for s, r in seeds.items() if len(r) < full]:
            print(f"leaving out {key[0]} kl {key[1]} seed {seed}: {len(seeds[seed])} of {full} updates (interrupted)")
            del seeds[seed]
        if not seeds:
            del runs[key]
    return runs


def late(rows: list[dict], key: str) -> float:
    """Mean of ``key`` over the second half of a run (updates ``n // 2 + 1`` .. ``n``)."""
    part = rows[len(rows) // 2 :]
    return sum(r[key] for r in part) / len(part)


def early_window(num_updates: int) -> int:
    """Updates at the start of a run that count as "before learning": ``max(3, n // 6)`` (3 of 12, 5 of 30)."""
    return max(3, num_updates // 6)


def early(rows: list[dict], key: str) -> float:
    """Mean of ``key`` over the first ``early_window(len(rows))`` updates."""
    part = rows[: early_window(len(rows))]
    return sum(r[key] for r in part) / len(part)


def untrained_success(annotations: str, task: PipelineTask) -> tuple[float, int]:
    """The untrained policy's success on the train items (the train and in-distribution rows of (a)), judged again
    by the task's critic."""
    splits = load_splits(annotations)
    judged = judge_rows(task, splits["train"] + splits["indist"])
    return sum(j.success for j in judged) / len(judged), len(judged)


def matched_kl_difference(points: dict[str, list[tuple[float, float]]], a: str, b: str, resamples: int = 10000):
    """Success of arm ``a`` minus arm ``b`` at the median KL of their runs, from a least-squares line per arm
    (``points[arm]`` = [(kl, success)] per run); 95 % CI from resampling each arm's runs."""
    import numpy as np

    at = float(np.median([k for arm in (a, b) for k, _ in points[arm]]))

    def value(pa, pb):
        out = []
        for p in (pa, pb):
            x, y = np.array([q[0] for q in p]), np.array([q[1] for q in p])
            if np.ptp(x) == 0:
                return None
            slope, intercept = np.polyfit(x, y, 1)
            out.append(intercept + slope * at)
        return out[0] - out[1]

    rng = np.random.default_rng(0)
    draws = []
    for _ in range(resamples):
        pa = [points[a][i] for i in rng.integers(0, len(points[a]), len(points[a]))]
        pb = [points[b][i] for i in rng.integers(0, len(points[b]), len(points[b]))]
        v = value(pa, pb)
        if v is not None:
            draws.append(v)
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"at_kl": at, "difference": value(points[a], points[b]), "ci": [float(low), float(high)]}


def rm_tables(out: str) -> str:
    """Markdown tables of every ``rm_*.json`` report in ``out``: held-out topics and in-distribution responses,
    reward models against the trivial baselines."""
    import glob

    keys = ["good_precision", "good_recall", "good_f1", "poor_precision", "poor_recall", "poor_f1"]
    keys += ["sign_accuracy", "success_accuracy"]
    reports = []
    for path in sorted(glob.glob(os.path.join(out, "rm_*.json"))):
        if path.endswith("_curve.json"):
            continue
        report = json.loads(Path(path).read_text())
        if "heldout_topics" in report:
            reports.append((Path(path).stem, report))
    reports.sort(key=lambda x: (x[1]["kind"], x[1]["steps"]))
    text = []
    for part, title in (("heldout_topics", "held-out topics"), ("indist_responses", "in-distribution responses")):
        if not reports:
            break
        n = reports[0][1][part]["num_rows"]
        text += [f"{title} ({n} responses)", ""]
        text.append("| model | steps | epochs | train s | " + " | ".join(keys) + " |")
        text.append("|---" * (len(keys) + 4) + "|")

        def fmt(v):
            return "—" if v is None else f"{v:.3f}"

        for name, report in reports:
            m = report[part]["rm"]
            text.append(
                f"| {report['kind']} RM ({name}) | {report['steps']} | "
                f"{report['steps'] * report['settings']['batch_size'] / report['train_rows']:.2f} | "
                f"{report['train_s_without_curve_evals']:.0f} | " + " | ".join(fmt(m[k]) for k in keys) + " |"
            )
        for bname, b in reports[-1][1][part]["baselines"].items():
            text.append(f"| baseline: {bname} | | | | " + " | ".join(fmt(b.get(k)) for k in keys) + " |")
        text.append("")
    return "\n".join(text)


def cmd_report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trl_text2grad.reward.evaluation import bootstrap_mean_ci

    tables = rm_tables(args.out)
    print(tables)
    Path(args.out, "rm_summary.md").write_text(tables + "\n")
    runs = load_pipeline_runs(os.path.join(args.out, args.runs))
    if not runs:
        raise SystemExit(f"no complete run files in {args.out}/{args.runs}")
    # outputs of the default run folder keep their names; another folder's get its name as a suffix
    tag = "" if args.runs == "runs" else f"_{args.runs}"
    num_updates = len(next(iter(next(iter(runs.values())).values())))
    first = early_window(num_updates)
    task = get_pipeline_task(args.task)
    base, base_n = untrained_success(os.path.join(args.out, "annotations.jsonl"), task)
    lines = [f"Untrained policy, train {task.items_label}: success {base:.3f} (n={base_n})", ""]
    lines.append(
        f"| arm | kl_coef | seeds | success, updates 1-{first} | success, 2nd half (per seed) | mean [95% CI] "
        f"| rise: 2nd half − updates 1-{first} (per seed) | mean rise [95% CI] "
        "| KL, 2nd half (per seed) | final KL | RM agrees with critic (success verdict) | wall s |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary: dict = {"untrained_success": base, "untrained_n": base_n, "arms": {}}
    order = sorted(runs, key=lambda k: (k[1], ARMS.index(k[0]) if k[0] in ARMS else 9))
    for arm, kl in order:
        seeds = runs[(arm, kl)]
        ss = sorted(seeds)
        succ = [late(seeds[s], "success") for s in ss]
        kls = [late(seeds[s], "kl") for s in ss]
        first3 = [early(seeds[s], "success") for s in ss]
        rise = [a - b for a, b in zip(succ, first3)]
        mean, lo, hi = bootstrap_mean_ci(succ)
        rise_mean, rise_lo, rise_hi = bootstrap_mean_ci(rise)
        agree = [late(seeds[s], "rm_success_agreement") for s in ss if "rm_success_agreement" in seeds[s][-1]]
        wall = [seeds[s][-1]["wall_s"] for s in ss]
        summary["arms"][f"{arm}@{kl:g}"] = {
            "seeds": ss,
            "success_late": succ,
            "success_late_mean_ci": [mean, lo, hi],
            "kl_late": kls,
            "kl_final": [seeds[s][-1]["kl"] for s in ss],
            "early_updates": first,
            "success_first3": first3,
            "success_rise": rise,
            "success_rise_mean_ci": [rise_mean, rise_lo, rise_hi],
            "rm_success_agreement_late": agree,
            "wall_s": wall,
        }
        lines.append(
            f"| {arm} | {kl:g} | {len(ss)} | {sum(first3) / len(first3):.2f} | "
            + ", ".join(f"{v:.2f}" for v in succ)
            + f" | {mean:.3f} [{lo:.3f}, {hi:.3f}] | "
            + ", ".join(f"{v:+.2f}" for v in rise)
            + f" | {rise_mean:+.3f} [{rise_lo:+.3f}, {rise_hi:+.3f}] | "
            + ", ".join(f"{v:.1f}" for v in kls)
            + f" | {sum(r[-1]['kl'] for r in seeds.values()) / len(ss):.2f} | "
            + (f"{sum(agree) / len(agree):.2f}" if agree else "—")
            + f" | {sum(wall) / len(wall):.0f} |"
        )
    lines += ["", "Paired differences (by seed) in success over the second half:", ""]
    pairs = [("critic-span", "rm-span"), ("rm-span", "rm-scalar"), ("critic-span", "rm-scalar")]
    summary["paired"] = {}
    for kl in sorted({k for _, k in runs}):
        for a, b in pairs:
            if (a, kl) not in runs or (b, kl) not in runs:
                continue
            common = sorted(set(runs[(a, kl)]) & set(runs[(b, kl)]))
            if not common:
                continue
            diffs = [late(runs[(a, kl)][s], "success") - late(runs[(b, kl)][s], "success") for s in common]
            mean, lo, hi = bootstrap_mean_ci(diffs)
            summary["paired"][f"{a} - {b} @{kl:g}"] = {"seeds": common, "diffs": diffs, "mean_ci": [mean, lo, hi]}
            lines.append(
                f"- kl_coef {kl:g}: {a} − {b}: "
                + ", ".join(f"{d:+.3f}" for d in diffs)
                + f" (seeds {common}); mean {mean:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]"
            )
    # pooled over seeds: responses of the second halves (rate x batch size = count), two-proportion 95% interval
    # (ignores the correlation of responses within a run: optimistic)
    lines += [
        "",
        "Pooled responses of the second halves (all seeds), difference with a two-proportion 95% interval:",
        "",
    ]
    summary["pooled"] = {}

    def pooled(rows_by_seed):
        part = [r for rows in rows_by_seed.values() for r in rows[len(rows) // 2 :]]
        n = sum(r["episodes"] / r["update"] for r in part)
        return sum(r["success"] * r["episodes"] / r["update"] for r in part), n

    for kl in sorted({k for _, k in runs}):
        for a, b in pairs:
            if (a, kl) not in runs or (b, kl) not in runs:
                continue
            (ka, na), (kb, nb) = pooled(runs[(a, kl)]), pooled(runs[(b, kl)])
            pa, pb = ka / na, kb / nb
            se = (pa * (1 - pa) / na + pb * (1 - pb) / nb) ** 0.5
            diff = pa - pb
            summary["pooled"][f"{a} - {b} @{kl:g}"] = {"a": [ka, na], "b": [kb, nb], "diff": diff, "se": se}
            lines.append(
                f"- kl_coef {kl:g}: {a} {ka:.0f}/{na:.0f} = {pa:.3f}, {b} {kb:.0f}/{nb:.0f} = {pb:.3f}; "
                f"difference {diff:+.3f}, 95% CI [{diff - 1.96 * se:+.3f}, {diff + 1.96 * se:+.3f}]"
            )
    points: dict[str, list[tuple[float, float]]] = {}
    for (arm, _kl), seeds in runs.items():
        for rows in seeds.values():
            points.setdefault(arm, []).append((late(rows, "kl"), late(rows, "success")))
    summary["matched_kl"] = {}
    for a, b in [("rm-span", "rm-scalar"), ("critic-span", "rm-scalar"), ("critic-span", "rm-span")]:
        if a in points and b in points and min(len(points[a]), len(points[b])) >= 3:
            try:
                result = matched_kl_difference(points, a, b)
            except (ValueError, IndexError) as error:
                print(f"matched KL {a} vs {b}: {error}")
                continue
            if result["difference"] is None:
                continue
            summary["matched_kl"][f"{a} - {b}"] = result
            lines.append(
                f"- at equal KL ({result['at_kl']:.2f}, line per arm over its runs): {a} − {b} = "
                f"{result['difference']:+.3f}, 95% CI [{result['ci'][0]:+.3f}, {result['ci'][1]:+.3f}]"
            )
    # success against KL, all rollouts binned by the KL logged for them
    bins = [(0, 1), (1, 2), (2, 4), (4, 8), (8, float("inf"))]
    lines += ["", "| rollouts binned by KL | " + " | ".join(f"{a}–{b}" for a, b in bins) + " |"]
    lines.append("|---" * (len(bins) + 1) + "|")
    for arm, kl in order:
        cells = []
        for a, b in bins:
            rs = [r for rows in runs[(arm, kl)].values() for r in rows if a <= r["kl"] < b]
            cells.append(f"{sum(r['success'] for r in rs) / len(rs):.2f} ({len(rs)})" if rs else "— (0)")
        lines.append(f"| {arm} @ {kl:g} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    summary["num_updates"] = num_updates
    Path(args.out, f"summary{tag}.md").write_text(text + "\n")
    Path(args.out, f"summary{tag}.json").write_text(json.dumps(summary, indent=1))

    # curves: one figure per KL setting
    metrics = [("success", "task success (critic)"), ("critic_reward", "critic reward"), ("kl", "KL to reference")]
    metrics.append(("rm_success_agreement", "RM verdict = critic verdict"))
    for kl in sorted({k for _, k in runs}):
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6))
        for ax, (metric, label) in zip(axes, metrics):
            for arm in ARMS:
                seeds = runs.get((arm, kl))
                if not seeds or metric not in seeds[min(seeds)][-1]:
                    continue
                length = min(len(r) for r in seeds.values())
                mean = [sum(r[i][metric] for r in seeds.values()) / len(seeds) for i in range(length)]
                sm = [sum(mean[max(0, i - 2) : i + 1]) / len(mean[max(0, i - 2) : i + 1]) for i in range(length)]
                for rows in seeds.values():
                    ax.plot(range(1, length + 1), [r[metric] for r in rows], color=COLORS[arm], alpha=0.2, lw=0.8)
                ax.plot(range(1, length + 1), sm, color=COLORS[arm], label=f"{arm} (n={len(seeds)})", lw=2)
            if metric == "success":
                ax.axhline(base, color="grey", ls=":", lw=1, label="untrained")
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("PPO update")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(
            f"{task.name} task, {num_updates} updates, kl_coef {kl:g}: per-seed curves (thin) and the 3-update moving "
            "average of their mean",
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, f"curves{tag}_kl{kl:g}.png"), dpi=100)
        plt.close(fig)
    # success against KL: every run
    fig, ax = plt.subplots(figsize=(6, 4.2))
    markers = {0.05: "o", 0.2: "s"}
    for (arm, kl), seeds in sorted(runs.items()):
        xs = [late(r, "kl") for r in seeds.values()]
        ys = [late(r, "success") for r in seeds.values()]
        ax.scatter(xs, ys, color=COLORS[arm], marker=markers.get(kl, "^"), label=f"{arm}, kl_coef {kl:g}", s=40)
    for arm, pts in points.items():
        if len({round(p[0], 6) for p in pts}) >= 2:
            import numpy as np

            slope, intercept = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
            xs = np.linspace(min(p[0] for p in pts), max(p[0] for p in pts), 20)
            ax.plot(xs, intercept + slope * xs, color=COLORS[arm], lw=1, ls="--")
    ax.axhline(base, color="grey", ls=":", lw=1, label="untrained")
    ax.set_xlabel("mean KL to reference, second half of the run (nats per response)")
    ax.set_ylabel("success, second half of the run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("every run: success against KL (dashed: least-squares line per arm)", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, f"success_vs_kl{tag}.png"), dpi=100)
    plt.close(fig)
    # reward-model training curves: the periodic evaluations and the final evaluation of every saved stage
    import glob

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind, style in (("span", "-o"), ("scalar", "--s")):
        points, baselines = {}, None
        for path in sorted(glob.glob(os.path.join(args.out, f"rm_{kind}*.json"))):
            if path.endswith("_curve.json"):
                continue
            report = json.loads(Path(path).read_text())
            for p in report.get("curve", []):
                points[p["step"]] = p["rm"]
            points[report["steps"]] = report["heldout_topics"]["rm"]
            baselines = report["heldout_topics"]["baselines"]
        if not points:
            continue
        steps = sorted(points)
        if kind == "span":
            for key, color in (("good_f1", "tab:green"), ("poor_f1", "tab:red")):
                ax[0].plot(steps, [points[t][key] or 0 for t in steps], style, color=color, label=f"{kind} RM {key}")
                best = max(b[key] or 0 for b in baselines.values())
                ax[0].axhline(best, color=color, ls=":", lw=1, label=f"best baseline {key}")
        for key, color in (("success_accuracy", "tab:blue"), ("sign_accuracy", "tab:purple")):
            ax[1].plot(steps, [points[t][key] for t in steps], style, color=color, label=f"{kind} RM {key}")
            if kind == "span":
                best = max(b[key] for b in baselines.values())
                ax[1].axhline(best, color=color, ls=":", lw=1, label=f"best baseline {key}")
    for a, title in zip(ax, ("token-level F1, held-out topics", "sequence-level accuracy, held-out topics")):
        a.set_xlabel("reward-model training step")
        a.set_title(title, fontsize=10)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "rm_training.png"), dpi=100)
    plt.close(fig)
    print(f"wrote {args.out}/summary{tag}.md, summary{tag}.json and the PNGs")


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="(a) sample and annotate")
    d.add_argument("--per-topic", type=int, default=48, help="Responses sampled per topic (16 topics).")
    d.add_argument("--indist-fraction", type=float, default=0.15, help="Share of train-topic responses held out.")
    d.add_argument("--temperature", type=float, default=0.7)
    d.add_argument("--response-length", type=int, default=32)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--seed", type=int, default=1234)
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--out", default=None)
    d.set_defaults(func=cmd_data)
    t = sub.add_parser("train-rm", help="(b) train and evaluate a reward model")
    t.add_argument("--kind", choices=["span", "scalar"], default="span", help="span labels or the collapsed label.")
    t.add_argument("--max-steps", type=int, default=300)
    t.add_argument("--minutes", type=float, default=30.0, help="Stop training after this many minutes.")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--class-weights", type=float, nargs=3, default=None, help="neutral good poor")
    t.add_argument("--lora-layers", type=int, default=10, help="LoRA on the top N layers (0: all).")
    t.add_argument("--eval-every", type=int, default=50, help="Held-out evaluation every N steps (0: never).")
    t.add_argument("--curve-rows", type=int, default=0, help="Rows of the periodic evaluation (0: all).")
    t.add_argument("--init-from", default=None, help="Continue from a saved reward model folder.")
    t.add_argument("--steps-before", type=int, default=0, help="Steps the --init-from model was trained (reported).")
    t.add_argument("--seconds-before", type=float, default=0.0, help="Its training seconds (reported).")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--out", default=None)
    t.add_argument("--work-dir", default=None)
    t.set_defaults(func=cmd_train_rm)
    p = sub.add_parser("ppo", help="(c) one PPO run")
    p.add_argument("--arm", choices=ARMS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--updates", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--rm-dir", default=None, help="Reward model folder (default: WORK_DIR/rm_<span|scalar>).")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="Run folder (default: the task's evidence folder + /runs).")
    p.add_argument("--work-dir", default=None)
    p.set_defaults(func=cmd_ppo)
    g = sub.add_parser("gate", help="Q1: does the reward model beat every trivial baseline clearly? (exit 0/1)")
    g.add_argument("--kind", choices=["span", "scalar"], default="span")
    g.add_argument("--out", default=None)
    g.set_defaults(func=cmd_gate)
    r = sub.add_parser("report", help="(d) tables, CIs and plots over every finished run")
    r.add_argument("--out", default=None)
    r.add_argument(
        "--runs",
        default="runs",
        help="Folder of run files under --out (e.g. runs30); outputs other than the default get it as a suffix.",
    )
    r.set_defaults(func=cmd_report)
    for sp in (d, t, p, g, r):
        sp.add_argument(
            "--task",
            choices=sorted(PIPELINE_TASKS),
            default="text",
            help="text: constrained_text (outputs in docs/evidence/pipeline, models in /tmp/t2g-pipeline); code: "
            "simple_code (docs/evidence/pipeline_code, /tmp/t2g-pipeline-code).",
        )
    args = parser.parse_args(argv)
    task = get_pipeline_task(args.task)
    if getattr(args, "out", None) is None:
        args.out = os.path.join(task.default_out, "runs") if args.command == "ppo" else task.default_out
    if hasattr(args, "work_dir") and args.work_dir is None:
        args.work_dir = task.default_work
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
