"""``trl-text2grad rloo``: RLOO with span-level credit (:class:`~trl_text2grad.SpanRLOOTrainer`) from a recipe.

Usage::

    trl-text2grad rloo --config recipes/humaneval_smollm2/rloo.yaml
    accelerate launch -m trl_text2grad.cli.rloo --config recipes/humaneval_smollm2/rloo.yaml --max_steps 4

Arguments: :class:`~trl_text2grad.cli.grpo.OnlineScriptArguments` (data and reward source),
:class:`~trl_text2grad.SpanRLOOConfig` (every ``trl.RLOOConfig`` field plus the span fields) and
:class:`trl.ModelConfig`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from trl import ModelConfig, TrlParser

from ..rloo import SpanRLOOConfig, SpanRLOOTrainer
from .common import main_from_argv
from .grpo import OnlineScriptArguments, run_online

__all__ = ["make_parser", "run", "main"]


def make_parser():
    """The :class:`trl.TrlParser` of this script: (OnlineScriptArguments, SpanRLOOConfig, ModelConfig)."""
    return TrlParser((OnlineScriptArguments, SpanRLOOConfig, ModelConfig), prog="trl-text2grad rloo")


def run(script_args: OnlineScriptArguments, training_args, model_args):
    """Train as configured; returns the trainer (after ``train()`` and ``save_model()``)."""
    return run_online(SpanRLOOTrainer, script_args, training_args, model_args, "span RLOO")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``--config recipe.yaml`` + overrides with ``TrlParser`` and train."""
    return main_from_argv(make_parser, run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
