"""trl-text2grad: Text2Grad (reinforcement learning from natural-language feedback) for Hugging Face TRL.

The public API is imported lazily so that ``import trl_text2grad`` stays cheap; the names below are stable.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Critique": "trl_text2grad.spans",
    "CriticFailure": "trl_text2grad.spans",
    "CriticFailureError": "trl_text2grad.rewards",
    "ScoredSpan": "trl_text2grad.spans",
    "LocatedCritique": "trl_text2grad.spans",
    "locate_quotes": "trl_text2grad.spans",
    "locate_critique": "trl_text2grad.spans",
    "spans_to_token_rewards": "trl_text2grad.alignment",
    "batch_spans_to_token_rewards": "trl_text2grad.alignment",
    "SpanAnnotationCollator": "trl_text2grad.collator",
    "SpanRewardConfig": "trl_text2grad.reward.span_reward_config",
    "SpanRewardTrainer": "trl_text2grad.reward.span_reward_trainer",
    "SpanRewardModel": "trl_text2grad.reward.scoring",
    "SpanPPOConfig": "trl_text2grad.ppo.span_ppo_config",
    "SpanPPOTrainer": "trl_text2grad.ppo.span_ppo_trainer",
    "SpanGRPOConfig": "trl_text2grad.grpo.config",
    "SpanGRPOTrainer": "trl_text2grad.grpo.trainer",
    "SpanRLOOConfig": "trl_text2grad.rloo.config",
    "SpanRLOOTrainer": "trl_text2grad.rloo.trainer",
    "default_model_path": "trl_text2grad.models",
    "load_default_model": "trl_text2grad.models",
    "load_default_tokenizer": "trl_text2grad.models",
}

__all__ = [
    "CriticFailure",
    "CriticFailureError",
    "Critique",
    "LocatedCritique",
    "ScoredSpan",
    "SpanAnnotationCollator",
    "SpanGRPOConfig",
    "SpanGRPOTrainer",
    "SpanPPOConfig",
    "SpanPPOTrainer",
    "SpanRewardConfig",
    "SpanRewardModel",
    "SpanRewardTrainer",
    "SpanRLOOConfig",
    "SpanRLOOTrainer",
    "batch_spans_to_token_rewards",
    "default_model_path",
    "load_default_model",
    "load_default_tokenizer",
    "locate_critique",
    "locate_quotes",
    "spans_to_token_rewards",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trl_text2grad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .alignment import batch_spans_to_token_rewards, spans_to_token_rewards
    from .collator import SpanAnnotationCollator
    from .grpo.config import SpanGRPOConfig
    from .grpo.trainer import SpanGRPOTrainer
    from .models import default_model_path, load_default_model, load_default_tokenizer
    from .ppo.span_ppo_config import SpanPPOConfig
    from .ppo.span_ppo_trainer import SpanPPOTrainer
    from .reward.scoring import SpanRewardModel
    from .reward.span_reward_config import SpanRewardConfig
    from .reward.span_reward_trainer import SpanRewardTrainer
    from .rewards import CriticFailureError
    from .rloo.config import SpanRLOOConfig
    from .rloo.trainer import SpanRLOOTrainer
    from .spans import CriticFailure, Critique, LocatedCritique, ScoredSpan, locate_critique, locate_quotes
