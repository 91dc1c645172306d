"""Settings of ``trl-text2grad demo`` (:class:`DemoConfig`), shared by the run and its report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DemoConfig", "DEMO_TASKS", "TASK_DEFAULTS"]

#: The tasks the demo runs (``--task``).
DEMO_TASKS = ("constrained_text", "humaneval")

#: Per-task defaults of the fields whose default is ``None`` (``--task`` picks the column). ``constrained_text``
#: follows the span-PPO runs of docs/evidence.md (batch 8, 32 new tokens, lr 3e-4, KL 0.05, 2 epochs, T 0.7);
#: ``humaneval`` keeps the earlier HumanEval demo.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "constrained_text": {
        "critic": "programmatic",
        "steps": 30,
        "train_problems": 0,
        "eval_problems": 0,
        "eval_samples": 24,
        "test_fraction": 0.25,
        "response_length": 32,
        "eval_max_new_tokens": 32,
        "generation_batch_size": 32,
        "learning_rate": 3e-4,
    },
    "humaneval": {
        "critic": "unit_tests",
        "steps": 3,
        "train_problems": 32,
        "eval_problems": 20,
        "eval_samples": 0,
        "test_fraction": 0.2,
        "response_length": 128,
        "eval_max_new_tokens": 192,
        "generation_batch_size": 20,
        "learning_rate": 2e-4,
    },
}

CRITICS = ("programmatic", "unit_tests", "transformers", "openai", "reward_model")


@dataclass
class DemoConfig:
    """Settings of ``trl-text2grad demo``. The defaults are the offline ≤ 10-minute CPU run on the constrained-text
    task; ``--task humaneval`` runs the HumanEval demo instead.

    Fields whose default is ``None`` take the chosen task's default from :data:`TASK_DEFAULTS` (given in brackets
    below as constrained_text / humaneval); a value given on the command line or in a recipe wins.

    Args:
        task: ``constrained_text`` (one-sentence descriptions under word constraints, judged by a program; a
            learning curve is visible within the default run) or ``humaneval`` (the packaged HumanEval problems,
            judged by their unit tests in the sandbox).
        model: Policy checkpoint; ``default`` is the packaged SmolLM2-135M-Instruct.
        critic: Reward source [programmatic / unit_tests]: ``programmatic`` (the task's own program: the
            constrained-text critic, or the unit tests for HumanEval), ``unit_tests`` (HumanEval only),
            ``transformers`` (the policy's own checkpoint as an LLM critic, slow), ``openai`` (needs
            ``critic_model``/``critic_base_url``) or ``reward_model`` (needs ``reward_model_path``). Success on the
            learning curve and on held-out prompts is always the task's own metric, whatever the reward source.
        steps: PPO updates [30 / 3] (each one rollout of ``batch_size`` prompts, then ``num_ppo_epochs``
            optimisation epochs). ``0`` skips training, and with it the held-out measurement after training.
        output_dir: Where ``report.html``, ``metrics.json`` and the trainer's files go.
        train_problems: Training prompts PPO samples from [0 / 32]: HumanEval train problems, or constrained-text
            train topics; ``0``: all of the train split.
        eval_problems: Held-out problems/topics measured before and after training [0 / 20] (``0``: all of the
            held-out split).
        eval_samples: Responses per held-out prompt [24 / 0]: ``n > 0`` samples ``n`` responses per prompt at
            ``temperature`` (the rollout temperature); ``0`` takes one greedy response per prompt.
        annotate_problems: Train prompts answered and annotated in stage 1 (their heatmaps are printed).
        test_fraction: Fraction of the problems/topics held out [0.25 / 0.2] (split with ``split_seed``; no problem
            or topic is in both splits).
        split_seed: Seed of the train/held-out split.
        seed: Seed of training and sampling.
        batch_size: Prompts per PPO rollout.
        num_ppo_epochs: Optimisation epochs per rollout.
        response_length: Maximum new tokens of a PPO rollout [32 / 128].
        eval_max_new_tokens: Maximum new tokens of held-out and stage-1 answers [32 / 192] (HumanEval: generation
            stops once the code block is closed).
        generation_batch_size: Prompts per generation call in stages 1, 2 and 4 [32 / 20].
        learning_rate: Learning rate of the LoRA adapters [3e-4 / 2e-4].
        kl_coef: KL penalty coefficient.
        temperature: Sampling temperature of the rollouts (and of sampled held-out responses).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        curve_window: Updates pooled in the moving average of the learning curve (its noise band is the 95 % Wilson
            interval of the pooled responses).
        compare_updates: ``k`` of the verdict: the success of the last ``k`` updates is compared with that of the
            first ``k`` (95 % Newcombe interval of the difference); ``0``: a third of the updates, at most 10.
        critic_model: Model of the ``openai``/``transformers`` critic.
        critic_base_url: Endpoint of the ``openai`` critic.
        reward_model_path: Folder of a span reward model for ``critic=reward_model``.
        sandbox_timeout: Seconds per sandboxed test program (HumanEval).
        num_threads: Torch CPU threads. ``0`` (auto): torch's default, except on a machine whose load average
            exceeds its core count, where 1 thread is used (OpenMP threads that wait for each other on a busy
            machine can make generation an order of magnitude slower).
        color: Colour the terminal heatmaps (ANSI) when stdout is a terminal; ``False`` (or output to a file/pipe)
            prints ``[+ … +]``/``[- … -]`` markers instead.
    """

    task: str = field(
        default="constrained_text",
        metadata={"help": "Demo task: 'constrained_text' (default, learns visibly in ~10 min) or 'humaneval'."},
    )
    model: str = field(default="default", metadata={"help": "Policy checkpoint ('default' = packaged SmolLM2)."})
    critic: str | None = field(
        default=None,
        metadata={
            "help": "Reward source: 'programmatic', 'unit_tests', 'transformers', 'openai' or 'reward_model' "
            "(default: the task's program)."
        },
    )
    steps: int | None = field(default=None, metadata={"help": "PPO updates (0 skips training; default 30 / 3)."})
    output_dir: str = field(default="demo_out", metadata={"help": "Output folder (report.html, metrics.json)."})
    train_problems: int | None = field(
        default=None, metadata={"help": "Train problems/topics PPO samples from (0 = all; default 0 / 32)."}
    )
    eval_problems: int | None = field(
        default=None, metadata={"help": "Held-out problems/topics before/after (0 = all; default 0 / 20)."}
    )
    eval_samples: int | None = field(
        default=None,
        metadata={"help": "Held-out responses per prompt: n sampled at temperature, 0 = one greedy (24 / 0)."},
    )
    annotate_problems: int = field(default=4, metadata={"help": "Train prompts annotated in stage 1."})
    test_fraction: float | None = field(
        default=None, metadata={"help": "Fraction of problems/topics held out (default 0.25 / 0.2)."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the train/held-out split."})
    seed: int = field(default=42, metadata={"help": "Seed of training and sampling."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per PPO rollout."})
    num_ppo_epochs: int = field(default=2, metadata={"help": "Optimisation epochs per rollout."})
    response_length: int | None = field(
        default=None, metadata={"help": "Maximum new tokens of a PPO rollout (default 32 / 128)."}
    )
    eval_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Maximum new tokens of held-out/stage-1 answers (default 32 / 192)."}
    )
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "Prompts per generation call, stages 1/2/4 (default 32 / 20)."}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the LoRA adapters (default 3e-4 / 2e-4)."}
    )
    kl_coef: float = field(default=0.05, metadata={"help": "KL penalty coefficient."})
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature of rollouts and held-out samples."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    curve_window: int = field(default=5, metadata={"help": "Updates per moving-average window of the curve."})
    compare_updates: int = field(
        default=0, metadata={"help": "k: last k vs first k updates in the verdict (0 = a third, at most 10)."}
    )
    critic_model: str | None = field(default=None, metadata={"help": "Model of the openai/transformers critic."})
    critic_base_url: str | None = field(default=None, metadata={"help": "Endpoint of the openai critic."})
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Span reward model for critic=reward_model."}
    )
    sandbox_timeout: float = field(default=10.0, metadata={"help": "Seconds per sandboxed test program (HumanEval)."})
    num_threads: int = field(
        default=0, metadata={"help": "Torch CPU threads (0 = auto: 1 on a busy machine, else torch's default)."}
    )
    color: bool = field(default=True, metadata={"help": "ANSI colours in terminal heatmaps."})

    def __post_init__(self) -> None:
        if self.task not in DEMO_TASKS:
            raise ValueError(f"--task must be one of {', '.join(repr(t) for t in DEMO_TASKS)}, got {self.task!r}.")
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.critic not in CRITICS:
            raise ValueError(f"--critic must be one of {', '.join(repr(c) for c in CRITICS)}, got {self.critic!r}.")
        if self.critic == "unit_tests" and self.task != "humaneval":
            raise ValueError(
                f"--critic unit_tests runs HumanEval unit tests; task {self.task!r} has no tests (use "
                "--critic programmatic, its own program)."
            )
        if self.steps < 0:
            raise ValueError(f"--steps must be >= 0, got {self.steps}.")
        if self.batch_size < 1 or self.generation_batch_size < 1:
            raise ValueError("--batch_size and --generation_batch_size must be >= 1.")
        for name in ("train_problems", "eval_problems", "eval_samples", "annotate_problems", "compare_updates"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test_fraction must be in (0, 1), got {self.test_fraction}.")
        if self.response_length < 1 or self.eval_max_new_tokens < 1:
            raise ValueError("--response_length and --eval_max_new_tokens must be >= 1.")
        if self.curve_window < 1:
            raise ValueError(f"--curve_window must be >= 1, got {self.curve_window}.")
        if self.eval_samples > 0 and self.temperature <= 0:
            raise ValueError("--eval_samples > 0 samples at --temperature, which must then be > 0.")
