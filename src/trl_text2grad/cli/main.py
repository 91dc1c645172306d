"""The ``trl-text2grad`` command line: ``annotate | reward | ppo | grpo | rloo | demo``.

Every subcommand is a thin dispatcher to ``trl_text2grad.cli.<name>.main(argv)``. The same modules run under
``accelerate launch -m trl_text2grad.cli.<name> --config recipe.yaml`` for multi-process or DeepSpeed training,
so the console script and the launcher accept exactly the same arguments:

.. code-block:: bash

    trl-text2grad demo                                     # offline main job (SmolLM2, constrained text, learning curve)
    trl-text2grad annotate --config recipes/slf5k/annotate.yaml
    trl-text2grad reward --config recipes/slf5k/reward.yaml --learning_rate 5e-5
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m trl_text2grad.cli.ppo \\
        --config recipes/slf5k/ppo.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from .. import __version__
from . import annotate, grpo, ppo, reward, rloo
from .demo import main as demo

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS: dict[str, str] = {
    "annotate": "Annotate (prompt, response) pairs with a critic: critique + good/poor quoted spans.",
    "reward": "Train a span reward model (SpanRewardTrainer) on annotated rows.",
    "ppo": "Train a policy with span-level PPO (SpanPPOTrainer).",
    "grpo": "Train a policy with GRPO plus span-level credit (SpanGRPOTrainer, on trl.GRPOTrainer).",
    "rloo": "Train a policy with RLOO plus span-level credit (SpanRLOOTrainer, on trl.RLOOTrainer).",
    "demo": "Offline main job: SmolLM2, span PPO on a programmatic critic, learning curve and report.html.",
}


_ENTRY_POINTS: dict[str, Callable[[list[str]], object]] = {
    "annotate": annotate.main,
    "reward": reward.main,
    "ppo": ppo.main,
    "grpo": grpo.main,
    "rloo": rloo.main,
    "demo": demo.main,
}


def _usage() -> str:
    lines = [
        "usage: trl-text2grad {" + ",".join(SUBCOMMANDS) + "} [--config recipe.yaml] [--<field> value ...]",
        "",
        "Text2Grad for Hugging Face TRL: reinforcement learning from natural-language feedback.",
        "",
        "subcommands:",
    ]
    lines += [f"  {name:<9} {help_text}" for name, help_text in SUBCOMMANDS.items()]
    lines += [
        "",
        "Run `trl-text2grad <subcommand> --help` for the fields of each subcommand. Any field of a recipe YAML",
        "can be overridden on the command line. For several processes or DeepSpeed, run the same arguments with",
        "`accelerate launch [--config_file recipes/accelerate/...yaml] -m trl_text2grad.cli.<subcommand>`.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trl-text2grad`` console script. Returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] in {"-V", "--version", "version"}:
        print(f"trl-text2grad {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(
            f"trl-text2grad: unknown subcommand {command!r}; choose one of {', '.join(SUBCOMMANDS)} "
            f"(see `trl-text2grad --help`).",
            file=sys.stderr,
        )
        return 2
    result = _ENTRY_POINTS[command](rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
