"""Component 2 of Text2Grad: the span reward model (training, inference, evaluation).

Imports are lazy so that ``import trl_text2grad.reward`` does not load torch/transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "SpanRewardConfig": "trl_text2grad.reward.span_reward_config",
    "SpanRewardTrainer": "trl_text2grad.reward.span_reward_trainer",
    "SpanRewardModel": "trl_text2grad.reward.scoring",
    "SpanPrediction": "trl_text2grad.reward.scoring",
    "SpanTokenHeadModel": "trl_text2grad.reward.modeling",
    "span_metrics": "trl_text2grad.reward.evaluation",
    "evaluate_span_reward_model": "trl_text2grad.reward.evaluation",
}

__all__ = [
    "SpanPrediction",
    "SpanRewardConfig",
    "SpanRewardModel",
    "SpanRewardTrainer",
    "SpanTokenHeadModel",
    "evaluate_span_reward_model",
    "span_metrics",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trl_text2grad.reward' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from .evaluation import evaluate_span_reward_model, span_metrics
    from .modeling import SpanTokenHeadModel
    from .scoring import SpanPrediction, SpanRewardModel
    from .span_reward_config import SpanRewardConfig
    from .span_reward_trainer import SpanRewardTrainer
