"""Deprecated: `python -m trl_text2grad.scripts.ppo` runs :mod:`trl_text2grad.cli.ppo` (use that instead)."""

from ..cli.ppo import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    from . import run_deprecated

    run_deprecated("ppo", main)
