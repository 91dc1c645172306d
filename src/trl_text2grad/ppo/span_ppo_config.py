"""Re-export of :class:`~trl_text2grad.ppo.config.SpanPPOConfig` under its first module name (kept for imports)."""

from .config import SpanPPOConfig

__all__ = ["SpanPPOConfig"]
