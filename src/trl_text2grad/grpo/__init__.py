"""Span-level credit on TRL's ``GRPOTrainer``: :class:`SpanGRPOConfig`, :class:`SpanGRPOTrainer`, the reward
function adapter and the advantage maths (shared with :mod:`trl_text2grad.rloo`)."""

from .advantages import group_span_advantages, span_advantages, span_scale, span_statistics, token_advantages
from .config import SpanCreditArguments, SpanGRPOConfig
from .reward_functions import SpanRewardFunction, as_span_reward_function
from .trainer import SpanGRPOTrainer

__all__ = [
    "SpanCreditArguments",
    "SpanGRPOConfig",
    "SpanGRPOTrainer",
    "SpanRewardFunction",
    "as_span_reward_function",
    "group_span_advantages",
    "span_advantages",
    "span_scale",
    "span_statistics",
    "token_advantages",
]
