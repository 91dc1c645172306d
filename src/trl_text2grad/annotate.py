"""Annotate a data set of (prompt, response) pairs with a critic: batched, cached, resumable.

:func:`annotate` sends batches of rows to a critic (:mod:`trl_text2grad.critics`), locates the quoted spans in
each response (:func:`~trl_text2grad.spans.locate_critique`) and appends one JSON line per row to
``output_path``. The output file is also the cache:

* every batch is appended with ``flush`` + ``fsync``; a row counts as done once its complete line is on disk;
* on restart (``resume=True``) finished rows are read back and skipped, so a killed run (even ``kill -9``) does
  not ask the critic again for them; a half-written last line left by the kill is cut off before appending;
* each line carries the row index (``_row``) and a hash of the row's prompt and response (``_key``); a cache
  written for different data is refused instead of being mixed in;
* rows whose critic request failed (``critic_error`` starting with ``"request failed"``) are retried on resume
  (``retry_failed``); a later line for the same row supersedes an earlier one, and the file is compacted at the
  end, so the output never holds duplicates.

Output row schema (the input of ``SpanRewardTrainer`` and ``SpanAnnotationCollator``)::

    prompt            str | list[chat message]   as in the input
    response          str
    critique          str                        the critic's text ("" when it failed)
    good_spans        list[str]                  quotes judged good, as the critic wrote them
    poor_spans        list[str]                  quotes judged poor
    located_spans     list[[start, end, score]]  character spans in `response` (+good_score / poor_score)
    num_located       int                        quotes found in the response
    num_unlocated     int                        quotes not found (listed in unlocated_good / unlocated_poor)
    unlocated_good    list[str]
    unlocated_poor    list[str]
    critic_error      str | None                 parse/request problem, or "skipped: ..." for unusable rows
    _row, _key                                   cache bookkeeping (row index, content hash)
    ...                                          the input's other columns (task_id, test, ...) when keep_columns
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .spans import Critique, locate_critique

logger = logging.getLogger(__name__)

__all__ = ["annotate", "load_rows", "read_annotations", "DEFAULT_CONTEXT_COLUMNS"]

#: Input columns passed to the critic as per-sample context when present: column → context keyword.
DEFAULT_CONTEXT_COLUMNS: dict[str, str] = {
    "test": "tests",
    "tests": "tests",
    "entry_point": "entry_point",
    "problem": "problem",
    "reference": "reference",
}
_REQUEST_FAILED = "request failed"


def load_rows(data: Any) -> list[dict]:
    """Rows as a list of dicts from a ``datasets.Dataset``, a JSONL/JSON path, or an iterable of dicts."""
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"annotate: input file '{path}' does not exist.")
        if path.suffix == ".json":
            with open(path, encoding="utf-8") as handle:
                rows = json.load(handle)
            if not isinstance(rows, list):
                raise ValueError(f"annotate: '{path}' must hold a JSON list of row objects (or use .jsonl).")
            return rows
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"annotate: '{path}' line {number} is not valid JSON: {error}") from error
        return rows
    if hasattr(data, "to_list"):
        return data.to_list()
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | Mapping):
        return [dict(row) for row in data]
    raise TypeError(f"annotate: cannot read rows from {type(data).__name__}; pass a Dataset, a .jsonl path or a list")


def _row_key(prompt: Any, response: Any) -> str:
    payload = json.dumps([prompt, response], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def _read_cache(path: Path, repair: bool) -> dict[int, dict]:
    """Records by row index (later lines supersede earlier ones); cut a truncated last line when ``repair``."""
    records: dict[int, dict] = {}
    if not path.is_file():
        return records
    with open(path, "rb") as handle:
        data = handle.read()
    good_end = 0
    position = 0
    for raw in data.split(b"\n"):
        end = position + len(raw) + 1
        if end > len(data):  # the last fragment has no newline: a write cut short by a kill
            if raw.strip():
                logger.warning("annotate: dropping an incomplete last line of %s (%d bytes)", path, len(raw))
            break
        if raw.strip():
            try:
                record = json.loads(raw)
                records[int(record["_row"])] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                logger.warning("annotate: ignoring an unreadable line at byte %d of %s", position, path)
        good_end = end
        position = end
    if repair and good_end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
    return records


def read_annotations(path: str | os.PathLike) -> list[dict]:
    """Read an annotation JSONL written by :func:`annotate` (deduplicated, in row order)."""
    records = _read_cache(Path(path), repair=False)
    return [records[k] for k in sorted(records)]


def _append(path: Path, records: Sequence[dict]) -> None:
    if not records:
        return
    payload = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _compact(path: Path, records: dict[int, dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for key in sorted(records):
            handle.write(json.dumps(records[key], ensure_ascii=False, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _record(
    index: int,
    row: dict,
    critique: Critique,
    error: str | None,
    exact_spans: list | None,
    keep_columns: bool,
    prompt_column: str,
    response_column: str,
    locate_kwargs: dict,
) -> dict:
    response = row.get(response_column)
    record: dict[str, Any] = dict(row) if keep_columns else {}
    record.pop(prompt_column, None)
    record.pop(response_column, None)
    record.update(prompt=row.get(prompt_column), response=response, **critique.to_dict())
    located = locate_critique(response, critique, **locate_kwargs)
    if exact_spans is not None:  # the critic knows the exact character spans (e.g. UnitTestCritic)
        spans = [[int(s), int(e), float(v)] for s, e, v in exact_spans]
    else:
        spans = [list(t) for t in located.span_tuples()]
    record.update(
        located_spans=spans,
        num_located=len(spans),
        num_unlocated=located.num_unlocated,
        unlocated_good=located.unlocated_good,
        unlocated_poor=located.unlocated_poor,
        critic_error=error,
        _row=index,
        _key=_row_key(row.get(prompt_column), response),
    )
    return record


def _skip_record(index: int, row: dict, reason: str, keep_columns: bool, prompt_column: str, response_column: str):
    record: dict[str, Any] = dict(row) if keep_columns else {}
    record.pop(prompt_column, None)
    record.pop(response_column, None)
    response = row.get(response_column)
    record.update(
        prompt=row.get(prompt_column),
        response=response if isinstance(response, str) else None,
        critique="",
        good_spans=[],
        poor_spans=[],
        located_spans=[],
        num_located=0,
        num_unlocated=0,
        unlocated_good=[],
        unlocated_poor=[],
        critic_error=f"skipped: {reason}",
        _row=index,
        _key=_row_key(row.get(prompt_column), response),
    )
    return record


def annotate(
    data: Any,
    critic: Any,
    output_path: str | os.PathLike,
    batch_size: int = 8,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    context_columns: Mapping[str, str] | None = None,
    keep_columns: bool = True,
    resume: bool = True,
    retry_failed: bool = True,
    max_rows: int | None = None,
    good_score: float = 1.0,
    poor_score: float = -1.0,
    fuzzy_threshold: float = 90.0,
    progress: bool = True,
    return_dataset: bool = True,
):
    """Annotate ``data`` with ``critic`` and write/resume the JSONL ``output_path`` (see the module docstring).

    Args:
        data: A ``datasets.Dataset``, a ``.jsonl``/``.json`` path, or a list of row dicts.
        critic: Any object with ``critique(prompts, responses, **context) -> list[Critique]``.
        output_path: JSONL output, also the resume cache.
        batch_size: Rows per critic call (and per fsync'ed append).
        prompt_column: Column holding the prompt (a string or a list of chat messages).
        response_column: Column holding the response to critique.
        context_columns: Input column → critic context keyword. Default: :data:`DEFAULT_CONTEXT_COLUMNS` for the
            columns present (e.g. HumanEval's ``test``/``entry_point`` for the unit-test critic).
        keep_columns: Copy the input's other columns into the output rows.
        resume: Skip rows already in ``output_path``. ``False`` starts over (the file is replaced).
        retry_failed: On resume, re-run rows whose critic request failed.
        max_rows: Only annotate the first ``max_rows`` rows.
        good_score: Score of located good spans.
        poor_score: Score of located poor spans.
        fuzzy_threshold: Fuzzy-matching threshold for locating quotes (0–100).
        progress: Show a tqdm progress bar.
        return_dataset: Return a ``datasets.Dataset`` of all annotated rows (else a list of dicts).
    """
    if not hasattr(critic, "critique"):
        raise TypeError(f"annotate: critic {type(critic).__name__} has no critique(prompts, responses, **context)")
    if batch_size < 1:
        raise ValueError(f"annotate: batch_size must be >= 1, got {batch_size}")
    rows = load_rows(data)
    if max_rows is not None:
        rows = rows[:max_rows]
    if rows and prompt_column not in rows[0]:
        raise ValueError(
            f"annotate: rows have no '{prompt_column}' column (columns: {sorted(rows[0])}); set prompt_column"
        )
    if rows and response_column not in rows[0]:
        raise ValueError(
            f"annotate: rows have no '{response_column}' column (columns: {sorted(rows[0])}); set response_column"
        )
    columns = set().union(*(r.keys() for r in rows[:50])) if rows else set()
    if context_columns is None:
        context_columns = {c: k for c, k in DEFAULT_CONTEXT_COLUMNS.items() if c in columns}
    missing = [c for c in context_columns if c not in columns]
    if missing:
        raise ValueError(f"annotate: context columns {missing} are not in the data (columns: {sorted(columns)})")

    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not resume and path.exists():
        path.unlink()
    records = _read_cache(path, repair=True)
    superseded = False
    for index, record in list(records.items()):
        if index >= len(rows):
            raise ValueError(
                f"annotate: the cache '{path}' has row {index} but the data has {len(rows)} rows; it was written for "
                "other data. Use another output_path or resume=False."
            )
        expected = _row_key(rows[index].get(prompt_column), rows[index].get(response_column))
        if record.get("_key") != expected:
            raise ValueError(
                f"annotate: row {index} of the cache '{path}' does not match the data (different prompt/response); "
                "it was written for other data. Use another output_path or resume=False."
            )
        if retry_failed and str(record.get("critic_error") or "").startswith(_REQUEST_FAILED):
            del records[index]
            superseded = True
    todo = [i for i in range(len(rows)) if i not in records]
    if records:
        logger.info("annotate: resuming %s: %d rows done, %d to go", path, len(records), len(todo))

    locate_kwargs = {"good_score": good_score, "poor_score": poor_score, "fuzzy_threshold": fuzzy_threshold}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="annotate", unit="row")
    skipped = failed = unlocated = 0
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            out: list[dict] = []
            usable = []
            for index in batch:
                row = rows[index]
                response = row.get(response_column)
                if not isinstance(response, str) or not response.strip():
                    reason = (
                        f"'{response_column}' is {'empty' if isinstance(response, str) else type(response).__name__}"
                    )
                    logger.warning("annotate: skipping row %d: %s", index, reason)
                    out.append(_skip_record(index, row, reason, keep_columns, prompt_column, response_column))
                    skipped += 1
                else:
                    usable.append(index)
            if usable:
                prompts = [rows[i].get(prompt_column) for i in usable]
                responses = [rows[i][response_column] for i in usable]
                context = {key: [rows[i].get(col) for i in usable] for col, key in context_columns.items()}
                critiques = critic.critique(prompts, responses, **context)
                if len(critiques) != len(usable):
                    raise RuntimeError(
                        f"annotate: critic {type(critic).__name__} returned {len(critiques)} critiques for "
                        f"{len(usable)} rows."
                    )
                errors = list(getattr(critic, "last_errors", None) or [None] * len(usable))
                exact = getattr(critic, "last_spans", None)
                exact = exact if isinstance(exact, list) and len(exact) == len(usable) else None
                for j, index in enumerate(usable):
                    critique = critiques[j]
                    if not isinstance(critique, Critique):
                        critique = Critique.from_dict(critique) if isinstance(critique, dict) else Critique()
                    error = errors[j] if j < len(errors) else None
                    failed += bool(error and str(error).startswith(_REQUEST_FAILED))
                    record = _record(
                        index,
                        rows[index],
                        critique,
                        error,
                        exact[j] if exact is not None else None,
                        keep_columns,
                        prompt_column,
                        response_column,
                        locate_kwargs,
                    )
                    unlocated += record["num_unlocated"]
                    out.append(record)
            out.sort(key=lambda r: r["_row"])
            _append(path, out)
            for record in out:
                records[record["_row"]] = record
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(failed=failed, skipped=skipped, unlocated=unlocated)
    finally:
        if bar is not None:
            bar.close()
    if superseded or _line_count(path) != len(records):
        _compact(path, records)
    if skipped or failed or unlocated:
        logger.warning(
            "annotate: %d rows skipped (unusable input), %d critic requests failed, %d quotes not located in their "
            "responses (see num_unlocated / unlocated_* / critic_error in %s)",
            skipped,
            failed,
            unlocated,
            path,
        )
    result = [records[k] for k in sorted(records)]
    if not return_dataset:
        return result
    from datasets import Dataset

    return Dataset.from_list(result) if result else Dataset.from_dict({})


def _line_count(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())
