"""Deprecated location of the subcommand scripts: use ``trl_text2grad.cli.<name>`` (``python -m
trl_text2grad.cli.ppo``, ``accelerate launch -m trl_text2grad.cli.ppo``). ``python -m trl_text2grad.scripts.<name>``
still runs the same entry point, with a ``FutureWarning``; it will be removed in a later release."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

__all__ = ["run_deprecated"]


def run_deprecated(name: str, main: Callable[[list[str] | None], object]) -> None:
    """Warn that ``trl_text2grad.scripts.<name>`` moved to ``trl_text2grad.cli.<name>`` and run ``main``."""
    warnings.warn(
        f"`python -m trl_text2grad.scripts.{name}` is deprecated; use `python -m trl_text2grad.cli.{name}` "
        "(same arguments).",
        FutureWarning,
        stacklevel=2,
    )
    result = main(None)
    sys.exit(result if isinstance(result, int) else 0)
