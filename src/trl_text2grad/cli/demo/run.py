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
from ...rewards import CriticFailureError, UnitTestReward, normalize_reward_output
from ...spans import Critique, locate_critique
from ...tasks.humaneval import evaluate_completions, humaneval_rows, load_humaneval, split_by_problem
from ...visualize import render_token_rewards_html
from ..common import build_reward_function, load_tokenizer, resolve_model_path
from .config import DemoConfig
from .generation import generate_completions
from .report import heatmap, honesty, html_report, plot_curves

logger = logging.getLogger(__name__)

__all__ = ["run_demo", "StageClock"]


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
    started = time.time()
    clock = StageClock()
    use_color = config.color and sys.stdout.isatty()
    threads = _choose_threads(config.num_threads)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    set_seed(config.seed)
    random.seed(config.seed)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    samples: list[dict] = []

    # -- model and data ----------------------------------------------------------------------------------------
    clock.stage("Setup: policy and HumanEval split by problem")
    model_path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    split = split_by_problem(load_humaneval(), test_fraction=config.test_fraction, seed=config.split_seed)
    train = humaneval_rows(split["train"].select(range(min(config.train_problems, len(split["train"])))))
    n_eval = len(split["test"]) if config.eval_problems <= 0 else min(config.eval_problems, len(split["test"]))
    held_out = humaneval_rows(split["test"].select(range(n_eval)))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"policy: {model_path} ({n_params / 1e6:.0f}M parameters); {len(train)} train problems, {n_eval} held-out "
        f"problems (no problem in both); critic: {config.critic}"
    )
    metrics.update({"train_problems": len(train), "held_out_problems": n_eval})

    # -- reward function ---------------------------------------------------------------------------------------
    reward_fn = None
    critic_error: str | None = None  # set when the critic cannot be built or fails on every answer: exit status 1
    try:
        if config.critic == "unit_tests":
            reward_fn = UnitTestReward(UnitTestCritic(timeout=config.sandbox_timeout))
        else:
            reward_fn = build_reward_function(
                config.critic,
                "humaneval",
                critic_model=config.critic_model or (model_path if config.critic == "transformers" else None),
                critic_base_url=config.critic_base_url,
                reward_model_path=config.reward_model_path,
            )
    except Exception as err:
        skipped["critic"] = f"could not build the {config.critic} critic: {type(err).__name__}: {err}"
        critic_error = skipped["critic"]
        print(f"!! {skipped['critic']}")

    def score(rows, responses) -> tuple[list, list[list[tuple]], list[bool | None]]:
        """Critiques, spans and pass/fail (unit tests) of ``responses`` to ``rows``."""
        if reward_fn is None:
            return [None] * len(responses), [[] for _ in responses], [None] * len(responses)
        context = {k: list(rows[k]) for k in ("problem", "test", "entry_point")}
        result = reward_fn(list(rows["prompt"]), list(responses), **context)
        if isinstance(reward_fn, UnitTestReward):
            spans = [list(item) if isinstance(item, list) else [] for item in result]  # failures: no spans
            return reward_fn.last_critiques, spans, reward_fn.last_passed
        critiques, spans = [], []
        for response, item in zip(responses, result):
            if isinstance(item, Critique):
                critiques.append(item)
                spans.append([] if item.failed else locate_critique(response, item).span_tuples())
            else:
                critiques.append(None)
                spans.append(list(item) if isinstance(item, list) else [])
        return critiques, spans, [None] * len(responses)

    def all_failed(result_critiques, responses) -> str | None:
        """The last failure when the critic could not judge any of ``responses``, else ``None``."""
        failures = []
        for critique, response in zip(result_critiques, responses):
            judged = normalize_reward_output(critique, response) if critique is not None else None
            failures.append(judged.failure if judged is not None and not judged.ok else None)
        if failures and all(f is not None for f in failures) and any(f.retryable for f in failures):
            return str(failures[-1])
        return None

    def record(stage: str, rows, responses, critiques, spans, passed, limit: int, show: bool) -> None:
        for i in range(min(limit, len(responses))):
            terminal, html_block, rewards = heatmap(tokenizer, responses[i], spans[i], use_color)
            critique = critiques[i].text if critiques[i] is not None else "(no critique)"
            samples.append(
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

    # -- stage 1: generate + annotate --------------------------------------------------------------------------
    clock.stage("Stage 1/5: generate answers to train problems and annotate them with the critic")
    try:
        annotate_rows = train.select(range(min(config.annotate_problems, len(train))))
        if len(annotate_rows):
            responses = generate_completions(
                model,
                tokenizer,
                annotate_rows["prompt"],
                max_new_tokens=config.eval_max_new_tokens,
                batch_size=config.generation_batch_size,
                do_sample=True,
                temperature=config.temperature,
                desc="stage 1: sampling",
            )
            critiques, spans, passed = score(annotate_rows, responses)
            record("annotated train answer", annotate_rows, responses, critiques, spans, passed, len(responses), True)
            metrics["stage1_annotated_answers"] = len(responses)
            metrics["stage1_answers_with_spans"] = sum(1 for s in spans if s)
            dead = all_failed(critiques, responses)
            if dead is not None:
                critic_error = (
                    f"the {config.critic} critic failed on every one of the {len(responses)} stage-1 answers "
                    f"(last: {dead}); not training on zero reward"
                )
                skipped["critic"] = critic_error
                print(f"!! {critic_error}")
    except Exception as err:
        skipped["annotation"] = f"{type(err).__name__}: {err}"
        print(f"!! stage 1 failed, continuing: {skipped['annotation']}")
        logger.debug(traceback.format_exc())

    # -- stage 2: pass@1 before --------------------------------------------------------------------------------
    def evaluate(stage: str, policy) -> tuple[float | None, list[bool]]:
        responses = generate_completions(
            policy,
            tokenizer,
            held_out["prompt"],
            max_new_tokens=config.eval_max_new_tokens,
            batch_size=config.generation_batch_size,
            desc=f"{stage}: greedy answers",
        )
        problems = split["test"].select(range(n_eval))
        results = evaluate_completions(problems, responses, timeout=config.sandbox_timeout)
        passed = [r.passed for r in results]
        if reward_fn is not None and isinstance(reward_fn, UnitTestReward):  # heatmaps of the first 3 answers
            shown = held_out.select(range(min(3, len(responses))))
            critiques, spans, _ = score(shown, responses[: len(shown)])
            record(stage, shown, responses, critiques, spans, passed, len(shown), False)
        return (sum(passed) / len(passed) if passed else None), passed

    clock.stage("Stage 2/5: pass@1 on held-out problems BEFORE training (greedy, sandboxed tests)")
    before, before_passed = None, []
    try:
        before, before_passed = evaluate("held-out, before PPO", model)
        metrics["pass@1 before"] = before
        print(f"pass@1 before: {before:.3f} ({sum(before_passed)}/{len(before_passed)})")
    except Exception as err:
        skipped["pass@1 before"] = f"{type(err).__name__}: {err}"
        print(f"!! stage 2 failed, continuing: {skipped['pass@1 before']}")

    # -- stage 3: span PPO --------------------------------------------------------------------------------------
    clock.stage(f"Stage 3/5: span PPO with LoRA for {config.steps} rollout(s)")
    log_history: list[dict] = []
    trained_model = None
    if config.steps == 0:
        skipped["span PPO"] = "--steps 0"
    elif reward_fn is None or critic_error is not None:
        skipped["span PPO"] = "no working critic (see above)"
    else:
        try:
            if isinstance(reward_fn, UnitTestReward):  # count only the PPO rollouts
                reward_fn.num_passed = reward_fn.num_scored = 0
            trained_model, log_history, rollout_samples = _train_ppo(
                config, model, tokenizer, train, reward_fn, out_dir
            )
            samples.extend(rollout_samples)
            final = [r for r in log_history if "train_runtime" in r]
            if final:
                metrics["ppo_train_runtime_s"] = round(final[-1]["train_runtime"], 1)
            metrics["ppo_rollouts"] = config.steps
            metrics["ppo_sampled_answers"] = config.steps * config.batch_size
            if isinstance(reward_fn, UnitTestReward) and reward_fn.num_scored:
                metrics["ppo_rollout_answers_passing"] = f"{reward_fn.num_passed}/{reward_fn.num_scored}"
        except ImportError as err:
            skipped["span PPO"] = f"SpanPPOTrainer is not available ({err})"
        except CriticFailureError as err:  # the failure budget stopped training: the critic is broken
            critic_error = skipped["span PPO"] = str(err)
        except Exception as err:
            skipped["span PPO"] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        if "span PPO" in skipped:
            print(f"!! stage 3 skipped, continuing: {skipped['span PPO']}")

    # -- stage 4: pass@1 after ---------------------------------------------------------------------------------
    clock.stage("Stage 4/5: pass@1 on the same held-out problems AFTER training")
    after, after_passed = None, []
    if trained_model is None:
        skipped.setdefault("pass@1 after", "no trained policy (stage 3 skipped)")
        print(f"!! stage 4 skipped: {skipped['pass@1 after']}")
    else:
        try:
            after, after_passed = evaluate("held-out, after PPO", trained_model)
            metrics["pass@1 after"] = after
            print(f"pass@1 after: {after:.3f} ({sum(after_passed)}/{len(after_passed)})")
        except Exception as err:
            skipped["pass@1 after"] = f"{type(err).__name__}: {err}"
            print(f"!! stage 4 failed: {skipped['pass@1 after']}")

    # -- stage 5: report ---------------------------------------------------------------------------------------
    clock.stage("Stage 5/5: report")
    runtime = time.time() - started
    metrics["runtime_s"] = round(runtime, 1)
    metrics["cpu_time_s"] = round(_cpu_seconds(), 1)
    clock.stage("done", show=False)
    metrics["stage times (wall s / cpu s)"] = ", ".join(
        f"{name}: {wall:.0f}/{cpu:.0f}" for name, (wall, cpu) in clock.times.items() if name != "done"
    )
    curves = plot_curves(log_history, out_dir / "training_curves.png")
    problems_table = [
        {
            "task_id": held_out["task_id"][i],
            "before": before_passed[i] if i < len(before_passed) else False,
            "after": after_passed[i] if i < len(after_passed) else None,
        }
        for i in range(n_eval if before_passed else 0)
    ]
    summary = {
        "model": model_path,
        "critic": config.critic,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "runtime_s": runtime,
        "metrics": metrics,
        "skipped": skipped,
        "error": critic_error,
        "honesty": honesty(config, n_params, len(train), n_eval, trained_model is not None),
        "config": asdict(config),
    }
    report = out_dir / "report.html"
    report.write_text(html_report(summary, samples, curves, problems_table), encoding="utf-8")
    plain = {k: v for k, v in summary.items()}
    plain["log_history"] = log_history
    (out_dir / "metrics.json").write_text(json.dumps(plain, indent=2, default=str), encoding="utf-8")
    print(
        "\n"
        + "\n".join(
            f"  {key:<28} {value:.3f}" if isinstance(value, float) else f"  {key:<28} {value}"
            for key, value in metrics.items()
        )
    )
    if skipped:
        print("skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
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
