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

__all__ = ["LOCAL_SUFFIXES", "looks_like_local_path", "load_rows", "prepare_rows"]

#: File suffixes read as local data (with the ``datasets`` builder that reads them).
LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def looks_like_local_path(name: str) -> bool:
    """True when ``name`` is meant as a local file rather than a hub data set id (``org/name``).

    Anything that exists on disk, ends with a data-file suffix (``.jsonl``, ``.json``, ``.parquet``, ``.csv``, also
    ``.gz``), or starts like a path (``/``, ``./``, ``../``, ``~``) is a path. A missing path is then a "file not
    found" error, never a hub download attempt.
    """
    name = str(name)
    if os.path.exists(os.path.expanduser(name)):
        return True
    lowered = name.lower()
    if lowered.endswith(tuple(LOCAL_SUFFIXES)) or lowered.endswith(".gz"):
        return True
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name)


def load_rows(
    dataset_name: str,
    split: str,
    dataset_config: str | None = None,
    max_samples: int | None = None,
    *,
    produced_by: str | None = None,
):
    """Load ``split`` of ``dataset_name``: a local ``.json``/``.jsonl``/``.parquet``/``.csv`` file or directory, or a
    hub name.

    A local file is read with the matching ``datasets`` builder (so tests and offline users can hand in rows with
    the hub's schema); anything else goes to :func:`datasets.load_dataset`, which needs network access the first
    time (set ``HF_DATASETS_OFFLINE=1`` to use the local cache only).

    Args:
        produced_by: What writes this file (e.g. ``"`trl-text2grad annotate`"``): a missing local file then raises
            ``FileNotFoundError("file not found: <path>; run <produced_by> first ...")``.

    Raises:
        FileNotFoundError: ``dataset_name`` looks like a local path (see :func:`looks_like_local_path`) that does
            not exist.
    """
    from datasets import load_dataset

    path = os.path.expanduser(str(dataset_name))
    if looks_like_local_path(dataset_name) and not os.path.exists(path):
        hint = (
            f"; run {produced_by} first (it writes this file), or fix the path"
            if produced_by
            else f"; check the path (relative paths are read from the current directory, {os.getcwd()!r})"
        )
        raise FileNotFoundError(f"file not found: {dataset_name!r}{hint}.")
    if os.path.isfile(path):
        lowered = path.lower().removesuffix(".gz")
        builder = next((b for s, b in LOCAL_SUFFIXES.items() if lowered.endswith(s)), None)
        if builder is None:
            raise ValueError(
                f"{dataset_name!r}: unsupported file type; use .jsonl, .json, .parquet or .csv (optionally .gz)"
            )
        try:
            dataset = load_dataset(builder, data_files={split: path}, split=split)
        except Exception as err:  # malformed JSON lines, a truncated parquet file, ...
            raise ValueError(
                f"could not read {dataset_name!r} as {builder} rows ({type(err).__name__}: {err})."
            ) from err
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
