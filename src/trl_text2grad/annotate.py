"""Annotate a data set of (prompt, response) pairs with a critic: batched, cached, resumable, row-level errors.

:func:`annotate` sends batches of rows to a critic (:mod:`trl_text2grad.critics`), locates the quoted spans in
each response (:func:`~trl_text2grad.spans.locate_critique`) and appends one JSON line per row to
``output_path``. The output file is also the cache:

* every batch is appended with ``flush`` + ``fsync``; a row counts as done once its complete line is on disk;
* on restart (``resume=True``) finished rows are read back and skipped, so a killed run (even ``kill -9``) does
  not ask the critic again for them; a half-written last line left by the kill is cut off before appending;
* each line carries the row index (``_row``) and a hash of the row's prompt and response (``_key``); a cache
  written for different data is refused instead of being mixed in (a row that was an input error and has been
  fixed since is simply annotated again);
* rows whose critic request failed (a retryable ``row_error`` kind: ``connection``, ``auth``, ``timeout``, ...)
  are retried on resume (``retry_failed``); a later line for the same row supersedes an earlier one, and the file
  is compacted at the end, so the output never holds duplicates.

**Every input row yields exactly one output record**: a result, or a structured error in ``row_error``
(``{"kind", "message", "line"}``, ``line`` being the input file's line number when the data came from a file). One
bad row never stops the run. Input kinds: ``invalid_json``, ``invalid_utf8``, ``not_an_object``,
``missing_prompt``, ``invalid_prompt``, ``missing_response``, ``invalid_response``, ``empty_response``,
``missing_column`` (a column the critic needs, e.g. ``test`` / ``entry_point`` for the unit-test critic); critic
kinds are those of :class:`~trl_text2grad.spans.CriticFailure` (``connection``, ``auth``, ``timeout``, ``parse``,
...), plus ``critic_output`` when a critic returns something that is not one critique per row. A file that
cannot be read as JSON lines at all (no line is a JSON object: binary data, CSV, ...) is an error naming the file
and its first bad line. :func:`summarize` counts the records by kind.

A critic that is dead (``max_consecutive_failures`` rows in a row failed on the request side: unreachable
endpoint, rejected key, ...) stops the run with a :class:`~trl_text2grad.rewards.CriticFailureError` naming the
critic and its last failure; the rows done so far stay in the cache and the failed ones are retried on resume.

Output row schema (the input of ``SpanRewardTrainer`` and ``SpanAnnotationCollator``)::

    prompt            str | list[chat message]   as in the input (None for a row that has no usable prompt)
    response          str                        (None for a row that has no usable response)
    critique          str                        the critic's text ("" when it failed)
    good_spans        list[str]                  quotes judged good, as the critic wrote them
    poor_spans        list[str]                  quotes judged poor
    located_spans     list[[start, end, score]]  character spans in `response` (+good_score / poor_score)
    num_located       int                        quotes found in the response
    num_unlocated     int                        quotes not found (listed in unlocated_good / unlocated_poor)
    unlocated_good    list[str]
    unlocated_poor    list[str]
    dropped_quotes    int                        entries of the critic's answer that were no quotable text
                                                 (numbers, null, empty strings): ignored, counted here
    row_error         {kind, message, line} | None   why this row has no annotation (None: it has one)
    critic_error      str | None                 row_error's message ("skipped: ..." for input errors), or a
                                                 non-fatal note of the critic
    _row, _key                                   cache bookkeeping (row index, content hash)
    ...                                          the input's other columns (task_id, test, ...) when keep_columns
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rewards import CriticFailureError, describe_critic, prompt_to_text
from .spans import CriticFailure, CriticUnavailableError, Critique, check_spans, locate_critique

logger = logging.getLogger(__name__)

__all__ = [
    "annotate",
    "format_summary",
    "load_rows",
    "read_annotations",
    "summarize",
    "DEFAULT_CONTEXT_COLUMNS",
    "INPUT_ERROR_KINDS",
]

#: Input columns passed to the critic as per-sample context when present: column → context keyword.
DEFAULT_CONTEXT_COLUMNS: dict[str, str] = {
    "test": "tests",
    "tests": "tests",
    "entry_point": "entry_point",
    "problem": "problem",
    "reference": "reference",
}
#: ``row_error`` kinds that describe the input row itself (not the critic's work on it).
INPUT_ERROR_KINDS = frozenset(
    {
        "invalid_json",
        "invalid_utf8",
        "not_an_object",
        "missing_prompt",
        "invalid_prompt",
        "missing_response",
        "invalid_response",
        "empty_response",
        "missing_column",
    }
)
_REQUEST_FAILED = "request failed"


@dataclass
class _BadRow:
    """An input row that could not be read as a row object (bad JSON, bad UTF-8, not an object)."""

    kind: str
    message: str
    line: int | None
    key: str


def _bytes_key(data: bytes) -> str:
    return hashlib.sha1(b"raw:" + data).hexdigest()[:16]


def _read_jsonl(path: Path) -> tuple[list, list[int | None]]:
    """Rows (dicts or :class:`_BadRow`) and their 1-based line numbers."""
    with open(path, "rb") as handle:
        data = handle.read()
    rows: list = []
    lines: list[int | None] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark
        if not raw.strip():
            continue
        lines.append(number)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            rows.append(
                _BadRow(
                    "invalid_utf8",
                    f"'{path}' line {number} is not valid UTF-8 (byte 0x{raw[error.start]:02x} at column "
                    f"{error.start + 1}: {error.reason})",
                    number,
                    _bytes_key(raw),
                )
            )
            continue
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            rows.append(
                _BadRow("invalid_json", f"'{path}' line {number} is not valid JSON: {error}", number, _bytes_key(raw))
            )
            continue
        if not isinstance(value, dict):
            rows.append(
                _BadRow(
                    "not_an_object",
                    f"'{path}' line {number} is a JSON {type(value).__name__}, not an object with "
                    f"prompt/response fields: {text.strip()[:80]!r}",
                    number,
                    _bytes_key(raw),
                )
            )
            continue
        rows.append(value)
    if rows and not any(isinstance(r, dict) for r in rows):
        first = next(r for r in rows if isinstance(r, _BadRow))
        raise ValueError(
            f"annotate: '{path}' cannot be read as JSON lines (one JSON object per line): no line holds a row "
            f"object; the first bad one is line {first.line}: {first.message}. Convert it to JSONL (or a .json list "
            "of objects)."
        )
    return rows, lines


def _read_json(path: Path) -> tuple[list, list[int | None]]:
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"annotate: '{path}' is not UTF-8 text (line {line}: byte 0x{data[error.start]:02x}, {error.reason}); "
            "a .json input must be one UTF-8 JSON list of row objects."
        ) from None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        where = f"line {error.lineno} column {error.colno}: {error.msg}" if hasattr(error, "lineno") else str(error)
        raise ValueError(
            f"annotate: '{path}' is not valid JSON ({where}). A .json input is one JSON list of row objects; for "
            "one row per line use a .jsonl file, where a bad line only fails that row."
        ) from None
    if not isinstance(value, list):
        raise ValueError(f"annotate: '{path}' must hold a JSON list of row objects (or use .jsonl).")
    return _objects(value, f"'{path}' item"), [None] * len(value)


def _objects(values: Iterable, what: str) -> list:
    rows: list = []
    for index, value in enumerate(values):
        if isinstance(value, Mapping):
            rows.append(dict(value))
        else:
            raw = json.dumps(value, default=str, ensure_ascii=True).encode()
            rows.append(
                _BadRow(
                    "not_an_object",
                    f"{what} {index} is a {type(value).__name__}, not a row object: {str(value)[:80]!r}",
                    None,
                    _bytes_key(raw),
                )
            )
    return rows


def _load(data: Any) -> tuple[list, list[int | None]]:
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"annotate: input file '{path}' does not exist.")
        return _read_json(path) if path.suffix == ".json" else _read_jsonl(path)
    if hasattr(data, "to_list"):
        rows = data.to_list()
        return rows, [None] * len(rows)
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | Mapping):
        rows = _objects(data, "row")
        return rows, [None] * len(rows)
    raise TypeError(f"annotate: cannot read rows from {type(data).__name__}; pass a Dataset, a .jsonl path or a list")


def load_rows(data: Any) -> list[dict]:
    """The row objects of a ``datasets.Dataset``, a JSONL/JSON path, or an iterable of dicts.

    Lines that are not JSON objects are left out with a warning (:func:`annotate` keeps them as ``row_error``
    records instead); a file in which no line is a row object raises a ``ValueError`` naming the file and line.
    """
    rows, _ = _load(data)
    bad = [r for r in rows if isinstance(r, _BadRow)]
    if bad:
        logger.warning("load_rows: %d unreadable row(s) left out; first: %s", len(bad), bad[0].message)
    return [r for r in rows if not isinstance(r, _BadRow)]


def _dumps(record: dict) -> str:
    text = json.dumps(record, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (from "\ud800" escapes in the input): keep them escaped
        text = json.dumps(record, ensure_ascii=True, default=str)
    return text


def _row_key(prompt: Any, response: Any) -> str:
    payload = json.dumps([prompt, response], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(payload.encode("utf-8", "surrogatepass")).hexdigest()[:16]


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
    payload = "".join(_dumps(r) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _compact(path: Path, records: dict[int, dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for key in sorted(records):
            handle.write(_dumps(records[key]) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _usable_prompt(prompt: Any) -> Any:
    """The prompt as stored in a record: text or chat messages; anything else becomes ``None``."""
    try:
        prompt_to_text(prompt)
    except (TypeError, ValueError):
        return None
    return prompt


def _base_record(index: int, row: Any, key: str, keep_columns: bool, prompt_column: str, response_column: str):
    record: dict[str, Any] = {}
    if isinstance(row, dict):
        if keep_columns:
            record.update(row)
        record.pop(prompt_column, None)
        record.pop(response_column, None)
        response = row.get(response_column)
        record.update(
            prompt=_usable_prompt(row.get(prompt_column)), response=response if isinstance(response, str) else None
        )
    else:
        record.update(prompt=None, response=None)
    record.update(
        critique="",
        good_spans=[],
        poor_spans=[],
        located_spans=[],
        num_located=0,
        num_unlocated=0,
        unlocated_good=[],
        unlocated_poor=[],
        dropped_quotes=0,
        row_error=None,
        critic_error=None,
        _row=index,
        _key=key,
    )
    return record


def _critique_fields(critique: Critique) -> dict[str, Any]:
    """The critique's schema fields with text quotes only (other entries are counted in ``dropped_quotes``)."""
    good = critique.good if isinstance(critique.good, list | tuple) else []
    poor = critique.poor if isinstance(critique.poor, list | tuple) else []
    return {
        "critique": critique.text if isinstance(critique.text, str) else str(critique.text or ""),
        "good_spans": [q for q in good if isinstance(q, str)],
        "poor_spans": [q for q in poor if isinstance(q, str)],
    }


def _error_record(base: dict, kind: str, message: str, line: int | None, critique: Critique | None = None) -> dict:
    record = dict(base)
    if critique is not None:
        record.update(_critique_fields(critique), dropped_quotes=critique.dropped_quotes)
    record["row_error"] = {"kind": kind, "message": message, "line": line}
    record["critic_error"] = f"skipped: {message}" if kind in INPUT_ERROR_KINDS else message
    return record


def _result_record(base: dict, critique: Critique, note: str | None, exact_spans: list | None, locate_kwargs: dict):
    record = dict(base)
    response = base["response"]
    located = locate_critique(response, critique, **locate_kwargs)
    if exact_spans is not None:  # the critic knows the exact character spans (e.g. UnitTestCritic)
        spans = [list(span) for span in check_spans(len(response), exact_spans)]
    else:
        spans = [list(t) for t in located.span_tuples()]
    record.update(
        _critique_fields(critique),
        located_spans=spans,
        num_located=len(spans),
        num_unlocated=located.num_unlocated,
        unlocated_good=located.unlocated_good,
        unlocated_poor=located.unlocated_poor,
        dropped_quotes=critique.dropped_quotes + located.empty_quotes,
        critic_error=note,
    )
    return record


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _input_error(
    row: Any, prompt_column: str, response_column: str, required: list[tuple[str, list[str]]], critic_name: str
) -> tuple[str, str] | None:
    """``(kind, message)`` when the input row cannot be sent to the critic, else ``None``."""
    if isinstance(row, _BadRow):
        return row.kind, row.message
    if prompt_column not in row or row[prompt_column] is None:
        return "missing_prompt", f"the row has no '{prompt_column}'"
    try:
        prompt_to_text(row[prompt_column])
    except (TypeError, ValueError) as error:
        return "invalid_prompt", f"'{prompt_column}': {error}"
    response = row.get(response_column)
    if response is None:
        return "missing_response", f"'{response_column}' is {'missing' if response_column not in row else 'None'}"
    if not isinstance(response, str):
        return "invalid_response", f"'{response_column}' is {type(response).__name__}, not text"
    if not response.strip():
        return "empty_response", f"'{response_column}' is empty"
    for name, alternatives in required:
        if all(_is_blank(row.get(column)) for column in alternatives):
            return (
                "missing_column",
                f"the row has no '{name}' (missing, null or empty), which the critic {critic_name} needs for every row",
            )
    return None


def _ask(critic: Any, prompts: list, responses: list[str], context: dict) -> list[tuple[Any, str | None, Any]]:
    """Ask ``critic`` about one batch: per row ``(critique or CriticFailure, legacy error string, exact spans)``.

    A critic that raises is asked again row by row, so that one row that makes it raise fails alone; a
    :class:`~trl_text2grad.spans.CriticUnavailableError` (the critic as a whole is broken) stops the run.
    """
    count = len(prompts)
    try:
        critiques = list(critic.critique(prompts, responses, **context))
    except CriticUnavailableError:  # the critic as a whole is broken (its sandbox too): stop the run
        raise
    except Exception as error:
        if count > 1:
            results = []
            for i in range(count):
                results.extend(
                    _ask(
                        critic, prompts[i : i + 1], responses[i : i + 1], {k: v[i : i + 1] for k, v in context.items()}
                    )
                )
            return results
        failure = CriticFailure("exception", f"the critic raised {type(error).__name__}: {error}")
        return [(failure, None, None)]
    if len(critiques) != count:
        failure = CriticFailure(
            "critic_output", f"the critic returned {len(critiques)} critiques for a batch of {count} rows"
        )
        return [(failure, None, None)] * count
    errors = getattr(critic, "last_errors", None)
    errors = list(errors) if isinstance(errors, list) and len(errors) == count else [None] * count
    exact = getattr(critic, "last_spans", None)
    exact = list(exact) if isinstance(exact, list) and len(exact) == count else [None] * count
    return list(zip(critiques, errors, exact))


def _as_critique(value: Any, legacy_error: str | None) -> tuple[Critique | None, CriticFailure | None, str | None]:
    """``(critique, failure, note)`` of one critic output."""
    if isinstance(value, CriticFailure):
        return None, value, None
    if isinstance(value, dict):
        try:
            value = Critique.from_dict(value)
        except (TypeError, ValueError) as error:
            return None, CriticFailure("critic_output", f"unusable critique from the critic: {error}"), None
    if not isinstance(value, Critique):
        return (
            None,
            CriticFailure("critic_output", f"the critic returned a {type(value).__name__}, not a Critique"),
            None,
        )
    if value.error is not None:
        failure = (
            value.error if isinstance(value.error, CriticFailure) else CriticFailure("exception", str(value.error))
        )
        return value, failure, None
    if legacy_error:  # a critic that reports through last_errors only
        empty = not value.text and not value.good and not value.poor
        if empty:
            kind = "request" if str(legacy_error).startswith(_REQUEST_FAILED) else "critic"
            return value, CriticFailure(kind, str(legacy_error)), None
        return value, None, str(legacy_error)
    return value, None, None


def _retryable(record: dict) -> bool:
    error = record.get("row_error")
    if isinstance(error, dict):
        return error.get("kind") in CriticFailure.RETRYABLE_KINDS
    return str(record.get("critic_error") or "").startswith(_REQUEST_FAILED)


def _input_error_record(record: dict) -> bool:
    error = record.get("row_error")
    if isinstance(error, dict):
        return error.get("kind") in INPUT_ERROR_KINDS
    return str(record.get("critic_error") or "").startswith("skipped:")


def _required_columns(
    critic: Any, required_columns: Sequence[str] | None, context_columns: Mapping[str, str]
) -> list[tuple[str, list[str]]]:
    """``(name, alternative input columns)`` that every row needs."""
    groups: list[tuple[str, list[str]]] = []
    seen: set[str] = set()

    def alternatives(column: str) -> list[str]:
        key = context_columns.get(column, DEFAULT_CONTEXT_COLUMNS.get(column))
        same = [c for c, k in {**DEFAULT_CONTEXT_COLUMNS, **context_columns}.items() if key is not None and k == key]
        return list(dict.fromkeys([column, *same]))

    for column in required_columns or ():
        if column not in seen:
            groups.append((column, alternatives(column)))
            seen.update(alternatives(column))
    for key in getattr(critic, "required_context", ()) or ():
        columns = [c for c, k in context_columns.items() if k == key] or [key]
        if not seen.intersection(columns):
            groups.append((columns[0], columns))
            seen.update(columns)
    return groups


def _check_columns(
    rows: list, prompt_column: str, response_column: str, context_columns: Mapping[str, str] | None
) -> Mapping[str, str]:
    """Raise when no row has the prompt/response column or a context column; returns the context columns to use
    (default: :data:`DEFAULT_CONTEXT_COLUMNS` present in the data)."""
    objects = [r for r in rows if isinstance(r, dict)]
    columns: set[str] = set().union(*(r.keys() for r in objects)) if objects else set()
    for column, name in ((prompt_column, "prompt_column"), (response_column, "response_column")):
        if objects and column not in columns:
            raise ValueError(
                f"annotate: rows have no '{column}' column (no row has it; columns: {sorted(columns)}); set {name}"
            )
    if context_columns is None:
        context_columns = {c: k for c, k in DEFAULT_CONTEXT_COLUMNS.items() if c in columns}
    missing = [c for c in context_columns if c not in columns]
    if missing and objects:
        raise ValueError(f"annotate: context columns {missing} are not in the data (columns: {sorted(columns)})")
    return context_columns


def _cached_records(
    path: Path, rows: list, key_of: Callable[[int], str], retry_failed: bool
) -> tuple[dict[int, dict], bool]:
    """The records of a previous run in ``path`` that still hold, and whether some were dropped (to re-annotate).

    Raises when the cache was written for other data.
    """
    records = _read_cache(path, repair=True)
    superseded = False
    for index, record in list(records.items()):
        if index >= len(rows):
            raise ValueError(
                f"annotate: the cache '{path}' has row {index} but the data has {len(rows)} rows; it was written for "
                "other data. Use another output_path or resume=False."
            )
        if record.get("_key") != key_of(index):
            if _input_error_record(record) or isinstance(rows[index], _BadRow):
                del records[index]  # a bad input row that was fixed (or broken) since: annotate it again
                superseded = True
                continue
            raise ValueError(
                f"annotate: row {index} of the cache '{path}' does not match the data (different prompt/response); "
                "it was written for other data. Use another output_path or resume=False."
            )
        if retry_failed and _retryable(record):
            del records[index]
            superseded = True
    return records, superseded


@dataclass
class _FailureTally:
    """Row errors by kind, request-side failures in a row (the stop rule) and the last failure."""

    counts: dict[str, int] = field(default_factory=dict)
    consecutive: int = 0
    last: CriticFailure | None = None

    def add(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1


def _annotate_batch(
    batch: list[int],
    rows: list,
    lines: list,
    key_of: Callable[[int], str],
    critic: Any,
    tally: _FailureTally,
    *,
    prompt_column: str,
    response_column: str,
    context_columns: Mapping[str, str],
    required: list[tuple[str, list[str]]],
    row_check: Callable[[dict], str | None] | None,
    keep_columns: bool,
    locate_kwargs: dict[str, float],
) -> list[dict]:
    """One record per row of ``batch`` (input order): row errors for unusable rows, the critic's verdict for the rest."""
    critic_name = describe_critic(critic)
    out: list[dict] = []
    usable = []
    for index in batch:
        row = rows[index]
        base = _base_record(index, row, key_of(index), keep_columns, prompt_column, response_column)
        problem = _input_error(row, prompt_column, response_column, required, critic_name)
        if problem is None and row_check is not None:
            message = row_check(row)
            problem = None if message is None else ("missing_column", str(message))
        if problem is not None:
            kind, message = problem
            logger.warning("annotate: row %d is a row error (%s): %s", index, kind, message)
            out.append(_error_record(base, kind, message, lines[index]))
            tally.add(kind)
        else:
            usable.append((index, base))
    if usable:
        prompts = [rows[i][prompt_column] for i, _ in usable]
        responses = [rows[i][response_column] for i, _ in usable]
        context = {key: [rows[i].get(col) for i, _ in usable] for col, key in context_columns.items()}
        answers = _ask(critic, prompts, responses, context)
        for (index, base), (value, legacy_error, exact) in zip(usable, answers):
            critique, failure, note = _as_critique(value, legacy_error)
            record = None
            if failure is None:
                try:
                    record = _result_record(base, critique, note, exact, locate_kwargs)
                except (TypeError, ValueError) as error:  # e.g. exact spans that are not spans
                    failure = CriticFailure("critic_output", f"unusable critic output: {error}")
            if failure is not None:
                record = _error_record(base, failure.kind, failure.message, lines[index], critique)
                tally.add(failure.kind)
                tally.last = failure
                tally.consecutive = tally.consecutive + 1 if failure.retryable else 0
            else:
                tally.consecutive = 0
            out.append(record)
    out.sort(key=lambda r: r["_row"])
    return out


def annotate(
    data: Any,
    critic: Any,
    output_path: str | os.PathLike,
    batch_size: int = 8,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    context_columns: Mapping[str, str] | None = None,
    required_columns: Sequence[str] | None = None,
    row_check: Callable[[dict], str | None] | None = None,
    keep_columns: bool = True,
    resume: bool = True,
    retry_failed: bool = True,
    max_rows: int | None = None,
    good_score: float = 1.0,
    poor_score: float = -1.0,
    fuzzy_threshold: float = 90.0,
    progress: bool = True,
    return_dataset: bool = True,
    max_consecutive_failures: int | None = 32,
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
        required_columns: Input columns every row needs (a row without one, or with ``None`` / an empty string
            there, is a ``missing_column`` row error and is not sent to the critic). Columns the critic declares in
            its ``required_context`` are added. ``test`` and ``tests`` stand in for each other.
        row_check: A per-row check for what ``required_columns`` cannot express: ``row -> None`` (usable) or a
            message, which makes the row a ``missing_column`` row error that is not sent to the critic.
        keep_columns: Copy the input's other columns into the output rows.
        resume: Skip rows already in ``output_path``. ``False`` starts over (the file is replaced).
        retry_failed: On resume, re-run rows whose critic request failed (retryable ``row_error`` kinds).
        max_rows: Only annotate the first ``max_rows`` rows.
        good_score: Score of located good spans.
        poor_score: Score of located poor spans.
        fuzzy_threshold: Fuzzy-matching threshold for locating quotes (0–100).
        progress: Show a tqdm progress bar.
        return_dataset: Return a ``datasets.Dataset`` of all annotated rows (else a list of dicts).
        max_consecutive_failures: Stop with a :class:`~trl_text2grad.rewards.CriticFailureError` when this many
            rows in a row failed on the request side (retryable kinds: the critic is unreachable, rejects the key,
            ...). ``None`` never stops.

    Returns:
        One record per input row (results and row errors), in input order; see :func:`summarize`.
    """
    if not hasattr(critic, "critique"):
        raise TypeError(f"annotate: critic {type(critic).__name__} has no critique(prompts, responses, **context)")
    if batch_size < 1:
        raise ValueError(f"annotate: batch_size must be >= 1, got {batch_size}")
    if max_consecutive_failures is not None and max_consecutive_failures < 1:
        raise ValueError(f"annotate: max_consecutive_failures must be >= 1 or None, got {max_consecutive_failures}")
    rows, lines = _load(data)
    if max_rows is not None:
        rows, lines = rows[:max_rows], lines[:max_rows]
    context_columns = _check_columns(rows, prompt_column, response_column, context_columns)
    required = _required_columns(critic, required_columns, context_columns)
    critic_name = describe_critic(critic)

    def key_of(index: int) -> str:
        row = rows[index]
        if isinstance(row, _BadRow):
            return row.key
        return _row_key(row.get(prompt_column), row.get(response_column))

    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not resume and path.exists():
        path.unlink()
    records, superseded = _cached_records(path, rows, key_of, retry_failed)
    todo = [i for i in range(len(rows)) if i not in records]
    if records:
        logger.info("annotate: resuming %s: %d rows done, %d to go", path, len(records), len(todo))

    locate_kwargs = {"good_score": good_score, "poor_score": poor_score, "fuzzy_threshold": fuzzy_threshold}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="annotate", unit="row")
    tally = _FailureTally()
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            out = _annotate_batch(
                batch, rows, lines, key_of, critic, tally,
                prompt_column=prompt_column, response_column=response_column, context_columns=context_columns,
                required=required, row_check=row_check, keep_columns=keep_columns, locate_kwargs=locate_kwargs,
            )  # fmt: skip
            _append(path, out)
            for record in out:
                records[record["_row"]] = record
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(errors=sum(tally.counts.values()))
            if max_consecutive_failures is not None and tally.consecutive >= max_consecutive_failures:
                if superseded or _line_count(path) != len(records):
                    _compact(path, records)
                raise CriticFailureError(
                    f"annotate: the critic {critic_name} failed on the last {tally.consecutive} rows in a row "
                    f"(failures so far: {_format_counts(tally.counts)}); last failure: {tally.last}. {len(records)} of "
                    f"{len(rows)} rows are recorded in {path}; fix the critic (endpoint, key, ...) and run again: the "
                    "finished rows are kept and the failed ones are retried.",
                    critic=critic_name,
                    failure=tally.last,
                    counts=tally.counts,
                )
    finally:
        if bar is not None:
            bar.close()
    if superseded or _line_count(path) != len(records):
        _compact(path, records)
    result = [records[k] for k in sorted(records)]
    summary = summarize(result)
    if summary["errors"] or summary["unlocated_quotes"] or summary["dropped_quotes"]:
        logger.warning(
            "annotate: %s (details in row_error / num_unlocated / dropped_quotes of %s)", format_summary(summary), path
        )
    if not return_dataset:
        return result
    return _to_dataset(result)


def _format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items())) or "none"


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts over annotation records: ``rows``, ``annotated`` (rows with a result), ``errors`` (row errors by
    kind), ``input_errors`` / ``critic_failures`` (their totals), ``located_quotes``, ``unlocated_quotes`` and
    ``dropped_quotes``."""
    errors: dict[str, int] = {}
    located = unlocated = dropped = 0
    for record in records:
        error = record.get("row_error")
        if isinstance(error, Mapping):
            kind = str(error.get("kind"))
        elif str(record.get("critic_error") or "").startswith("skipped:"):  # a cache written by an older version
            kind = "skipped"
        elif str(record.get("critic_error") or "").startswith(_REQUEST_FAILED):
            kind = "request"
        else:
            kind = None
        if kind is not None:
            errors[kind] = errors.get(kind, 0) + 1
        located += int(record.get("num_located") or 0)
        unlocated += int(record.get("num_unlocated") or 0)
        dropped += int(record.get("dropped_quotes") or 0)
    input_errors = sum(n for kind, n in errors.items() if kind in INPUT_ERROR_KINDS or kind == "skipped")
    return {
        "rows": len(records),
        "annotated": len(records) - sum(errors.values()),
        "errors": dict(sorted(errors.items())),
        "input_errors": input_errors,
        "critic_failures": sum(errors.values()) - input_errors,
        "located_quotes": located,
        "unlocated_quotes": unlocated,
        "dropped_quotes": dropped,
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """One line of :func:`summarize`'s counts."""
    return (
        f"{summary['rows']} rows: {summary['annotated']} annotated, {sum(summary['errors'].values())} row errors "
        f"({_format_counts(summary['errors'])}); {summary['located_quotes']} quotes located, "
        f"{summary['unlocated_quotes']} not located, {summary['dropped_quotes']} dropped (not text)"
    )


def _to_dataset(records: list[dict]):
    """A ``datasets.Dataset`` of the records, with the union of their columns (a column of mixed value types that
    Arrow cannot hold is stored as JSON text, with a warning)."""
    from datasets import Dataset

    if not records:
        return Dataset.from_dict({})
    names = list(dict.fromkeys(key for record in records for key in record))
    columns = {name: [record.get(name) for record in records] for name in names}
    try:
        return Dataset.from_dict(columns)
    except Exception:  # pyarrow refuses mixed types in one column: find them
        pass
    for name, values in columns.items():
        try:
            Dataset.from_dict({name: values})
        except Exception:
            logger.warning("annotate: column '%s' mixes value types; it is returned as JSON text.", name)
            columns[name] = [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values]
    return Dataset.from_dict(columns)


def _line_count(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())
