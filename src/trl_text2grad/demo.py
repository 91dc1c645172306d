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

The defaults fit in about ten minutes on a 2-core CPU. They are far too small to change pass@1 reliably: the job
demonstrates the pipeline end to end; it is not a benchmark. A component that fails to import or run is reported
as skipped (in the terminal and in the report) and the remaining stages still run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import random
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "DemoConfig",
    "HUMANEVAL_INSTRUCTION",
    "humaneval_messages",
    "humaneval_rows",
    "UnitTestReward",
    "generate_completions",
    "run_demo",
]

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Answer with the complete function (signature and body) in one "
    "```python code block."
)


@dataclass
class DemoConfig:
    """Settings of ``trl-text2grad demo``. The defaults are the offline ≤ 10-minute CPU run.

    Args:
        model: Policy checkpoint; ``default`` is the packaged SmolLM2-135M-Instruct.
        critic: Reward source: ``unit_tests`` (sandboxed HumanEval tests), ``transformers`` (the policy's own
            checkpoint as an LLM critic, slow), ``openai`` (needs ``critic_model``/``critic_base_url``) or
            ``reward_model`` (needs ``reward_model_path``).
        steps: PPO rollouts (each one generation batch, then ``num_ppo_epochs`` optimisation epochs). ``0`` skips
            training (before/after then measure the same policy).
        output_dir: Where ``report.html``, ``metrics.json`` and the trainer's files go.
        train_problems: HumanEval train problems PPO samples prompts from.
        eval_problems: Held-out problems for pass@1 before/after (``0``: all held-out problems).
        annotate_problems: Train problems answered and annotated in stage 1 (their heatmaps are printed).
        test_fraction: Fraction of the 164 problems held out (split by problem with ``split_seed``).
        split_seed: Seed of the problem split.
        seed: Seed of training and sampling.
        batch_size: Prompts per PPO rollout.
        num_ppo_epochs: Optimisation epochs per rollout.
        response_length: Maximum new tokens of a PPO rollout.
        eval_max_new_tokens: Maximum new tokens of the greedy pass@1 answers (generation stops once the code block
            is closed).
        generation_batch_size: Prompts per generation call in stages 1, 2 and 4.
        learning_rate: Learning rate of the LoRA adapters.
        kl_coef: KL penalty coefficient.
        temperature: Sampling temperature of the rollouts.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        critic_model: Model of the ``openai``/``transformers`` critic.
        critic_base_url: Endpoint of the ``openai`` critic.
        reward_model_path: Folder of a span reward model for ``critic=reward_model``.
        sandbox_timeout: Seconds per sandboxed test program.
        num_threads: Torch CPU threads. ``0`` (auto): torch's default, except on a machine whose load average
            exceeds its core count, where 1 thread is used (OpenMP threads that wait for each other on a busy
            machine can make generation an order of magnitude slower).
        color: Colour the terminal heatmaps (ANSI) when stdout is a terminal; ``False`` (or output to a file/pipe)
            prints ``[+ … +]``/``[- … -]`` markers instead.
    """

    model: str = field(default="default", metadata={"help": "Policy checkpoint ('default' = packaged SmolLM2)."})
    critic: str = field(
        default="unit_tests",
        metadata={"help": "Reward source: 'unit_tests', 'transformers', 'openai' or 'reward_model'."},
    )
    steps: int = field(default=3, metadata={"help": "PPO rollouts (0 skips training)."})
    output_dir: str = field(default="demo_out", metadata={"help": "Output folder (report.html, metrics.json)."})
    train_problems: int = field(default=32, metadata={"help": "HumanEval train problems PPO samples from."})
    eval_problems: int = field(default=20, metadata={"help": "Held-out problems for pass@1 (0 = all held out)."})
    annotate_problems: int = field(default=4, metadata={"help": "Train problems annotated in stage 1."})
    test_fraction: float = field(default=0.2, metadata={"help": "Fraction of problems held out."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the problem split."})
    seed: int = field(default=42, metadata={"help": "Seed of training and sampling."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per PPO rollout."})
    num_ppo_epochs: int = field(default=2, metadata={"help": "Optimisation epochs per rollout."})
    response_length: int = field(default=128, metadata={"help": "Maximum new tokens of a PPO rollout."})
    eval_max_new_tokens: int = field(default=192, metadata={"help": "Maximum new tokens of greedy pass@1 answers."})
    generation_batch_size: int = field(default=20, metadata={"help": "Prompts per generation call (stages 1/2/4)."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of the LoRA adapters."})
    kl_coef: float = field(default=0.05, metadata={"help": "KL penalty coefficient."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    critic_model: str | None = field(default=None, metadata={"help": "Model of the openai/transformers critic."})
    critic_base_url: str | None = field(default=None, metadata={"help": "Endpoint of the openai critic."})
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Span reward model for critic=reward_model."}
    )
    sandbox_timeout: float = field(default=10.0, metadata={"help": "Seconds per sandboxed test program."})
    num_threads: int = field(
        default=0, metadata={"help": "Torch CPU threads (0 = auto: 1 on a busy machine, else torch's default)."}
    )
    color: bool = field(default=True, metadata={"help": "ANSI colours in terminal heatmaps."})

    def __post_init__(self) -> None:
        if self.critic not in ("unit_tests", "transformers", "openai", "reward_model"):
            raise ValueError(
                f"--critic must be 'unit_tests', 'transformers', 'openai' or 'reward_model', got {self.critic!r}."
            )
        if self.steps < 0:
            raise ValueError(f"--steps must be >= 0, got {self.steps}.")
        if self.batch_size < 1 or self.generation_batch_size < 1:
            raise ValueError("--batch_size and --generation_batch_size must be >= 1.")
        if self.train_problems < 1:
            raise ValueError(f"--train_problems must be >= 1, got {self.train_problems}.")


# --------------------------------------------------------------------------------------------------------------
# HumanEval as chat rows, and the unit-test reward function for PPO
# --------------------------------------------------------------------------------------------------------------


def humaneval_messages(problem_prompt: str) -> list[dict[str, str]]:
    """The chat prompt the policy sees for one HumanEval problem."""
    return [{"role": "user", "content": f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{problem_prompt.rstrip()}\n```"}]


def humaneval_rows(dataset):
    """HumanEval rows → ``prompt`` (chat messages) + the unit-test critic's context (``problem``, ``test``,
    ``entry_point``) + ``task_id``."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [humaneval_messages(p) for p in dataset["prompt"]],
            "problem": list(dataset["prompt"]),
            "test": list(dataset["test"]),
            "entry_point": list(dataset["entry_point"]),
            "task_id": list(dataset["task_id"]),
        }
    )


class UnitTestReward:
    """PPO reward function ``(prompts, responses, **context) -> list[list[(start, end, score)]]``.

    Runs each response against its HumanEval tests with a :class:`~trl_text2grad.critics.UnitTestCritic` and returns
    the critic's exact character spans (poor: the failing line; good: the return line of passing code). The program
    is built from the raw problem prompt (context ``problem``), not from the chat prompt the policy saw.
    The latest critiques and pass/fail results are kept in ``last_critiques`` / ``last_passed``.
    """

    def __init__(self, critic) -> None:
        self.critic = critic
        self.last_critiques: list = []
        self.last_passed: list[bool] = []
        self.calls = 0
        self.num_passed = 0
        self.num_scored = 0

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str], **context: Any) -> list[list[tuple]]:
        problems = context.get("problem")
        if problems is None:
            from .critics.prompts import prompt_to_text

            problems = [prompt_to_text(p) for p in prompts]
        tests = context.get("test", context.get("tests"))
        entry_points = context.get("entry_point")
        if tests is None or entry_points is None:
            raise ValueError(
                "UnitTestReward needs the per-sample context columns 'test' and 'entry_point' (HumanEval rows "
                "built by trl_text2grad.demo.humaneval_rows have them)."
            )
        self.last_critiques = self.critic.critique(
            list(problems), list(responses), tests=tests, entry_point=entry_points
        )
        spans = [list(s) for s in self.critic.last_spans]
        self.last_passed = [bool(r is not None and r.passed) for r in self.critic.last_results]
        self.calls += 1
        self.num_scored += len(responses)
        self.num_passed += sum(self.last_passed)
        return spans


# --------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------


def _fence_stop(tokenizer, prompt_length: int, on_step=None):
    """Stopping criterion: a row is done once its answer has closed a Markdown code block (two ``` fences).

    ``on_step`` (optional) is called once per generated token position (progress bars).
    """
    import torch
    from transformers import StoppingCriteria

    class _FenceClosed(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if on_step is not None:
                on_step()
            texts = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            return torch.tensor([t.count("```") >= 2 for t in texts], dtype=torch.bool, device=input_ids.device)

    return _FenceClosed()


def _step_counter(on_step):
    """Stopping criterion that never stops; it calls ``on_step`` once per generated token position."""
    import torch
    from transformers import StoppingCriteria

    class _Count(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            on_step()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return _Count()


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[Any],
    max_new_tokens: int = 192,
    batch_size: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    stop_at_closed_fence: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Answers of ``model`` to ``prompts`` (chat message lists or strings), batched, left-padded, decoded.

    Greedy by default. With ``stop_at_closed_fence`` a row stops once its answer closed a ```` ``` ```` block, which
    saves the prose chat models write after the code.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import StoppingCriteriaList

    tokenizer.padding_side = "left"
    texts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
        elif getattr(tokenizer, "chat_template", None):
            texts.append(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
        else:  # a tokenizer without chat template: plain concatenation of the contents
            texts.append("\n".join(m["content"] for m in prompt) + "\n")
    outputs: list[str] = []
    model.eval()
    starts = list(range(0, len(texts), batch_size))
    # one tick per generated token position of each batch; a batch that stops early jumps to its end
    bar = tqdm(total=len(starts) * max_new_tokens, desc=f"{desc} ({len(texts)} prompts)", unit="tok", leave=True)
    for start in starts:
        chunk = texts[start : start + batch_size]
        encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        length = encoded["input_ids"].shape[1]
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if do_sample:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        done_before = bar.n

        def tick(done_before: int = done_before) -> None:
            if bar.n - done_before < max_new_tokens:
                bar.update(1)

        if stop_at_closed_fence:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_fence_stop(tokenizer, length, tick)])
        else:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_step_counter(tick)])
        with torch.no_grad():
            generated = model.generate(**encoded, **kwargs)
        bar.update(done_before + max_new_tokens - bar.n)
        outputs.extend(tokenizer.batch_decode(generated[:, length:], skip_special_tokens=True))
    bar.close()
    return outputs


# --------------------------------------------------------------------------------------------------------------
# Report helpers
# --------------------------------------------------------------------------------------------------------------


def _heatmap(tokenizer, text: str, spans: Sequence[tuple], color: bool) -> tuple[str, str, list[float]]:
    """(terminal rendering, HTML rendering, token rewards) of ``text`` with ``spans``."""
    from .alignment import spans_to_token_rewards
    from .visualize import render_token_rewards_html, render_token_rewards_terminal, tokens_for_display

    if not text:
        return "(empty response)", "<div><i>(empty response)</i></div>", []
    tokens = tokens_for_display(tokenizer, text)
    rewards = spans_to_token_rewards(text, [tuple(s) for s in spans], tokenizer)
    return (
        render_token_rewards_terminal(tokens, rewards, color=color),
        render_token_rewards_html(tokens, rewards),
        rewards,
    )


def _plot_curves(log_history: list[dict], path: Path) -> str | None:
    """Training curves from ``trainer.state.log_history`` → PNG file; returns the base64 PNG or ``None``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as err:  # matplotlib is in the demo extra; the report says so when it is missing
        logger.warning("no training curves: matplotlib is unavailable (%s); pip install matplotlib", err)
        return None
    rows = [r for r in log_history if "step" in r]
    numeric = sorted(
        {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}
    )
    preferred = [
        "objective/scores",
        "objective/rlhf_reward",
        "objective/kl",
        "loss/policy_avg",
        "loss/value_avg",
        "policy/entropy_avg",
        "span/frac_tokens_rewarded",
        "loss",
    ]
    chosen = [key for key in preferred if key in numeric][:6]
    for word in ("reward", "score", "kl", "loss"):  # other trainers' names
        chosen += [k for k in numeric if word in k and k not in chosen][: max(0, 6 - len(chosen))]
    if not chosen:
        return None
    cols = 3 if len(chosen) > 4 else 2
    nrows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.9 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, chosen):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", linewidth=1.5)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.write_bytes(buffer.getvalue())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f4f4f4; } .note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6em 1em; }
.skip { background: #fdecea; border-left: 4px solid #d93025; padding: 0.6em 1em; }
.sample { border: 1px solid #e3e3e3; border-radius: 6px; padding: 0.6em 0.9em; margin: 0.8em 0; }
.critique { color: #444; font-style: italic; margin: 0.3em 0 0.5em 0; } code { background: #f4f4f4; }
.legend span { padding: 1px 6px; margin-right: 8px; }
"""


def _html_report(summary: dict, samples: list[dict], curves_b64: str | None, problems_table: list[dict]) -> str:
    esc = html.escape
    m = summary["metrics"]
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>trl-text2grad demo report</title>"]
    out.append(f"<style>{_CSS}</style></head><body>")
    out.append("<h1>trl-text2grad demo</h1>")
    out.append(
        f"<p>Text2Grad span-level PPO on HumanEval with <code>{esc(summary['model'])}</code>, critic "
        f"<code>{esc(summary['critic'])}</code>. Finished {esc(summary['finished'])} in "
        f"{summary['runtime_s']:.0f} s.</p>"
    )
    out.append(f"<div class='note'><b>How small this run is.</b> {esc(summary['honesty'])}</div>")
    if summary["skipped"]:
        out.append("<div class='skip'><b>Skipped stages.</b><ul>")
        out += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in summary["skipped"].items()]
        out.append("</ul></div>")

    out.append("<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>")
    for key, value in m.items():
        shown = f"{value:.3f}" if isinstance(value, float) else esc(str(value))
        out.append(f"<tr><td>{esc(key)}</td><td>{shown}</td></tr>")
    out.append("</table>")

    out.append("<h2>Training curves</h2>")
    if curves_b64:
        out.append(f"<img alt='training curves' style='max-width:100%' src='data:image/png;base64,{curves_b64}'>")
    else:
        out.append("<p><i>No training curves (training skipped, nothing logged, or matplotlib missing).</i></p>")

    out.append("<h2>Token-reward heatmaps</h2>")
    out.append(
        "<p class='legend'><span style='background: rgba(0,170,0,0.6)'>good span (+)</span>"
        "<span style='background: rgba(220,0,0,0.6)'>poor span (−)</span> neutral tokens uncoloured; hover a token "
        "for its reward. Spans come from the critic; token rewards from <code>spans_to_token_rewards</code>.</p>"
    )
    for sample in samples:
        status = {True: " · tests passed", False: " · tests failed"}.get(sample.get("passed"), "")
        out.append(
            f"<div class='sample'><b>{esc(sample['stage'])}</b> · <code>{esc(sample['task_id'])}</code>{status}"
            f"<div class='critique'>{esc(sample['critique'])}</div>{sample['html']}</div>"
        )

    if problems_table:
        out.append("<h2>Held-out problems</h2><table><tr><th>problem</th><th>before</th><th>after</th></tr>")
        for row in problems_table:
            before = "✔" if row["before"] else "✘"
            after = "—" if row["after"] is None else ("✔" if row["after"] else "✘")
            out.append(f"<tr><td><code>{esc(row['task_id'])}</code></td><td>{before}</td><td>{after}</td></tr>")
        out.append("</table>")
    out.append("<h2>Settings</h2><pre>" + esc(json.dumps(summary["config"], indent=2)) + "</pre>")
    out.append("</body></html>")
    return "\n".join(out)


_STAGE_CLOCK: dict[str, Any] = {}


def _stage(title: str, show: bool = True) -> None:
    """Print a stage header and record the wall/CPU time of the previous stage in ``_STAGE_CLOCK``."""
    now, cpu = time.time(), _cpu_seconds()
    previous = _STAGE_CLOCK.get("current")
    if previous is not None:
        _STAGE_CLOCK["times"][previous] = (now - _STAGE_CLOCK["wall"], cpu - _STAGE_CLOCK["cpu"])
    _STAGE_CLOCK.update(current=title.split(":")[0], wall=now, cpu=cpu)
    if show:
        print(f"\n=== {title} ===", flush=True)


def _honesty(config: DemoConfig, n_params: int, n_train: int, n_eval: int, trained: bool) -> str:
    episodes = config.steps * config.batch_size if trained else 0
    return (
        f"This is a demonstration of the pipeline, not an experiment. The policy has {n_params / 1e6:.1f}M "
        "parameters; PPO ran "
        f"{config.steps if trained else 0} rollout(s) of {config.batch_size} prompts ({episodes} sampled answers in "
        f"total, LoRA rank {config.lora_r}) on {n_train} training problems, and pass@1 is measured with greedy "
        f"decoding on only {n_eval} held-out problems, so one problem moves pass@1 by {100 / max(n_eval, 1):.1f} "
        "points. A difference between 'before' and 'after' of this size is noise; the paper's gains need thousands "
        "of episodes on a much larger model (see recipes/ and docs/recipes.md)."
    )


# --------------------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------------------


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the main job described in the module docstring; returns the summary written to ``metrics.json``."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from .scripts import load_tokenizer, resolve_model_path

    started = time.time()
    _STAGE_CLOCK.clear()
    _STAGE_CLOCK["times"] = {}
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
    _stage("Setup: policy and HumanEval split by problem")
    model_path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    from .tasks.humaneval import load_humaneval, split_by_problem

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
    try:
        if config.critic == "unit_tests":
            from .critics.unit_tests import UnitTestCritic

            reward_fn = UnitTestReward(UnitTestCritic(timeout=config.sandbox_timeout))
        else:
            from .scripts import build_reward_function

            reward_fn = build_reward_function(
                config.critic,
                "humaneval",
                critic_model=config.critic_model or (model_path if config.critic == "transformers" else None),
                critic_base_url=config.critic_base_url,
                reward_model_path=config.reward_model_path,
            )
    except Exception as err:
        skipped["critic"] = f"could not build the {config.critic} critic: {type(err).__name__}: {err}"
        print(f"!! {skipped['critic']}")

    def score(rows, responses) -> tuple[list, list[list[tuple]], list[bool | None]]:
        """Critiques, spans and pass/fail (unit tests) of ``responses`` to ``rows``."""
        if reward_fn is None:
            return [None] * len(responses), [[] for _ in responses], [None] * len(responses)
        context = {k: list(rows[k]) for k in ("problem", "test", "entry_point")}
        result = reward_fn(list(rows["prompt"]), list(responses), **context)
        if isinstance(reward_fn, UnitTestReward):
            return reward_fn.last_critiques, result, reward_fn.last_passed
        from .spans import Critique, locate_critique

        critiques, spans = [], []
        for response, item in zip(responses, result):
            if isinstance(item, Critique):
                critiques.append(item)
                spans.append(locate_critique(response, item).span_tuples())
            else:
                critiques.append(None)
                spans.append(list(item) if isinstance(item, list) else [])
        return critiques, spans, [None] * len(responses)

    def record(stage: str, rows, responses, critiques, spans, passed, limit: int, show: bool) -> None:
        for i in range(min(limit, len(responses))):
            terminal, html_block, rewards = _heatmap(tokenizer, responses[i], spans[i], use_color)
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
    _stage("Stage 1/5: generate answers to train problems and annotate them with the critic")
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
    except Exception as err:
        skipped["annotation"] = f"{type(err).__name__}: {err}"
        print(f"!! stage 1 failed, continuing: {skipped['annotation']}")
        logger.debug(traceback.format_exc())

    # -- stage 2: pass@1 before --------------------------------------------------------------------------------
    def evaluate(stage: str, policy) -> tuple[float | None, list[bool]]:
        from .tasks.humaneval import evaluate_completions

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

    _stage("Stage 2/5: pass@1 on held-out problems BEFORE training (greedy, sandboxed tests)")
    before, before_passed = None, []
    try:
        before, before_passed = evaluate("held-out, before PPO", model)
        metrics["pass@1 before"] = before
        print(f"pass@1 before: {before:.3f} ({sum(before_passed)}/{len(before_passed)})")
    except Exception as err:
        skipped["pass@1 before"] = f"{type(err).__name__}: {err}"
        print(f"!! stage 2 failed, continuing: {skipped['pass@1 before']}")

    # -- stage 3: span PPO --------------------------------------------------------------------------------------
    _stage(f"Stage 3/5: span PPO with LoRA for {config.steps} rollout(s)")
    log_history: list[dict] = []
    trained_model = None
    if config.steps == 0:
        skipped["span PPO"] = "--steps 0"
    elif reward_fn is None:
        skipped["span PPO"] = "no critic (see above)"
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
        except Exception as err:
            skipped["span PPO"] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        if "span PPO" in skipped:
            print(f"!! stage 3 skipped, continuing: {skipped['span PPO']}")

    # -- stage 4: pass@1 after ---------------------------------------------------------------------------------
    _stage("Stage 4/5: pass@1 on the same held-out problems AFTER training")
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
    _stage("Stage 5/5: report")
    runtime = time.time() - started
    metrics["runtime_s"] = round(runtime, 1)
    metrics["cpu_time_s"] = round(_cpu_seconds(), 1)
    _stage("done", show=False)
    metrics["stage times (wall s / cpu s)"] = ", ".join(
        f"{name}: {wall:.0f}/{cpu:.0f}" for name, (wall, cpu) in _STAGE_CLOCK["times"].items() if name != "done"
    )
    curves = _plot_curves(log_history, out_dir / "training_curves.png")
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
        "honesty": _honesty(config, n_params, len(train), n_eval, trained_model is not None),
        "config": asdict(config),
    }
    report = out_dir / "report.html"
    report.write_text(_html_report(summary, samples, curves, problems_table), encoding="utf-8")
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
    from peft import LoraConfig

    from .ppo.span_ppo_config import SpanPPOConfig
    from .ppo.span_ppo_trainer import SpanPPOTrainer

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
    from .visualize import render_token_rewards_html

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
    import torch

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
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


if __name__ == "__main__":  # pragma: no cover
    from .scripts.demo import main

    sys.exit(main())
