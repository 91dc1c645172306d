"""``SpanRLOOConfig``: TRL's ``RLOOConfig`` (every field unchanged) plus the span-credit fields."""

from __future__ import annotations

from dataclasses import dataclass

from trl import RLOOConfig

from ..grpo.config import SpanCreditArguments

__all__ = ["SpanRLOOConfig"]


@dataclass
class SpanRLOOConfig(RLOOConfig, SpanCreditArguments):
    r"""
    Configuration of [`SpanRLOOTrainer`]: every field of [`trl.RLOOConfig`] (same names, defaults and meaning) plus
    the span-credit fields of [`~trl_text2grad.grpo.SpanCreditArguments`] (`span_advantage_weight`,
    `span_advantage_normalization`, `good_span_reward`, `poor_span_reward`, `fuzzy_threshold`,
    `heatmap_every_n_steps`).

    RLOO's sequence advantage is the reward minus the leave-one-out mean (in reward units unless
    `normalize_advantages`), while the span term is in units of `span_advantage_weight`: pick the weight with the
    reward scale in mind.
    """

    def __post_init__(self):
        super().__post_init__()
        self._validate_span_credit()
