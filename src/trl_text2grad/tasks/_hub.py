"""Shared plumbing of the hub task adapters (SLF5K, KodCode, UltraFeedback).

Each adapter turns the rows of a hub data set into the project's row schema: ``prompt`` (a list of chat messages),
``response`` (an existing answer to annotate, when the data set has one) and task columns that critics receive as
per-sample context. Loading from the hub happens only when a user calls ``load_*``; :func:`prepare_rows` is pure
and is what the tests exercise with rows shaped like the hub's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["load_rows", "prepare_rows"]


def load_rows(dataset_name: str, split: str, dataset_config: str | None = None, max_samples: int | None = None):
    """Load ``split`` of ``dataset_name``: a local ``.json``/``.jsonl``/``.parquet`` file or directory, or a hub name.

    A local file is read with the matching ``datasets`` builder (so tests and offline users can hand in rows with
    the hub's schema); anything else goes to :func:`datasets.load_dataset`, which needs network access the first
    time (set ``HF_DATASETS_OFFLINE=1`` to use the local cache only).
    """
    from datasets import load_dataset

    if os.path.isfile(dataset_name):
        suffix = dataset_name.rsplit(".", 1)[-1].lower()
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(suffix)
        if builder is None:
            raise ValueError(f"{dataset_name!r}: unsupported file type; use .jsonl, .json, .parquet or .csv")
        dataset = load_dataset(builder, data_files={split: dataset_name}, split=split)
    else:
        try:
            dataset = load_dataset(dataset_name, name=dataset_config, split=split)
        except Exception as err:  # network, gated repo, unknown split: say what to do
            raise RuntimeError(
                f"Could not load split {split!r} of the data set {dataset_name!r} ({type(err).__name__}: {err}). "
                "This task downloads it from the Hugging Face hub: check the network/credentials, the split name, "
                "or pass a local .jsonl file with the same columns as `dataset_name`."
            ) from err
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def prepare_rows(dataset, format_row: Callable[[dict[str, Any]], dict[str, Any] | None], required: tuple[str, ...]):
    """Map ``dataset`` through ``format_row``; rows it rejects (returns ``None``) are dropped and counted.

    Raises a ``ValueError`` naming the missing columns when the data set does not have the ``required`` ones.
    Returns ``(prepared_dataset, num_dropped)``.
    """
    from datasets import Dataset

    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The data set lacks the columns {missing} (it has {dataset.column_names}); pass the data set the task "
            "expects, or rows with the same schema."
        )
    rows, dropped = [], 0
    for row in dataset:
        out = format_row(row)
        if out is None:
            dropped += 1
        else:
            rows.append(out)
    if not rows:
        raise ValueError(f"No usable rows: all {dropped} rows were empty or malformed.")
    if dropped:
        import logging

        logging.getLogger(__name__).warning("dropped %d empty or malformed rows", dropped)
    return Dataset.from_list(rows), dropped
