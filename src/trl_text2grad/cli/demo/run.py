"""The offline main job: ``trl-text2grad demo`` (SmolLM2-135M-Instruct x HumanEval, unit-test critic, span PPO).

Stages (each prints a header and shows a progress bar):

1. **Generate + annotate.** The policy answers a few HumanEval *train* problems; :class:`UnitTestCritic` runs every
   answer against the problem's unit tests in the sandbox and quotes the failing line (poor) or the return line
   of passing code (good). The quotes become token rewards, printed as heatmaps in the terminal.
2. **pass@1 before.** Greedy answers to the *held-out* problems (no problem is in both splits), executed in the
   sandbox.
3. **Span PPO.** ``SpanPPOTrainer`` trains LoRA adapters of the policy for ``steps`` rollouts on the train problems,
   with the unit-test critic as its span reward function.
4. **pass@1 after.** Same held-out problems, same greedy decoding, trained policy.
5. **Report.** ``<output_dir>/report.html``: metric table, training curves (PNG embedded), token-reward heatmaps and
   a statement of how small the run is; ``metrics.json`` next to it.

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
from peft import LoraConfig
from transformers import AutoModelForCausalLM, set_seed

from ...critics import UnitTestCritic
from ...ppo import SpanPPOConfig, SpanPPOTrainer
from ...rewards import UnitTestReward
from ...spans import Critique, locate_critique
from ...tasks.humaneval import evaluate_completions, humaneval_rows, load_humaneval, split_by_problem
from ...visualize import render_token_rewards_html
from ..common import build_reward_function, load_tokenizer, resolve_model_path
from .config import DemoConfig
from .generation import generate_completions
from .report import heatmap, honesty, html_report, plot_curves

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
        self.started = time.time()
        self.clock = StageClock()
        self.use_color = config.color and sys.stdout.isatty()
        self.out_dir = Path(config.output_dir)
        self.skipped: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}
        self.samples: list[dict] = []
        self.log_history: list[dict] = []
        self.reward_fn = None

    def run(self) -> dict[str, Any]:
        config = self.config
        threads = _choose_threads(config.num_threads)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        set_seed(config.seed)
        random.seed(config.seed)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.setup()
        self.build_reward()
        self.annotate_stage()
        self.clock.stage("Stage 2/5: pass@1 on held-out problems BEFORE training (greedy, sandboxed tests)")
        before_passed = self.pass_at_1_stage("before", self.model)
        trained_model = self.train_stage()
        self.clock.stage("Stage 4/5: pass@1 on the same held-out problems AFTER training")
        if trained_model is None:
            self.skipped.setdefault("pass@1 after", "no trained policy (stage 3 skipped)")
            print(f"!! stage 4 skipped: {self.skipped['pass@1 after']}")
            after_passed: list[bool] = []
        else:
            after_passed = self.pass_at_1_stage("after", trained_model)
        return self.report_stage(before_passed, after_passed, trained=trained_model is not None)

    # -- setup ---------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the policy and split HumanEval by problem into train and held-out rows."""
        config = self.config
        self.clock.stage("Setup: policy and HumanEval split by problem")
        self.model_path = resolve_model_path(config.model)
        self.tokenizer = load_tokenizer(self.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        self.model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        split = split_by_problem(load_humaneval(), test_fraction=config.test_fraction, seed=config.split_seed)
        self.train_rows = humaneval_rows(split["train"].select(range(min(config.train_problems, len(split["train"])))))
        self.n_eval = (
            len(split["test"]) if config.eval_problems <= 0 else min(config.eval_problems, len(split["test"]))
        )
        self.held_out_problems = split["test"].select(range(self.n_eval))
        self.held_out = humaneval_rows(self.held_out_problems)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        print(
            f"policy: {self.model_path} ({self.n_params / 1e6:.0f}M parameters); {len(self.train_rows)} train "
            f"problems, {self.n_eval} held-out problems (no problem in both); critic: {config.critic}"
        )
        self.metrics.update({"train_problems": len(self.train_rows), "held_out_problems": self.n_eval})

    def build_reward(self) -> None:
        """The reward function of ``config.critic`` (a failure to build it is recorded as skipped)."""
        config = self.config
        try:
            if config.critic == "unit_tests":
                self.reward_fn = UnitTestReward(UnitTestCritic(timeout=config.sandbox_timeout))
            else:
                self.reward_fn = build_reward_function(
                    config.critic,
                    "humaneval",
                    critic_model=config.critic_model or (self.model_path if config.critic == "transformers" else None),
                    critic_base_url=config.critic_base_url,
                    reward_model_path=config.reward_model_path,
                )
        except Exception as err:
            self.skipped["critic"] = f"could not build the {config.critic} critic: {type(err).__name__}: {err}"
            print(f"!! {self.skipped['critic']}")

    # -- scoring and heatmaps ------------------------------------------------------------------------------------
    def score(self, rows, responses) -> tuple[list, list[list[tuple]], list[bool | None]]:
        """Critiques, spans and pass/fail (unit tests) of ``responses`` to ``rows``."""
        reward_fn = self.reward_fn
        if reward_fn is None:
            return [None] * len(responses), [[] for _ in responses], [None] * len(responses)
        context = {k: list(rows[k]) for k in ("problem", "test", "entry_point")}
        result = reward_fn(list(rows["prompt"]), list(responses), **context)
        if isinstance(reward_fn, UnitTestReward):
            return reward_fn.last_critiques, result, reward_fn.last_passed
        critiques, spans = [], []
        for response, item in zip(responses, result):
            if isinstance(item, Critique):
                critiques.append(item)
                spans.append(locate_critique(response, item).span_tuples())
            else:
                critiques.append(None)
                spans.append(list(item) if isinstance(item, list) else [])
        return critiques, spans, [None] * len(responses)

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

    # -- stages --------------------------------------------------------------------------------------------------
    def annotate_stage(self) -> None:
        """Stage 1: sample answers to a few train problems and show the critic's token rewards."""
        config = self.config
        self.clock.stage("Stage 1/5: generate answers to train problems and annotate them with the critic")
        try:
            rows = self.train_rows.select(range(min(config.annotate_problems, len(self.train_rows))))
            if len(rows):
                responses = generate_completions(
                    self.model,
                    self.tokenizer,
                    rows["prompt"],
                    max_new_tokens=config.eval_max_new_tokens,
                    batch_size=config.generation_batch_size,
                    do_sample=True,
                    temperature=config.temperature,
                    desc="stage 1: sampling",
                )
                critiques, spans, passed = self.score(rows, responses)
                self.record("annotated train answer", rows, responses, critiques, spans, passed, len(responses), True)
                self.metrics["stage1_annotated_answers"] = len(responses)
                self.metrics["stage1_answers_with_spans"] = sum(1 for s in spans if s)
        except Exception as err:
            self.skipped["annotation"] = f"{type(err).__name__}: {err}"
            print(f"!! stage 1 failed, continuing: {self.skipped['annotation']}")
            logger.debug(traceback.format_exc())

    def evaluate(self, stage: str, policy) -> tuple[float | None, list[bool]]:
        """Greedy answers of ``policy`` to the held-out problems, run against their unit tests."""
        config = self.config
        responses = generate_completions(
            policy,
            self.tokenizer,
            self.held_out["prompt"],
            max_new_tokens=config.eval_max_new_tokens,
            batch_size=config.generation_batch_size,
            desc=f"{stage}: greedy answers",
        )
        results = evaluate_completions(self.held_out_problems, responses, timeout=config.sandbox_timeout)
        passed = [r.passed for r in results]
        if isinstance(self.reward_fn, UnitTestReward):  # heatmaps of the first 3 answers
            shown = self.held_out.select(range(min(3, len(responses))))
            critiques, spans, _ = self.score(shown, responses[: len(shown)])
            self.record(stage, shown, responses, critiques, spans, passed, len(shown), False)
        return (sum(passed) / len(passed) if passed else None), passed

    def pass_at_1_stage(self, when: str, policy) -> list[bool]:
        """Stages 2 and 4: pass@1 on the held-out problems ``before`` / ``after`` training."""
        key = f"pass@1 {when}"
        try:
            value, passed = self.evaluate(f"held-out, {when} PPO", policy)
            self.metrics[key] = value
            print(f"{key}: {value:.3f} ({sum(passed)}/{len(passed)})")
            return passed
        except Exception as err:
            self.skipped[key] = f"{type(err).__name__}: {err}"
            print(f"!! {key} failed, continuing: {self.skipped[key]}")
            return []

    def train_stage(self):
        """Stage 3: span PPO with LoRA; returns the trained policy, or ``None`` when the stage was skipped."""
        config, reward_fn = self.config, self.reward_fn
        self.clock.stage(f"Stage 3/5: span PPO with LoRA for {config.steps} rollout(s)")
        trained_model = None
        if config.steps == 0:
            self.skipped["span PPO"] = "--steps 0"
        elif reward_fn is None:
            self.skipped["span PPO"] = "no critic (see above)"
        else:
            try:
                if isinstance(reward_fn, UnitTestReward):  # count only the PPO rollouts
                    reward_fn.num_passed = reward_fn.num_scored = 0
                trained_model, self.log_history, rollout_samples = _train_ppo(
                    config, self.model, self.tokenizer, self.train_rows, reward_fn, self.out_dir
                )
                self.samples.extend(rollout_samples)
                final = [r for r in self.log_history if "train_runtime" in r]
                if final:
                    self.metrics["ppo_train_runtime_s"] = round(final[-1]["train_runtime"], 1)
                self.metrics["ppo_rollouts"] = config.steps
                self.metrics["ppo_sampled_answers"] = config.steps * config.batch_size
                if isinstance(reward_fn, UnitTestReward) and reward_fn.num_scored:
                    self.metrics["ppo_rollout_answers_passing"] = f"{reward_fn.num_passed}/{reward_fn.num_scored}"
            except Exception as err:
                self.skipped["span PPO"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
        if "span PPO" in self.skipped:
            print(f"!! stage 3 skipped, continuing: {self.skipped['span PPO']}")
        return trained_model

    def report_stage(self, before_passed: list[bool], after_passed: list[bool], trained: bool) -> dict[str, Any]:
        """Stage 5: ``report.html`` and ``metrics.json``; returns the summary."""
        config, metrics = self.config, self.metrics
        self.clock.stage("Stage 5/5: report")
        runtime = time.time() - self.started
        metrics["runtime_s"] = round(runtime, 1)
        metrics["cpu_time_s"] = round(_cpu_seconds(), 1)
        self.clock.stage("done", show=False)
        metrics["stage times (wall s / cpu s)"] = ", ".join(
            f"{name}: {wall:.0f}/{cpu:.0f}" for name, (wall, cpu) in self.clock.times.items() if name != "done"
        )
        curves = plot_curves(self.log_history, self.out_dir / "training_curves.png")
        problems_table = [
            {
                "task_id": self.held_out["task_id"][i],
                "before": before_passed[i] if i < len(before_passed) else False,
                "after": after_passed[i] if i < len(after_passed) else None,
            }
            for i in range(self.n_eval if before_passed else 0)
        ]
        summary = {
            "model": self.model_path,
            "critic": config.critic,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "runtime_s": runtime,
            "metrics": metrics,
            "skipped": self.skipped,
            "honesty": honesty(config, self.n_params, len(self.train_rows), self.n_eval, trained),
            "config": asdict(config),
        }
        report = self.out_dir / "report.html"
        report.write_text(html_report(summary, self.samples, curves, problems_table), encoding="utf-8")
        plain = {**summary, "log_history": self.log_history}
        (self.out_dir / "metrics.json").write_text(json.dumps(plain, indent=2, default=str), encoding="utf-8")
        print(
            "\n"
            + "\n".join(
                f"  {key:<28} {value:.3f}" if isinstance(value, float) else f"  {key:<28} {value}"
                for key, value in metrics.items()
            )
        )
        if self.skipped:
            print("skipped: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()))
        print(f"\n{summary['honesty']}\n\nreport: {report.resolve()}")
        return summary


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
