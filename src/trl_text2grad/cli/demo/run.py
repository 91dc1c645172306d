"""The offline main job: ``trl-text2grad demo`` (SmolLM2-135M-Instruct, a programmatic critic, span PPO with LoRA).

The default task is ``constrained_text`` (one-sentence descriptions under word constraints); ``--task humaneval``
runs the HumanEval problems with their sandboxed unit tests instead. Stages (each prints a header and shows a
progress bar):

1. **Generate + annotate.** The policy answers a few *train* prompts; the critic marks good and poor spans of every
   answer. The spans become token rewards, printed as heatmaps in the terminal.
2. **Held-out success before.** Answers to the *held-out* prompts (no problem or topic is in both splits):
   ``eval_samples`` sampled answers per prompt at the rollout temperature, or one greedy answer
   (``eval_samples=0``, HumanEval's pass@1), judged by the task's metric; the rate with its 95 % Wilson interval.
3. **Span PPO.** ``SpanPPOTrainer`` trains LoRA adapters of the policy for ``steps`` updates on the train prompts,
   with the critic as its span reward function. The success of every rollout's sampled answers is recorded: the
   learning curve, its moving average with a noise band, and a verdict (see :mod:`.stats`).
4. **Held-out success after.** Same held-out prompts, same decoding, trained policy; the difference with its 95 %
   Newcombe interval.
5. **Report.** ``<output_dir>/report.html``: the learning curve first (PNG embedded), then before/after, then the
   token-reward heatmaps, the other training curves and a statement of how small the run is; ``metrics.json`` next
   to it.

The defaults fit in about ten minutes on a 2-core CPU. A component that fails to import or run is reported as
skipped (in the terminal and in the report) and the remaining stages still run.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, set_seed

from ...ppo import SpanPPOConfig, SpanPPOTrainer
from ...rewards import CriticFailureError, UnitTestReward, normalize_reward_output
from ...spans import Critique, locate_critique
from ...visualize import render_token_rewards_html
from ..common import build_reward_function, load_tokenizer, resolve_model_path
from .config import DemoConfig
from .generation import generate_completions
from .report import curve_table, heatmap, honesty, html_report, plot_curves, plot_learning_curve
from .stats import moving_average_band, newcombe_difference, proportion, rise_verdict, sparkline
from .tasks import ProgrammaticReward, SuccessRecorder, demo_task

logger = logging.getLogger(__name__)

__all__ = ["run_demo", "DemoRun", "StageClock"]


class StageClock:
    """Wall and CPU seconds per demo stage: :meth:`stage` prints a header and closes the previous stage."""

    def __init__(self) -> None:
        self.times: dict[str, tuple[float, float]] = {}
        self._current: str | None = None
        self._wall = self._cpu = 0.0

    def stage(self, title: str, show: bool = True) -> None:
        now, cpu = time.time(), _cpu_seconds()
        if self._current is not None:
            self.times[self._current] = (now - self._wall, cpu - self._cpu)
        self._current, self._wall, self._cpu = title.split(":")[0], now, cpu
        if show:
            print(f"\n=== {title} ===", flush=True)


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the main job described in the module docstring; returns the summary written to ``metrics.json``."""
    return DemoRun(config).run()


class DemoRun:
    """One run of the demo: the stages of the module docstring as methods sharing the policy, data and results."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.task = demo_task(config)
        self.started = time.time()
        self.clock = StageClock()
        self.use_color = config.color and sys.stdout.isatty()
        self.out_dir = Path(config.output_dir)
        self.skipped: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}
        self.samples: list[dict] = []
        self.log_history: list[dict] = []
        self.curve: dict[str, Any] | None = None
        self.reward_fn = None
        self.threads = 0
        self.critic_error: str | None = None  # the critic cannot be built or fails on every answer: exit 1

    @property
    def decoding(self) -> str:
        """How held-out answers are drawn (stated in the terminal and the report)."""
        config = self.config
        if config.eval_samples > 0:
            return (
                f"{config.eval_samples} sampled answers per held-out {self.task.unit} at temperature "
                f"{config.temperature:g}"
            )
        return f"one greedy answer per held-out {self.task.unit}"

    def run(self) -> dict[str, Any]:
        config = self.config
        self.threads = _choose_threads(config.num_threads)
        if self.threads != torch.get_num_threads():
            torch.set_num_threads(self.threads)
        set_seed(config.seed)
        random.seed(config.seed)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.setup()
        self.build_reward()
        self.annotate_stage()
        metric = self.task.metric
        self.clock.stage(f"Stage 2/5: held-out {metric} BEFORE training ({self.decoding})")
        before = self.held_out_stage("before", self.model)
        trained_model = self.train_stage()
        self.clock.stage(f"Stage 4/5: held-out {metric} AFTER training (same prompts, same decoding)")
        if trained_model is None:
            self.skipped.setdefault(f"{metric} after", "no trained policy (stage 3 skipped)")
            print(f"!! stage 4 skipped: {self.skipped[f'{metric} after']}")
            after: list[bool] = []
        else:
            after = self.held_out_stage("after", trained_model)
        return self.report_stage(before, after, trained=trained_model is not None)

    # -- setup ---------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the policy and the task's train and held-out rows (no problem or topic in both)."""
        config = self.config
        self.clock.stage(f"Setup: policy and the {config.task} split (train / held out)")
        self.model_path = resolve_model_path(config.model)
        self.tokenizer = load_tokenizer(self.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        self.model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self.train_rows, self.held_out = self.task.rows()
        self.n_eval = len(self.held_out)
        self.n_train = len(set(self.train_rows["task_id"]))
        self.n_params = sum(p.numel() for p in self.model.parameters())
        unit = self.task.unit
        print(
            f"task: {config.task}; policy: {self.model_path} ({self.n_params / 1e6:.0f}M parameters); "
            f"{self.n_train} train {unit}s, {self.n_eval} held-out {unit}s (none in both); critic: {config.critic}; "
            f"{self.threads} torch thread(s)"
        )
        self.metrics.update({f"train {unit}s": self.n_train, f"held-out {unit}s": self.n_eval})

    def build_reward(self) -> None:
        """The reward function of ``config.critic`` (a failure to build it is recorded as skipped)."""
        config = self.config
        try:
            if config.critic in ("programmatic", "unit_tests"):
                self.reward_fn = self.task.programmatic_reward()
            else:
                self.reward_fn = build_reward_function(
                    config.critic,
                    config.task,
                    critic_model=config.critic_model or (self.model_path if config.critic == "transformers" else None),
                    critic_base_url=config.critic_base_url,
                    reward_model_path=config.reward_model_path,
                )
        except Exception as err:
            self.skipped["critic"] = f"could not build the {config.critic} critic: {type(err).__name__}: {err}"
            self.critic_error = self.skipped["critic"]
            print(f"!! {self.skipped['critic']}")

    # -- scoring and heatmaps ------------------------------------------------------------------------------------
    def score(self, rows, responses) -> tuple[list, list[list[tuple]], list[bool | None]]:
        """Critiques, spans and task success (when the critic is the task's program) of ``responses`` to ``rows``."""
        reward_fn = self.reward_fn
        if reward_fn is None:
            return [None] * len(responses), [[] for _ in responses], [None] * len(responses)
        result = reward_fn(list(rows["prompt"]), list(responses), **self.task.context(rows))
        if isinstance(reward_fn, (UnitTestReward, ProgrammaticReward)):  # exact spans; failures: no spans
            spans = [list(item) if isinstance(item, list) else [] for item in result]
            return reward_fn.last_critiques, spans, list(reward_fn.last_passed)
        critiques, spans = [], []
        for response, item in zip(responses, result):
            if isinstance(item, Critique):
                critiques.append(item)
                spans.append([] if item.failed else locate_critique(response, item).span_tuples())
            else:
                critiques.append(None)
                spans.append(list(item) if isinstance(item, list) else [])
        return critiques, spans, [None] * len(responses)

    @staticmethod
    def all_failed(critiques, responses) -> str | None:
        """The last failure when the critic could not judge any of ``responses``, else ``None``."""
        failures = []
        for critique, response in zip(critiques, responses):
            judged = normalize_reward_output(critique, response) if critique is not None else None
            failures.append(judged.failure if judged is not None and not judged.ok else None)
        if failures and all(f is not None for f in failures) and any(f.retryable for f in failures):
            return str(failures[-1])
        return None

    def record(self, stage: str, rows, responses, critiques, spans, passed, limit: int, show: bool) -> None:
        """Keep heatmaps of the first ``limit`` answers for the report (and print them when ``show``)."""
        for i in range(min(limit, len(responses))):
            terminal, html_block, rewards = heatmap(self.tokenizer, responses[i], spans[i], self.use_color)
            critique = critiques[i].text if critiques[i] is not None else "(no critique)"
            self.samples.append(
                {
                    "stage": stage,
                    "task_id": rows["task_id"][i],
                    "critique": critique,
                    "passed": passed[i],
                    "html": html_block,
                    "rewarded_tokens": sum(1 for r in rewards if r != 0),
                }
            )
            if show:
                print(f"\n--- {rows['task_id'][i]} · {critique}")
                print(terminal)

    def generate(self, policy, rows, desc: str, sample: bool) -> list[str]:
        config = self.config
        return generate_completions(
            policy,
            self.tokenizer,
            rows["prompt"],
            max_new_tokens=config.eval_max_new_tokens,
            batch_size=config.generation_batch_size,
            do_sample=sample,
            temperature=config.temperature,
            stop_at_closed_fence=self.task.stop_at_closed_fence,
            desc=desc,
        )

    # -- stages --------------------------------------------------------------------------------------------------
    def annotate_stage(self) -> None:
        """Stage 1: sample answers to a few train prompts and show the critic's token rewards."""
        config = self.config
        self.clock.stage("Stage 1/5: generate answers to train prompts and annotate them with the critic")
        try:
            rows = self.train_rows.select(range(min(config.annotate_problems, len(self.train_rows))))
            if len(rows):
                responses = self.generate(self.model, rows, "stage 1: sampling", sample=True)
                critiques, spans, passed = self.score(rows, responses)
                self.record("annotated train answer", rows, responses, critiques, spans, passed, len(responses), True)
                self.metrics["stage1_annotated_answers"] = len(responses)
                self.metrics["stage1_answers_with_spans"] = sum(1 for s in spans if s)
                dead = self.all_failed(critiques, responses)
                if dead is not None:
                    self.critic_error = (
                        f"the {config.critic} critic failed on every one of the {len(responses)} stage-1 answers "
                        f"(last: {dead}); not training on zero reward"
                    )
                    self.skipped["critic"] = self.critic_error
                    print(f"!! {self.critic_error}")
        except Exception as err:
            self.skipped["annotation"] = f"{type(err).__name__}: {err}"
            print(f"!! stage 1 failed, continuing: {self.skipped['annotation']}")
            logger.debug(traceback.format_exc())

    def evaluation_rows(self) -> Dataset:
        """The held-out rows, each repeated ``eval_samples`` times (once for greedy decoding)."""
        repeats = max(1, self.config.eval_samples)
        return self.held_out.select([i for i in range(len(self.held_out)) for _ in range(repeats)])

    def evaluate(self, stage: str, policy) -> list[bool]:
        """Answers of ``policy`` to the held-out prompts (see :attr:`decoding`), judged by the task's metric."""
        config = self.config
        rows = self.evaluation_rows()
        sample = config.eval_samples > 0
        if sample:  # before and after draw from the same random stream
            set_seed(config.seed + 1)
        responses = self.generate(policy, rows, f"{stage}: answers", sample=sample)
        passed = self.task.success(rows, responses)
        if isinstance(self.reward_fn, (UnitTestReward, ProgrammaticReward)):  # heatmaps of 3 prompts' first answers
            first = [i * max(1, config.eval_samples) for i in range(min(3, len(self.held_out)))]
            shown = rows.select(first)
            chosen = [responses[i] for i in first]
            critiques, spans, _ = self.score(shown, chosen)
            self.record(stage, shown, chosen, critiques, spans, [passed[i] for i in first], len(shown), False)
        return passed

    def held_out_stage(self, when: str, policy) -> list[bool]:
        """Stages 2 and 4: success on the held-out prompts ``before`` / ``after`` training."""
        key = f"{self.task.metric} {when}"
        try:
            passed = self.evaluate(f"held-out, {when} PPO", policy)
            result = proportion(sum(passed), len(passed))
            self.metrics[key] = result.rate
            self.metrics[f"{key} 95% Wilson"] = f"[{result.low:.3f}, {result.high:.3f}] ({sum(passed)}/{len(passed)})"
            print(f"{key}: {result}")
            return passed
        except Exception as err:
            self.skipped[key] = f"{type(err).__name__}: {err}"
            print(f"!! {key} failed, continuing: {self.skipped[key]}")
            return []

    def train_stage(self):
        """Stage 3: span PPO with LoRA; returns the trained policy, or ``None`` when the stage was skipped."""
        config, reward_fn = self.config, self.reward_fn
        self.clock.stage(f"Stage 3/5: span PPO with LoRA for {config.steps} update(s)")
        trained_model = None
        if config.steps == 0:
            self.skipped["span PPO"] = "--steps 0"
        elif reward_fn is None or self.critic_error is not None:
            self.skipped["span PPO"] = "no working critic (see above)"
        else:
            recorder = SuccessRecorder(reward_fn, self.task)
            started, cpu_started = time.time(), _cpu_seconds()
            try:
                trained_model, self.log_history, rollout_samples = _train_ppo(
                    config, self.model, self.tokenizer, self.train_rows, recorder, self.out_dir
                )
                self.samples.extend(rollout_samples)
                final = [r for r in self.log_history if "train_runtime" in r]
                if final:
                    self.metrics["ppo_train_runtime_s"] = round(final[-1]["train_runtime"], 1)
                self.metrics["ppo_updates"] = config.steps
                self.metrics["ppo_sampled_answers"] = config.steps * config.batch_size
                self.metrics["seconds per update (wall)"] = round((time.time() - started) / max(config.steps, 1), 1)
                # CPU seconds of all torch threads: on an idle machine with 1 thread, about the wall time per update
                self.metrics["seconds per update (cpu)"] = round(
                    (_cpu_seconds() - cpu_started) / max(config.steps, 1), 1
                )
            except CriticFailureError as err:  # the failure budget stopped training: the critic is broken
                self.critic_error = self.skipped["span PPO"] = str(err)
            except Exception as err:
                self.skipped["span PPO"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            if recorder.records:
                self.curve = learning_curve(recorder.records, config.curve_window, config.compare_updates or None)
                self.metrics["rollout success, first/last updates"] = self.curve["verdict_text"]
                print_curve(self.curve)
        if "span PPO" in self.skipped:
            print(f"!! stage 3 skipped, continuing: {self.skipped['span PPO']}")
        return trained_model

    def report_stage(self, before: list[bool], after: list[bool], trained: bool) -> dict[str, Any]:
        """Stage 5: ``report.html`` and ``metrics.json``; returns the summary."""
        config, metrics = self.config, self.metrics
        self.clock.stage("Stage 5/5: report")
        held_out = held_out_summary(before, after, self.task.metric, self.decoding)
        if held_out["difference"] is not None:
            metrics[f"{self.task.metric} after − before"] = held_out["difference_text"]
        learning_png = plot_learning_curve(self.curve, self.out_dir / "learning_curve.png")
        curves = plot_curves(self.log_history, self.out_dir / "training_curves.png")
        runtime = time.time() - self.started
        metrics["runtime_s"] = round(runtime, 1)
        metrics["cpu_time_s"] = round(_cpu_seconds(), 1)
        metrics["torch threads"] = self.threads
        self.clock.stage("done", show=False)
        metrics["stage times (wall s / cpu s)"] = ", ".join(
            f"{name}: {wall:.0f}/{cpu:.0f}" for name, (wall, cpu) in self.clock.times.items() if name != "done"
        )
        repeats = max(1, config.eval_samples)
        prompts_table = [
            {
                "task_id": self.held_out["task_id"][i],
                "before": sum(before[i * repeats : (i + 1) * repeats]) if before else None,
                "after": sum(after[i * repeats : (i + 1) * repeats]) if after else None,
                "of": repeats,
            }
            for i in range(self.n_eval if before or after else 0)
        ]
        summary = {
            "task": config.task,
            "model": self.model_path,
            "critic": config.critic,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "runtime_s": runtime,
            "curve": self.curve,
            "held_out": held_out,
            "metrics": metrics,
            "skipped": self.skipped,
            "error": self.critic_error,
            "honesty": honesty(config, self.n_params, self.n_train, self.n_eval, trained, self.task.unit),
            "config": asdict(config),
        }
        report = self.out_dir / "report.html"
        report.write_text(html_report(summary, self.samples, curves, prompts_table, learning_png), encoding="utf-8")
        plain = {**summary, "log_history": self.log_history}
        (self.out_dir / "metrics.json").write_text(json.dumps(plain, indent=2, default=str), encoding="utf-8")
        if self.curve is not None:
            print_curve(self.curve, table=False)
        print(f"held-out {self.task.metric} ({self.decoding}), 95% Wilson intervals:")
        for when in ("before", "after"):
            print(f"  {when:<7} {held_out[when]['text'] if held_out[when] else 'not measured'}")
        if held_out["difference"] is not None:
            print(f"  after − before {held_out['difference_text']} (95% Newcombe interval)")
        print(
            "\n"
            + "\n".join(
                f"  {key:<36} {value:.3f}" if isinstance(value, float) else f"  {key:<36} {value}"
                for key, value in metrics.items()
            )
        )
        if self.skipped:
            print("skipped: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()))
        print(f"\n{summary['honesty']}\n\nreport: {report.resolve()}")
        return summary


def learning_curve(records: list[tuple[int, int]], window: int, k: int | None) -> dict[str, Any]:
    """The learning curve of per-update ``(successes, responses)``: rates, moving average with its Wilson band and
    the verdict of :func:`~.stats.rise_verdict` (a plain dict, as written to ``metrics.json``)."""
    successes, totals = [s for s, _ in records], [n for _, n in records]
    points = moving_average_band(successes, totals, window)
    verdict = rise_verdict(successes, totals, k)
    return {
        "successes": successes,
        "responses": totals,
        "rate": [p.rate for p in points],
        "moving_average": [p.average for p in points],
        "band_low": [p.low for p in points],
        "band_high": [p.high for p in points],
        "window": window,
        "band": (
            f"95% Wilson interval of the responses pooled over the trailing window of {window} updates (the moving "
            "average is their pooled success rate)"
        ),
        "verdict": verdict.as_dict(),
        "verdict_text": str(verdict),
        "sparkline": sparkline([p.rate for p in points]),
    }


def print_curve(curve: dict[str, Any], table: bool = True) -> None:
    """The learning curve in the terminal: a sparkline (one character per update, scale 0 … 1), a compact table
    of the moving average and its band, and the verdict."""
    print(f"\nrollout success per update (▁ = 0 … █ = 1): {curve['sparkline']}")
    if table:
        print(curve_table(curve))
    print(f"verdict: {curve['verdict_text']}")
    print(f"rule: {curve['verdict']['rule']}")


def held_out_summary(before: list[bool], after: list[bool], metric: str, decoding: str) -> dict[str, Any]:
    """Before/after success on the held-out prompts with 95% Wilson intervals and the Newcombe interval of the
    difference (``None`` for a side that was not measured)."""
    sides = {}
    for when, passed in (("before", before), ("after", after)):
        if passed:
            result = proportion(sum(bool(p) for p in passed), len(passed))
            sides[when] = {**result.as_dict(), "text": str(result)}
        else:
            sides[when] = None
    out: dict[str, Any] = {"metric": metric, "decoding": decoding, **sides, "difference": None}
    if before and after:
        difference = newcombe_difference(
            proportion(sum(bool(p) for p in before), len(before)), proportion(sum(bool(p) for p in after), len(after))
        )
        out["difference"] = {"value": difference.value, "low": difference.low, "high": difference.high}
        out["difference_text"] = str(difference)
        out["interval"] = "95% Wilson per side; 95% Newcombe hybrid score interval of the difference"
    return out


def _train_ppo(config: DemoConfig, model, tokenizer, train_rows, reward_fn, out_dir: Path):
    """Stage 3: LoRA span PPO; returns (policy to evaluate, trainer log history)."""
    args = SpanPPOConfig(
        output_dir=str(out_dir / "ppo"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=config.num_ppo_epochs,
        total_episodes=config.steps * config.batch_size,
        response_length=config.response_length,
        stop_token="eos",
        temperature=config.temperature,
        learning_rate=config.learning_rate,
        kl_coef=config.kl_coef,
        reward_mode="span",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        seed=config.seed,
        local_rollout_forward_batch_size=config.batch_size,
        num_sample_generations=0,
        heatmap_every_n_steps=0,
        dataloader_num_workers=0,
        use_cpu=not _cuda_available(),
    )
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
    )
    trainer = SpanPPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=model,
        ref_model=None,
        reward_model=reward_fn,
        train_dataset=train_rows,
        value_model=None,
        peft_config=peft_config,
    )
    trainer.train()
    policy = _policy_of(trainer)
    return policy, list(trainer.state.log_history), _last_rollout_samples(trainer, reward_fn)


def _last_rollout_samples(trainer, reward_fn, limit: int = 3) -> list[dict]:
    """Heatmaps of the last PPO rollout exactly as the trainer rewarded its *sampled* tokens."""
    try:
        scored = trainer.last_rollout["scored"]
        reward_fn = getattr(reward_fn, "reward_fn", reward_fn)  # the function inside a SuccessRecorder
        critiques = getattr(reward_fn, "last_critiques", None) or []
        passed = getattr(reward_fn, "last_passed", None) or []
        samples = []
        for i, text in enumerate(scored.texts[:limit]):
            offsets = scored.offsets[i]
            pieces, shown = [], 0
            for _, end in offsets:
                end = min(max(end, shown), len(text))
                pieces.append(text[shown:end])
                shown = end
            if pieces and shown < len(text):
                pieces[-1] += text[shown:]
            rewards = [float(r) for r in scored.span_rewards[i, : len(pieces)].tolist()]
            samples.append(
                {
                    "stage": "last PPO rollout (sampled tokens, as trained)",
                    "task_id": f"sample {i}",
                    "critique": critiques[i].text if i < len(critiques) and critiques[i] is not None else "",
                    "passed": passed[i] if i < len(passed) else None,
                    "html": render_token_rewards_html(pieces, rewards) if pieces else "<i>(empty response)</i>",
                    "rewarded_tokens": sum(1 for r in rewards if r != 0),
                }
            )
        return samples
    except Exception as err:  # inspection only: never fail the demo for it
        logger.warning("could not render the last PPO rollout: %s", err)
        return []


def _policy_of(trainer):
    """The trained policy (with its LoRA adapters) from a SpanPPOTrainer, for generation."""
    for attribute in ("policy", "policy_model"):
        candidate = getattr(trainer, attribute, None)
        if candidate is not None and hasattr(candidate, "generate"):
            return candidate
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    for attribute in ("policy", "model"):
        candidate = getattr(model, attribute, None)
        if candidate is not None and hasattr(candidate, "generate"):
            return candidate
    if hasattr(model, "generate"):
        return model
    raise RuntimeError("could not find the trained policy on the SpanPPOTrainer (expected .policy or .model.policy)")


def _choose_threads(requested: int) -> int:
    """Torch CPU threads for the demo (see ``DemoConfig.num_threads``); prints the choice when it is automatic."""
    if requested > 0:
        return requested
    default = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not available on every platform
        return default
    cores = os.cpu_count() or default
    if default > 1 and load >= cores:
        print(f"the machine is busy (load average {load:.1f} on {cores} cores): using 1 torch thread (--num_threads)")
        return 1
    return default


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (the sandboxed test programs).

    On a busy machine wall time says little; CPU time divided by the number of free cores approximates the wall
    time on an idle one.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return float("nan")
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _cuda_available() -> bool:
    return torch.cuda.is_available()
