"""``trl-text2grad grpo``: GRPO with span-level credit (:class:`~trl_text2grad.SpanGRPOTrainer`) from a recipe.

Usage::

    trl-text2grad grpo --config recipes/humaneval_smollm2/grpo.yaml
    accelerate launch --config_file recipes/accelerate/multi_cpu.yaml -m trl_text2grad.cli.grpo \\
        --config recipes/humaneval_smollm2/grpo.yaml --max_steps 4
    accelerate launch -m trl_text2grad.cli.grpo --config recipes/kodcode/grpo.yaml   # GPU, vLLM settings inside

Arguments are three dataclasses parsed by :class:`trl.TrlParser`, as in TRL's example scripts:
:class:`OnlineScriptArguments` (data and reward source), :class:`~trl_text2grad.SpanGRPOConfig` (every
``trl.GRPOConfig`` field, vLLM included, plus the span fields) and :class:`trl.ModelConfig` (policy checkpoint,
dtype, LoRA, quantization).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from ..grpo import SpanGRPOConfig, SpanGRPOTrainer
from .common import main_from_argv, train_and_save
from .ppo import PPOScriptArguments, load_policy, prompt_datasets, reward_source

__all__ = ["OnlineScriptArguments", "make_parser", "run", "run_online", "main"]

logger = logging.getLogger(__name__)


@dataclass
class OnlineScriptArguments(PPOScriptArguments):
    """Data and reward source of a span-GRPO / span-RLOO run: the fields of the PPO script (task, data set, critic)
    plus the path of a span reward model.

    Args:
        reward_model_path: With ``critic: reward_model``, the folder of a span reward model trained with
            ``trl-text2grad reward``.
    """

    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "critic reward_model: folder of a span reward model saved by `trl-text2grad reward`."},
    )


def make_parser():
    """The :class:`trl.TrlParser` of this script: (OnlineScriptArguments, SpanGRPOConfig, ModelConfig)."""
    return TrlParser((OnlineScriptArguments, SpanGRPOConfig, ModelConfig), prog="trl-text2grad grpo")


def run_online(trainer_cls, script_args: OnlineScriptArguments, training_args, model_args, name: str):
    """Build the policy, the task's prompts and the reward source, train ``trainer_cls`` and save it."""
    reward = reward_source(script_args, script_args.reward_model_path)  # fails before the policy loads
    model, tokenizer = load_policy(model_args, training_args)
    train_dataset, eval_dataset = prompt_datasets(script_args, training_args)
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    return train_and_save(
        trainer,
        training_args,
        eval_dataset is not None,
        f"{name} finished: policy saved to {training_args.output_dir}",
    )


def run(script_args: OnlineScriptArguments, training_args, model_args):
    """Train as configured; returns the trainer (after ``train()`` and ``save_model()``)."""
    return run_online(SpanGRPOTrainer, script_args, training_args, model_args, "span GRPO")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``--config recipe.yaml`` + overrides with ``TrlParser`` and train."""
    return main_from_argv(make_parser, run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
