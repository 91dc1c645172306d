"""Prompt rows of PPO data sets: the rows a rollout cannot use are found before training starts, not mid-run."""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping
from typing import Any

__all__ = ["prompt_problem", "drop_unusable_prompt_rows"]

logger = logging.getLogger(__name__)


def prompt_problem(row: Any) -> str | None:
    """Why ``row`` cannot be a PPO prompt (``None``: it can): it needs non-empty ``input_ids`` (token ids) or a
    ``prompt`` that is a non-blank string or a non-empty list of ``{"role", "content"}`` chat messages."""
    if not isinstance(row, Mapping):
        return f"the row is a {type(row).__name__}, not a dict of columns"
    ids = row.get("input_ids")
    if ids is not None:
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__") or len(ids) == 0:
            return "`input_ids` is empty or not a list of token ids"
        try:
            if any(isinstance(i, bool) or operator.index(i) < 0 for i in ids):
                return "`input_ids` holds something other than non-negative integers"
        except TypeError:
            return "`input_ids` holds something other than non-negative integers"
        return None
    prompt = row.get("prompt")
    if prompt is None:
        return "it has neither `input_ids` nor `prompt`"
    if isinstance(prompt, str):
        return None if prompt.strip() else "`prompt` is blank"
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            return "`prompt` is an empty list of messages"
        if all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in prompt):
            return None
        return "`prompt` is a list but not of {'role', 'content'} chat messages"
    return f"`prompt` is a {type(prompt).__name__}, not a string or chat messages"


def drop_unusable_prompt_rows(dataset: Any, name: str) -> Any:
    """``dataset`` without the rows :func:`prompt_problem` rejects (counted and logged with the first reasons).

    A ``datasets.Dataset`` comes back as a ``select`` of the usable rows; other datasets are only checked.

    Raises:
        ValueError: no row is usable, or a non-``datasets`` dataset has unusable rows (it cannot be filtered).
    """
    bad = []
    names = getattr(dataset, "column_names", None)
    if isinstance(names, list):  # a datasets.Dataset: read the two columns once instead of every row
        columns = {c: dataset[c] for c in ("input_ids", "prompt") if c in names}
        rows = ({c: values[i] for c, values in columns.items()} for i in range(len(dataset)))
    else:
        rows = (dataset[i] for i in range(len(dataset)))
    for index, row in enumerate(rows):
        problem = prompt_problem(row)
        if problem is not None:
            bad.append((index, problem))
    if not bad:
        return dataset
    first = "; ".join(f"row {i}: {problem}" for i, problem in bad[:5])
    if len(bad) == len(dataset):
        raise ValueError(f"{name} has no usable prompt row ({first}, ...): add a `prompt` or `input_ids` column.")
    if not hasattr(dataset, "select"):
        raise ValueError(f"{name} has {len(bad)} unusable prompt row(s) ({first}); remove them.")
    logger.warning("%s: %d of %d row(s) skipped, unusable as prompts (%s).", name, len(bad), len(dataset), first)
    skipped = {i for i, _ in bad}
    return dataset.select([i for i in range(len(dataset)) if i not in skipped])
