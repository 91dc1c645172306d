"""Re-export of :class:`~trl_text2grad.ppo.trainer.SpanPPOTrainer` under its first module name (kept for imports)."""

from .trainer import ScoredRollout, SpanPPOTrainer

__all__ = ["SpanPPOTrainer", "ScoredRollout"]
