"""``SpanRLOOTrainer``: TRL's ``RLOOTrainer`` with per-token credit from critique spans.

Everything but scoring and the loss is TRL's (generation with transformers or vLLM, the leave-one-out baseline,
KL-in-reward, PEFT, DeepSpeed, logging, checkpointing). The overrides:

``_generate_and_score_completions`` (scoring)
    TRL scores the generation batch and computes one leave-one-out advantage per completion; the override adds the
    ``[batch, tokens]`` span term as ``inputs["span_advantages"]`` (the sequence advantage stays TRL's).
``_compute_loss`` (loss)
    TRL's RLOO loss uses one sequence-level ratio per completion, so it cannot weight tokens differently; the
    override adds the span term's clipped surrogate (:func:`~trl_text2grad.grpo.advantages.rloo_span_loss`) to
    TRL's loss.
``_get_per_token_logps_and_entropies`` (a pass-through)
    While the loss override runs, it keeps the policy log-probabilities of TRL's own forward pass, so the span term
    needs no second forward pass.

With no spans (or ``span_advantage_weight=0``) the span term is exactly zero and the loss and gradients are TRL's.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import RLOOTrainer

from ..grpo.advantages import rloo_span_loss
from ..grpo.span_credit import SpanCreditMixin, check_trl_hooks, upgrade_config, wrap_reward_funcs
from .config import SpanRLOOConfig

__all__ = ["SpanRLOOTrainer"]

check_trl_hooks(
    RLOOTrainer, ("_generate_and_score_completions", "_compute_loss", "_get_per_token_logps_and_entropies")
)


class SpanRLOOTrainer(SpanCreditMixin, RLOOTrainer):
    """RLOO with span-level credit: each token is trained with ``A_RLOO[i] + w * r[i, t] / s``.

    Arguments are :class:`trl.RLOOTrainer`'s; ``reward_funcs`` accept the same span outputs and reward sources as
    :class:`~trl_text2grad.SpanGRPOTrainer`. ``args`` must be a :class:`SpanRLOOConfig` (a plain ``RLOOConfig`` is
    converted, span fields at their defaults).
    """

    _tag_names = ["trl", "rloo", "text2grad"]

    def __init__(self, model, reward_funcs=None, args: SpanRLOOConfig | None = None, *pargs, **kwargs):
        args = _as_span_config(args, model)
        super().__init__(model, wrap_reward_funcs(reward_funcs, args), args, *pargs, **kwargs)
        self._bind_span_reward_functions()
        self._captured_logps: list[torch.Tensor] | None = None

    # Reason: TRL turns rewards into one leave-one-out advantage per completion here; we add the per-token span term.
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        output = super()._generate_and_score_completions(inputs)
        output["span_advantages"] = self._compute_span_term(output)
        return output

    # Reason: RLOO's loss has one sequence-level ratio per completion; the span term needs a token-level surrogate.
    def _compute_loss(self, model, inputs):
        span_term = inputs.get("span_advantages")
        if span_term is None:  # a batch not scored by this trainer
            return super()._compute_loss(model, inputs)
        self._captured_logps = []
        try:
            loss = super()._compute_loss(model, inputs)
            captured = self._captured_logps
        finally:
            self._captured_logps = None
        if len(captured) != 1:
            raise RuntimeError(
                f"SpanRLOOTrainer expected TRL's RLOO loss to run one policy forward pass, saw {len(captured)}; this "
                "TRL version is not supported (tested with trl 1.13 to 1.16)."
            )
        per_token_logps = captured[0]
        mask = inputs["completion_mask"]
        log_ratio = (per_token_logps * mask).sum(1) - inputs["old_logps"]
        span_loss = rloo_span_loss(
            per_token_logps, log_ratio, span_term, mask, self.epsilon_low, self.epsilon_high
        ).mean()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["span/policy_loss"].append(self.accelerator.gather(span_loss.detach()).mean().item())
        return loss + span_loss

    # Reason: hands the loss override the policy log-probs of TRL's own forward pass (only while it asks for them).
    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if getattr(self, "_captured_logps", None) is not None:
            self._captured_logps.append(result[0])
        return result


def _as_span_config(args, model) -> SpanRLOOConfig:
    if args is None:
        name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "model")
        return SpanRLOOConfig(output_dir=f"{str(name).split('/')[-1]}-SpanRLOO")
    if isinstance(args, SpanRLOOConfig):
        return args
    from trl import RLOOConfig

    if isinstance(args, RLOOConfig):
        return upgrade_config(args, SpanRLOOConfig)
    raise TypeError(f"args must be a SpanRLOOConfig (or a trl.RLOOConfig), got {type(args).__name__}.")
