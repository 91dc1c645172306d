"""Deprecated: `python -m trl_text2grad.scripts.demo` runs :mod:`trl_text2grad.cli.demo.main` (use that instead)."""

from ..cli.demo.main import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    from . import run_deprecated

    run_deprecated("demo", main)
