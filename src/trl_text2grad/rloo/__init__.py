"""Span-level credit on TRL's ``RLOOTrainer``: :class:`SpanRLOOConfig`, :class:`SpanRLOOTrainer`."""

from .config import SpanRLOOConfig
from .trainer import SpanRLOOTrainer

__all__ = ["SpanRLOOConfig", "SpanRLOOTrainer"]
