"""Deprecated: `python -m trl_text2grad.scripts.annotate` runs :mod:`trl_text2grad.cli.annotate` (use that instead)."""

from ..cli.annotate import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    from . import run_deprecated

    run_deprecated("annotate", main)
