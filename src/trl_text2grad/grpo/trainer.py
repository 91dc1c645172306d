"""``SpanGRPOTrainer``: TRL's ``GRPOTrainer`` with per-token advantages from critique spans.

Everything but the scoring step is TRL's: generation (transformers, vLLM server or colocate), the reference model,
``importance_sampling_level``, every ``loss_type``, PEFT, DeepSpeed/FSDP, logging, checkpointing. The one override:

``_generate_and_score_completions``
    TRL samples, scores and turns the rewards into one group-relative advantage per completion; the override adds
    the span term (:mod:`trl_text2grad.grpo.advantages`), making the advantages ``[batch, tokens]``. TRL's loss
    takes such advantages unchanged (it only broadcasts 1-D ones), so no loss override is needed. A batch whose
    span term is zero everywhere (no spans, or ``span_advantage_weight=0``) keeps TRL's ``[batch]`` advantages, so
    its loss and gradients are TRL's bit for bit.

The reward functions are wrapped (:class:`~trl_text2grad.grpo.reward_functions.SpanRewardFunction`) so that they
may return critiques or spans as well as floats.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer

from .advantages import token_advantages
from .config import SpanGRPOConfig
from .span_credit import SpanCreditMixin, check_trl_hooks, upgrade_config, wrap_reward_funcs

__all__ = ["SpanGRPOTrainer"]

check_trl_hooks(GRPOTrainer, ("_generate_and_score_completions", "_compute_loss", "_calculate_rewards"))


class SpanGRPOTrainer(SpanCreditMixin, GRPOTrainer):
    """GRPO with span-level credit: ``A[i, t] = A_GRPO[i] + w * r[i, t] / s`` (see :class:`SpanGRPOConfig`).

    Arguments are :class:`trl.GRPOTrainer`'s. ``reward_funcs`` may hold TRL reward functions returning, per
    completion, a float, a :class:`~trl_text2grad.Critique`, ``(start, end, score)`` character spans of the
    completion, an annotation dict, ``(score, spans)`` or ``None``; critics (``critique(prompts, responses,
    **context)``), span reward models (``score(prompts, responses)``) and PPO-style rewards (``f(prompts, responses,
    **context)``) are accepted as they are. Model ids and sequence-classification models stay scalar rewards.

    ``args`` must be a :class:`SpanGRPOConfig` (a plain ``GRPOConfig`` is converted, span fields at their
    defaults).

    Example::

        from trl_text2grad import SpanGRPOConfig, SpanGRPOTrainer, Critique

        def critic(prompts, completions, **kwargs):
            return [Critique("", good=[], poor=["TODO"]) if "TODO" in c else 1.0 for c in completions]

        trainer = SpanGRPOTrainer(model="HuggingFaceTB/SmolLM2-135M-Instruct", reward_funcs=critic,
                                  args=SpanGRPOConfig(output_dir="out"), train_dataset=dataset)
        trainer.train()
    """

    _tag_names = ["trl", "grpo", "text2grad"]

    def __init__(self, model, reward_funcs=None, args: SpanGRPOConfig | None = None, *pargs, **kwargs):
        args = _as_span_config(args, model)
        super().__init__(model, wrap_reward_funcs(reward_funcs, args), args, *pargs, **kwargs)
        self._bind_span_reward_functions()

    # Reason: TRL turns rewards into one advantage per completion here; span credit adds a per-token span term.
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        output = super()._generate_and_score_completions(inputs)
        span_term = self._compute_span_term(output)
        if bool(span_term.any()):  # else TRL's [B] advantages stay as they are (bit-identical loss and gradients)
            output["advantages"] = token_advantages(output["advantages"], span_term)
        return output


def _as_span_config(args, model) -> SpanGRPOConfig:
    if args is None:
        name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "model")
        return SpanGRPOConfig(output_dir=f"{str(name).split('/')[-1]}-SpanGRPO")
    if isinstance(args, SpanGRPOConfig):
        return args
    from trl import GRPOConfig

    if isinstance(args, GRPOConfig):
        return upgrade_config(args, SpanGRPOConfig)
    raise TypeError(f"args must be a SpanGRPOConfig (or a trl.GRPOConfig), got {type(args).__name__}.")
