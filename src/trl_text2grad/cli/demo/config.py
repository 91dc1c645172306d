"""Settings of ``trl-text2grad demo`` (:class:`DemoConfig`), shared by the run and its report."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DemoConfig"]


@dataclass
class DemoConfig:
    """Settings of ``trl-text2grad demo``. The defaults are the offline ≤ 10-minute CPU run.

    Args:
        model: Policy checkpoint; ``default`` is the packaged SmolLM2-135M-Instruct.
        critic: Reward source: ``unit_tests`` (sandboxed HumanEval tests), ``transformers`` (the policy's own
            checkpoint as an LLM critic, slow), ``openai`` (needs ``critic_model``/``critic_base_url``) or
            ``reward_model`` (needs ``reward_model_path``).
        steps: PPO rollouts (each one generation batch, then ``num_ppo_epochs`` optimisation epochs). ``0`` skips
            training, and with it the pass@1 measurement after training (stage 4).
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
