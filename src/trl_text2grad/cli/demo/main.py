"""``trl-text2grad demo``: the offline end-to-end main job (see :mod:`trl_text2grad.demo`).

Usage::

    trl-text2grad demo                                   # constrained-text task: ≤ 10 minutes on a 2-core CPU
    trl-text2grad demo --task humaneval                  # HumanEval with its unit tests instead
    trl-text2grad demo --steps 40 --output_dir my_run    # overrides
    trl-text2grad demo --config recipes/humaneval_smollm2/demo.yaml
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence

from trl import TrlParser

from .config import DemoConfig
from .run import run_demo

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse :class:`~trl_text2grad.demo.DemoConfig` (YAML ``--config`` + flags) and run the main job."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers 5 deprecation notices (e.g. gradient_checkpointing → activation_checkpointing) are noise here
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = TrlParser((DemoConfig,), prog="trl-text2grad demo")
    (config,) = parser.parse_args_and_config(args=list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    summary = run_demo(config)
    if summary.get("error"):  # a broken critic: the run must not look like a success
        print(f"trl-text2grad demo: {summary['error']}", file=sys.stderr)
        return 1
    # the held-out measurement before training is the least the demo must deliver
    return 0 if (summary.get("held_out") or {}).get("before") is not None else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
