"""A config with switches that reproduce TRL 1.12 quirks, for numerical comparisons only.

Used by the parity harness (``bench/ppo_step.py``, ``tests/test_trl112_parity.py``); not part of the documented
configuration. :class:`~trl_text2grad.ppo.span_ppo_trainer.SpanPPOTrainer` accepts it like any :class:`SpanPPOConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .span_ppo_config import SpanPPOConfig

__all__ = ["Trl112ParityConfig"]


@dataclass
class Trl112ParityConfig(SpanPPOConfig):
    r"""
    [`SpanPPOConfig`] plus TRL 1.12 reproduction switches.

    Parameters:
        trl112_score_placement (`bool`, *optional*, defaults to `False`):
            Put the scalar score one position *after* the last response token (with that extra position kept for
            the value loss), as TRL 1.12 did, instead of on the last token.
    """

    trl112_score_placement: bool = field(
        default=False,
        metadata={"help": "Place the scalar score one token after the response, as TRL 1.12 did (parity only)."},
    )
