"""The rows a span reward model trains on, told apart and checked once (counted, logged) before training.

Two kinds of rows may share one data set (missing fields are ``None``, as ``datasets`` fills a union of columns):

* **span rows**: ``prompt`` (or ``messages``) + ``response`` + an annotation: ``critique`` / ``good_spans`` /
  ``poor_spans`` (quotes, the schema ``trl_text2grad.annotate`` writes) or ``spans`` / ``located_spans``
  (``[start, end, score]`` character spans of the response);
* **pair rows**: ``chosen`` + ``rejected`` (+ optional ``prompt``, ``margin``), the rows of ``trl.RewardTrainer``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

from datasets import Dataset

from ..spans import Critique, locate_critique, strip_span
from .preference import split_preference_row

logger = logging.getLogger(__name__)

__all__ = [
    "ANNOTATION_COLUMNS",
    "PAIR_COLUMNS",
    "RowKind",
    "row_kind",
    "row_critique",
    "check_columns",
    "clean_rows",
    "collapse_to_sequence_label",
    "span_rows",
]

ANNOTATION_COLUMNS = ("critique", "good_spans", "poor_spans", "spans", "located_spans")
PAIR_COLUMNS = ("chosen", "rejected")
RowKind = Literal["span", "pair"]
_TOKENIZED_PAIR_COLUMNS = ("chosen_ids", "rejected_ids")


def row_kind(row: Mapping[str, Any]) -> RowKind | None:
    """``"pair"`` (chosen and rejected set), ``"span"`` (a response set), or ``None`` (neither, or both)."""
    pair = row.get("chosen") is not None and row.get("rejected") is not None
    span = row.get("response") is not None
    if pair == span:
        return None
    return "pair" if pair else "span"


def row_critique(row: Mapping[str, Any]) -> tuple[Critique | None, list | None]:
    """(Critique from the annotation schema, or None; explicit character spans, or None) of a span row."""
    spans = row.get("spans")
    if spans is None:
        spans = row.get("located_spans")
    if any(row.get(key) is not None for key in ("good_spans", "poor_spans")):
        return Critique.from_dict(row), None
    return (Critique(text=row.get("critique") or "") if row.get("critique") else None), spans


def check_columns(columns: list[str] | None, name: str) -> tuple[bool, bool]:
    """``(may hold pairs, may hold span rows)`` from a data set's columns; a clear error when it can hold neither.

    ``columns`` is ``None`` for a streaming data set whose features are unknown: then both are assumed possible.
    """
    if columns is None:
        return True, True
    columns = set(columns)
    pairs = set(PAIR_COLUMNS) <= columns or set(_TOKENIZED_PAIR_COLUMNS) <= columns
    has_prompt = "prompt" in columns or "messages" in columns
    spans = "response" in columns and has_prompt and bool(columns & set(ANNOTATION_COLUMNS))
    if pairs or spans:
        return pairs, spans
    if "response" in columns and has_prompt:
        raise ValueError(
            f"The {name} dataset has no annotation columns: add good_spans/poor_spans (quotes) and critique, or "
            "'spans' ([start, end, score] character spans) -- annotate it with `trl-text2grad annotate` -- or "
            "give preference pairs ('chosen'/'rejected')."
        )
    missing = sorted({"response"} - columns) + ([] if has_prompt else ["prompt"])
    raise ValueError(
        f"The {name} dataset lacks column(s) {missing} (it has {sorted(columns)}). SpanRewardTrainer trains on "
        "annotated rows {prompt, response, critique, good_spans, poor_spans} (the output of trl_text2grad.annotate) "
        "and/or preference pairs {chosen, rejected} with an optional prompt (the rows of trl.RewardTrainer)."
    )


def _usable(index: int, row: Mapping[str, Any]) -> tuple[RowKind | None, str]:
    """The row's kind, or ``(None, reason)`` when it cannot be trained on."""
    error = row.get("row_error") or row.get("critic_error")
    if error:  # an annotate record whose critic failed (or whose input was bad): no critique to learn from
        message = error.get("message", error) if isinstance(error, Mapping) else error
        return None, f"annotation failed ({message})"
    kind = row_kind(row)
    if kind is None:
        both = row.get("response") is not None
        return None, "both a response and a pair" if both else "neither a response string nor chosen/rejected"
    if kind == "pair":
        try:
            split_preference_row(row)
        except (TypeError, KeyError) as error:
            return None, str(error)
        margin = row.get("margin")
        if margin is not None and not (isinstance(margin, (int, float)) and math.isfinite(margin)):
            return None, f"margin {margin!r} is not a finite number"
        return kind, ""
    prompt = row["prompt"] if row.get("prompt") is not None else row.get("messages")
    if not isinstance(row["response"], str):
        return None, f"response is a {type(row['response']).__name__}, not a string"
    if prompt is None:
        return None, "no prompt"
    return kind, ""


def clean_rows(dataset: Dataset, name: str) -> tuple[Dataset, dict[str, int]]:
    """Drop the rows that cannot be trained on (counted, logged with the first indices and reasons).

    Returns the kept rows and counts: ``rows`` (kept), ``pairs`` (kept pair rows), ``rows_skipped``.

    Raises:
        TypeError: ``dataset`` is not a ``datasets.Dataset``.
        ValueError: the columns fit neither row kind, or no row is usable.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"The {name} dataset must be a datasets.Dataset for span rows, got {type(dataset).__name__} (use "
            "Dataset.from_list(rows); a streaming IterableDataset works with a sequence-classification model only)."
        )
    check_columns(dataset.column_names, name)
    columns = set(dataset.column_names)
    if set(_TOKENIZED_PAIR_COLUMNS) <= columns and not set(PAIR_COLUMNS) <= columns:
        raise ValueError(
            f"The {name} dataset holds pre-tokenized pairs (chosen_ids/rejected_ids) without their text; the span "
            "forms need the text (where the response starts). Pass the chosen/rejected text, or train an "
            "AutoModelForSequenceClassification on the tokenized pairs."
        )
    keep, bad, pairs = [], [], 0
    for index, row in enumerate(dataset):
        kind, reason = _usable(index, row)
        if kind is None:
            bad.append((index, reason))
            continue
        keep.append(index)
        pairs += kind == "pair"
    if bad:
        logger.warning(
            "%s dataset: %d row(s) skipped (first: %s).",
            name,
            len(bad),
            "; ".join(f"row {i}: {reason}" for i, reason in bad[:5]),
        )
        dataset = dataset.select(keep)
    if len(dataset) == 0:
        raise ValueError(f"The {name} dataset has no usable rows ({bad[0][1]} in row {bad[0][0]}, ...).")
    return dataset, {"rows": len(dataset), "pairs": pairs, "rows_skipped": len(bad)}


def span_rows(dataset: Dataset) -> Dataset:
    """The span rows of a (possibly mixed, possibly unchecked) data set that can be scored and compared."""
    if "response" not in dataset.column_names:
        return dataset.select([])
    keep = [index for index, row in enumerate(dataset) if _usable(index, row)[0] == "span"]
    dataset = dataset.select(keep)
    if "prompt" not in dataset.column_names and "messages" in dataset.column_names:
        dataset = dataset.rename_column("messages", "prompt")
    return dataset


def collapse_to_sequence_label(row: Mapping[str, Any], fuzzy_threshold: float = 90.0) -> dict[str, Any]:
    """A copy of an annotated span row whose annotation is collapsed to one label for the whole response.

    The row's spans (its quotes located in the response, or its ``located_spans`` / ``spans``) give one number, the
    normalised sum of their scores (``sum(scores) / number of spans``, 0 without spans); the copy marks the whole
    response (outer whitespace trimmed) good when that number is positive, poor when negative, and nothing when it
    is 0. Trained on such rows, a token-head reward model learns a *scalar* judgement of the response from the same
    annotations (the sign of the collapsed score, the same for every token) instead of where the good and poor
    parts are. The copy keeps every other column, sets ``located_spans`` to the new span and records the collapsed
    number in ``collapsed_score``.

    Raises:
        ValueError: the row has no ``response`` string.
    """
    response = row.get("response")
    if not isinstance(response, str):
        raise ValueError(
            f"collapse_to_sequence_label: the row has no response string (got {type(response).__name__})."
        )
    critique, spans = row_critique(row)
    if critique is not None and (critique.good or critique.poor):
        located = locate_critique(response, critique, fuzzy_threshold=fuzzy_threshold)
        spans = [(s.start, s.end, s.score) for s in located.spans]
    scores = [float(s[2]) for s in (spans or []) if float(s[2]) != 0]
    score = sum(scores) / len(scores) if scores else 0.0
    start, end = strip_span(response, 0, len(response))
    whole = response[start:end]
    out = dict(row)
    out["collapsed_score"] = score
    out["good_spans"] = [whole] if score > 0 and whole else []
    out["poor_spans"] = [whole] if score < 0 and whole else []
    out["located_spans"] = [[start, end, 1.0 if score > 0 else -1.0]] if score != 0 and whole else []
    out["spans"] = None
    return out
