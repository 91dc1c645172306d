"""Tables of sample completions written during PPO training (``num_sample_generations``)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from transformers.utils import is_rich_available
from trl.trainer.utils import print_prompt_completions_sample

__all__ = ["print_completions_table", "write_completions_table"]


def _score(value: Any) -> float:
    return math.nan if value is None else float(value)  # None: the reward was unusable


def print_completions_table(table: list[dict[str, Any]], update: int, step: int, total: int | None = None) -> None:
    """Print ``table`` (rows with ``query``, ``response``, ``score`` and optional span counts) on the console.

    ``total``: the number of rows of the whole table when ``table`` is the first part of it (the title says so).

    Uses TRL's ``print_prompt_completions_sample`` (``rich``) when ``rich`` is installed, plain text otherwise; an
    unusable score is shown as ``nan``.
    """
    if not table:
        return
    title = f"Sample completions after update {update} (step {step})"
    if total is not None and total > len(table):
        title += f": {len(table)} of {total}, all in completions/update_{update}.jsonl"
    print(title)
    extra_columns = [key for key in table[0] if key not in ("query", "response", "score")]
    if is_rich_available():
        print_prompt_completions_sample(
            [row["query"] for row in table],
            [row["response"] for row in table],
            {"score": [_score(row["score"]) for row in table]},
            None,
            step,
            extra={key: [row.get(key) for row in table] for key in extra_columns},
        )
        return
    columns = ["query", "response", "score", *extra_columns]
    print(" | ".join(columns))
    for row in table:
        print(" | ".join(str(row.get(column)).replace("\n", "\\n") for column in columns))


def write_completions_table(table: list[dict[str, Any]], output_dir: str, update: int) -> str:
    """Write ``table`` as JSON lines to ``<output_dir>/completions/update_<update>.jsonl``; returns the path."""
    directory = os.path.join(output_dir, "completions")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"update_{update}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for entry in table:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return path
