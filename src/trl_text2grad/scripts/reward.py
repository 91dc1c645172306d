"""Deprecated: `python -m trl_text2grad.scripts.reward` runs :mod:`trl_text2grad.cli.reward` (use that instead)."""

from ..cli.reward import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    from . import run_deprecated

    run_deprecated("reward", main)
