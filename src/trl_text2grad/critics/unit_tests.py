"""Deprecated: the program critic moved to :mod:`trl_text2grad.critics.program` (``UnitTestCritic`` is also
importable from :mod:`trl_text2grad.critics`)."""

from __future__ import annotations

import warnings

from .program import UnitTestCritic, function_line_range

__all__ = ["UnitTestCritic", "function_line_range"]

warnings.warn(
    "trl_text2grad.critics.unit_tests is deprecated; import UnitTestCritic from trl_text2grad.critics (or "
    "trl_text2grad.critics.program).",
    DeprecationWarning,
    stacklevel=2,
)
