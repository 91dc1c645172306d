"""Component 3: span-level PPO (``SpanPPOConfig``, ``SpanPPOTrainer``) and its pure maths (``advantages``).

Modules: ``span_ppo_config`` (settings and every derived size), ``span_ppo_trainer`` (the loop), ``advantages``
(maths), ``modeling`` (policy + value), ``sampler``, ``completions`` (sample tables), ``heatmaps``, ``parity`` (TRL
1.12 reproduction switches).

Imports are lazy so that ``trl_text2grad.ppo.advantages`` can be used without loading ``transformers.Trainer``.
"""

import importlib

_EXPORTS = {
    "SpanPPOConfig": "trl_text2grad.ppo.span_ppo_config",
    "SpanPPOTrainer": "trl_text2grad.ppo.span_ppo_trainer",
    "PolicyWithValue": "trl_text2grad.ppo.modeling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trl_text2grad.ppo' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
