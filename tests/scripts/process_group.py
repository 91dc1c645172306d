"""Shared by the multi-process test scripts (imported from the script's own folder, which Python puts on the path)."""

from __future__ import annotations

from collections.abc import Callable

import torch.distributed as dist


def run_and_tear_down(main: Callable[[], object]) -> None:
    """Run ``main`` and then destroy the process group: a gloo group still alive at interpreter exit can abort the
    interpreter ("terminate called without an active exception") after a successful run."""
    try:
        main()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
