"""Critiques, scored character spans, and locating quoted phrases in a response.

A critic quotes phrases of a response it judged good or poor. Before they can become token rewards the
quotes must be found in the response as *character* spans. :func:`locate_quotes` does that in three stages:

1. **exact**: ``str.find``;
2. **normalised**: the same search after Unicode compatibility decomposition (NFKD), case folding, curly →
   straight quotes and apostrophes, every dash → ``-``, and runs of whitespace → one space; then once more
   without quotation marks around the quote (critics often wrap quotes in them). The match is mapped back to the
   original characters, so the span always indexes the original text;
3. **fuzzy**: :func:`rapidfuzz.fuzz.partial_ratio_alignment` on the normalised strings finds the best window,
   whose edges are then moved by a few characters to maximise :func:`rapidfuzz.fuzz.ratio` of quote vs window;
   accepted only when that ratio reaches ``fuzzy_threshold`` (default 90) and the quote has at least
   ``fuzzy_min_length`` characters, so that a phrase that is absent from the text is not "found" (measured on
   HumanEval: a line of another problem is "found" in < 0.2 % of cases, all near-verbatim).

A quote that occurs several times resolves to its first occurrence that starts at or after the end of the
previously located quote of the same list (critics quote in reading order), else to its first occurrence.
Quotes that cannot be located are returned as ``None``: they are reported and counted, never guessed.
"""

from __future__ import annotations

import logging
import math
import numbers
import unicodedata
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz

logger = logging.getLogger(__name__)

__all__ = [
    "Critique",
    "CriticFailure",
    "CriticUnavailableError",
    "check_spans",
    "ScoredSpan",
    "LocatedCritique",
    "locate_quotes",
    "locate_critique",
    "normalize_with_offsets",
    "strip_span",
]

DEFAULT_FUZZY_THRESHOLD = 90.0
DEFAULT_FUZZY_MIN_LENGTH = 8

_CHAR_MAP = {
    "\u2018": "'",  # left single quotation mark
    "\u2019": "'",  # right single quotation mark / apostrophe
    "\u201a": "'",
    "\u201b": "'",
    "\u2032": "'",  # prime
    "\u00b4": "'",
    "`": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u201f": '"',
    "\u2033": '"',
    "\u00ab": '"',
    "\u00bb": '"',
    "\u2010": "-",
    "\u2011": "-",
    "\u2012": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u2015": "-",
    "\u2212": "-",
    "\ufe58": "-",
    "\ufe63": "-",
    "\uff0d": "-",
}


@dataclass(frozen=True)
class CriticFailure:
    """Why a critic (or reward function) could not judge one row: a machine-readable ``kind`` and a ``message``.

    A failure is never an empty critique: critics return ``Critique(error=CriticFailure(...))`` for such a row (or,
    for reward functions returning spans or numbers, the ``CriticFailure`` itself in place of the output); trainers
    and :func:`~trl_text2grad.annotate.annotate` count it by ``kind``.

    Kinds used by the package (custom critics may add their own):

    * request side, worth retrying later (``retryable``): ``"auth"`` (401/403, a wrong or missing key),
      ``"connection"`` (endpoint unreachable), ``"timeout"``, ``"rate_limit"`` (429 after the retries), ``"server"``
      (5xx), ``"request"`` (any other failed request), ``"generation"`` (a local model's ``generate`` raised, e.g. out
      of memory), ``"exception"`` (the critic / reward function raised);
    * about the answer or the row: ``"empty_answer"``, ``"parse"`` (no critique object in the answer),
      ``"missing_context"`` (the row lacks a column the critic needs, e.g. ``test``/``entry_point``),
      ``"invalid_input"`` (e.g. a prompt that is neither text nor chat messages), ``"invalid_output"`` (the reward
      function returned something unusable), ``"unlocated"`` (none of the quotes is in the response),
      ``"no_reward"`` (the reward function returned ``None``).
    """

    kind: str
    message: str

    #: Kinds caused by the request or the critic's machinery rather than by the row: retried on resume.
    RETRYABLE_KINDS = frozenset(
        {"auth", "connection", "timeout", "rate_limit", "server", "request", "generation", "exception"}
    )

    @property
    def retryable(self) -> bool:
        """Whether asking again later may succeed (request-side failures)."""
        return self.kind in self.RETRYABLE_KINDS

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class CriticUnavailableError(RuntimeError):
    """Raised by a critic that cannot work at all (its sandbox, its server process), as opposed to one row it cannot
    judge. ``annotate`` stops with it (the rows written so far are kept; a rerun resumes) instead of failing every
    row; trainers count it as a failure of the whole batch, bounded by their failure budget."""


@dataclass
class Critique:
    """A natural-language critique of one response, with the phrases it quotes.

    Args:
        text: The critique itself (free text; may be empty for programmatic critics).
        good: Phrases quoted verbatim (or nearly) from the response that the critic judged good.
        poor: Phrases quoted from the response that the critic judged poor.
        error: Set when the critic could not judge the response (request failed, answer unparseable, row lacking a
            column, ...): a :class:`CriticFailure`. Such a critique is a *failure*, counted by every trainer and by
            ``annotate``, never an empty (all-neutral) critique.
        dropped_quotes: Entries of the critic's answer that were not quotable text (numbers, ``null``, objects
            without a quote) and were ignored.
    """

    text: str = ""
    good: list[str] = field(default_factory=list)
    poor: list[str] = field(default_factory=list)
    error: CriticFailure | None = None
    dropped_quotes: int = 0

    @property
    def failed(self) -> bool:
        """Whether the critic failed on this row (``error`` is set)."""
        return self.error is not None

    def to_dict(self) -> dict:
        return {"critique": self.text, "good_spans": list(self.good), "poor_spans": list(self.poor)}

    @classmethod
    def from_dict(cls, row: dict) -> Critique:
        """Build from the annotation schema ``{"critique", "good_spans", "poor_spans"}``.

        A single string where a list is expected is taken as one quote (not split into characters); ``None``
        means no quotes. Numbers become strings; ``None`` entries are dropped (counted in ``dropped_quotes`` and
        logged), so that ``good`` and ``poor`` only ever hold strings.
        """
        good, dropped_good = _quote_list(row, "good_spans")
        poor, dropped_poor = _quote_list(row, "poor_spans")
        text = row.get("critique")
        return cls(
            text=text if isinstance(text, str) else ("" if text is None else str(text)),
            good=good,
            poor=poor,
            dropped_quotes=dropped_good + dropped_poor,
        )


def _quote_list(row: dict, key: str) -> tuple[list[str], int]:
    value = row.get(key)
    if value is None:
        return [], 0
    if isinstance(value, str):
        return [value], 0
    try:
        if isinstance(value, (bytes, dict)):
            raise TypeError
        value = list(value)
    except TypeError:
        raise TypeError(f"Critique.from_dict: '{key}' must be a list of quoted strings, got {value!r}.") from None
    quotes = [q if isinstance(q, str) else str(q) for q in value if q is not None]
    if len(quotes) != len(value):
        logger.warning("Critique.from_dict: dropped %d None entries of '%s'.", len(value) - len(quotes), key)
    return quotes, len(value) - len(quotes)


def _is_real(value: Any) -> bool:
    """A real number (Python, NumPy or a one-element tensor), not a bool and not a string."""
    if isinstance(value, bool | str | bytes):
        return False
    if isinstance(value, numbers.Real):
        return True
    return type(value).__name__ == "Tensor" and getattr(value, "numel", lambda: 0)() == 1


def _offset(value: Any, what: str, where: str) -> int:
    if not _is_real(value):
        raise ValueError(f"{where}: the {what} offset must be an integer, got {type(value).__name__} {value!r:.40}.")
    if isinstance(value, numbers.Integral):
        return int(value)  # no float round trip: 10**400 stays an (out-of-range) integer
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{where}: the {what} offset is non-finite ({number}); offsets must be whole numbers.")
    if not number.is_integer():
        raise ValueError(
            f"{where}: the {what} offset {number!r} is not a whole number; offsets are character indices "
            "(round them yourself if that is what you mean)."
        )
    return int(number)


def check_spans(text_length: int, spans: Any, name: str = "span") -> list[tuple[int, int, float]]:
    """Validate ``(start, end, score)`` character spans of a text of ``text_length`` characters.

    Offsets must be whole numbers (``3`` or ``3.0``; not ``3.5``, ``"3"``, ``nan`` or ``inf``) with
    ``0 <= start <= end <= text_length``; scores must be finite real numbers (not strings). Returns the spans as
    ``(int, int, float)`` tuples.

    Raises:
        ValueError: naming the offending span (``span #i (...)``) and what is wrong with it.
    """
    if spans is None:
        return []
    if isinstance(spans, str | bytes) or not hasattr(spans, "__iter__"):
        raise ValueError(f"spans must be a list of (start, end, score), got {type(spans).__name__} {spans!r:.80}.")
    checked = []
    for index, span in enumerate(spans):
        if isinstance(span, ScoredSpan):
            span = span.as_tuple()
        where = f"{name} #{index} {span!r:.80}"
        if isinstance(span, str | bytes | dict) or not hasattr(span, "__len__") or len(span) != 3:
            raise ValueError(f"{where}: must be (start, end, score).")
        start, end, score = span
        start, end = _offset(start, "start", where), _offset(end, "end", where)
        if not _is_real(score):
            raise ValueError(f"{where}: the score must be a number, got {type(score).__name__} {score!r:.40}.")
        try:
            score = float(score)
        except OverflowError:
            raise ValueError(f"{where}: the score is too large for a float.") from None
        if not math.isfinite(score):
            raise ValueError(f"{where}: the score is non-finite ({score}); scores must be finite numbers.")
        if not (0 <= start <= end <= text_length):
            raise ValueError(
                f"{where}: ({start}, {end}) is out of range for a response of {text_length} characters; spans are "
                "half-open character offsets into the response text with start <= end."
            )
        checked.append((start, end, score))
    return checked


@dataclass(frozen=True)
class ScoredSpan:
    """A half-open character range ``[start, end)`` of a response with a reward score."""

    start: int
    end: int
    score: float
    quote: str | None = None

    def as_tuple(self) -> tuple[int, int, float]:
        return (self.start, self.end, self.score)


@dataclass
class LocatedCritique:
    """The result of locating a :class:`Critique`'s quotes in its response.

    ``spans`` lists the good spans first and the poor spans after them, so that where a good and a poor span
    overlap, the poor one wins under the "later span wins" alignment rule (criticism takes precedence).
    """

    spans: list[ScoredSpan]
    unlocated_good: list[str] = field(default_factory=list)
    unlocated_poor: list[str] = field(default_factory=list)
    empty_quotes: int = 0

    @property
    def num_located(self) -> int:
        return len(self.spans)

    @property
    def num_unlocated(self) -> int:
        return len(self.unlocated_good) + len(self.unlocated_poor)

    def span_tuples(self) -> list[tuple[int, int, float]]:
        return [s.as_tuple() for s in self.spans]


def _normalize_char(ch: str) -> str:
    mapped = _CHAR_MAP.get(ch)
    if mapped is not None:
        return mapped
    if ch.isspace():
        return " "
    if ch.isascii():
        return ch.lower()
    out = []
    for c in unicodedata.normalize("NFKD", ch):
        c = _CHAR_MAP.get(c, c)
        out.append(" " if c.isspace() else c.casefold())
    return "".join(out)


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` moved inwards past the whitespace at the edges of ``text[start:end]``; ``start == end`` when
    the range holds only whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """Normalise ``text`` for matching and map every normalised character back to its source character.

    Returns ``(normalised, origin)`` where ``origin[i]`` is the index in ``text`` of the character that produced
    ``normalised[i]``. Runs of whitespace collapse to a single space; leading/trailing whitespace is kept as one
    space so offsets stay meaningful.
    """
    chars: list[str] = []
    origin: list[int] = []
    previous_space = False
    for index, ch in enumerate(text):
        for c in _normalize_char(ch):
            if c == " ":
                if previous_space:
                    continue
                previous_space = True
            else:
                previous_space = False
            chars.append(c)
            origin.append(index)
    return "".join(chars), origin


def _normalize_quote(quote: str) -> str:
    normalised, _ = normalize_with_offsets(quote.strip())
    return normalised


def _find_preferring(haystack: str, needle: str, after: int) -> int:
    """First occurrence of ``needle`` starting at or after ``after``, else the first occurrence, else -1."""
    if after > 0:
        position = haystack.find(needle, after)
        if position >= 0:
            return position
    return haystack.find(needle)


def _check_fuzzy_settings(caller: str, threshold: Any, min_length: Any) -> None:
    if not _is_real(threshold) or not (0.0 <= float(threshold) <= 100.0):
        raise ValueError(f"{caller}: fuzzy_threshold must be a number from 0 to 100, got {threshold!r}.")
    if isinstance(min_length, bool) or not isinstance(min_length, numbers.Integral) or min_length < 0:
        raise ValueError(f"{caller}: fuzzy_min_length must be a non-negative integer, got {min_length!r}.")


def _check_score(caller: str, name: str, value: Any) -> float:
    if not _is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"{caller}: {name} must be a finite number, got {value!r}.")
    return float(value)


def _check_text(text: object) -> str:
    if text is None:
        raise ValueError("locate_quotes: the response text is None; pass the decoded response string.")
    if not isinstance(text, str):
        raise TypeError(f"locate_quotes: the response text must be a str, got {type(text).__name__}.")
    return text


def _fuzzy_window(needle: str, haystack: str, offset: int, threshold: float) -> tuple[int, int] | None:
    """Best fuzzy window ``[start, end)`` of ``haystack[offset:]`` for ``needle`` (indices into ``haystack``)."""
    region = haystack[offset:]
    if not region:
        return None
    alignment = fuzz.partial_ratio_alignment(needle, region, score_cutoff=threshold)
    if alignment is None or alignment.dest_end <= alignment.dest_start:
        return None
    # partial_ratio scores the best window of the *shorter* string; when the quote is longer than the region
    # (or the window is much shorter than the quote) the plain ratio of quote vs window keeps such a "match"
    # honest: extra words in the quote that the response does not have lower it below the threshold.
    start, end, score = _refine_window(needle, region, alignment.dest_start, alignment.dest_end)
    if score < threshold:
        return None
    return offset + start, offset + end


def _refine_window(needle: str, haystack: str, start: int, end: int) -> tuple[int, int, float]:
    """Move the window's edges by a few characters to maximise ``fuzz.ratio(needle, window)``.

    ``partial_ratio`` compares windows as long as the quote, so a quote with a dropped or extra character is
    aligned one character short or long; this puts the edges where the quote really starts and ends.
    """
    reach = max(2, len(needle) // 10)
    best = (fuzz.ratio(needle, haystack[start:end]), start, end)
    for _ in range(2):
        _, start, end = best
        for new_end in range(max(start + 1, end - reach), min(len(haystack), end + reach) + 1):
            score = fuzz.ratio(needle, haystack[start:new_end])
            if score > best[0]:
                best = (score, start, new_end)
        _, start, end = best
        for new_start in range(max(0, start - reach), min(end - 1, start + reach) + 1):
            score = fuzz.ratio(needle, haystack[new_start:end])
            if score > best[0]:
                best = (score, new_start, end)
    score, start, end = best
    return start, end, score


def locate_quotes(
    text: str,
    quotes: Sequence[str],
    *,
    fuzzy: bool = True,
    fuzzy_threshold: float = DEFAULT_FUZZY_THRESHOLD,
    fuzzy_min_length: int = DEFAULT_FUZZY_MIN_LENGTH,
) -> list[tuple[int, int] | None]:
    """Find each quoted phrase in ``text`` and return its character span ``(start, end)`` or ``None``.

    Args:
        text: The response the quotes were taken from.
        quotes: Phrases to find. Empty or whitespace-only quotes raise ``ValueError`` (filter them first, as
            :func:`locate_critique` does, if your critic may produce them).
        fuzzy: Allow the fuzzy stage.
        fuzzy_threshold: Minimum rapidfuzz score (0–100) for a fuzzy match: both the ``partial_ratio`` of the
            best window and the plain ``ratio`` of the quote against that window must reach it. At the default
            (90) a quote of 10 characters tolerates one substitution; a phrase absent from the text is not found.
        fuzzy_min_length: Quotes shorter than this (after normalisation) are never matched fuzzily: short
            strings reach high partial-ratio scores by chance.

    Returns:
        One entry per quote: ``(start, end)`` half-open character offsets into ``text``, or ``None`` when the quote
        could not be located. Leading/trailing whitespace of a quote is not part of its span.

    Repeated quotes: each stage first looks for an occurrence starting at or after the end of the previously
    located quote of this list (critics quote in reading order), and falls back to the first occurrence. So
    ``locate_quotes("x = 1; x = 1", ["x = 1", "x = 1"])`` gives ``[(0, 5), (7, 12)]``.
    """
    text = _check_text(text)
    _check_fuzzy_settings("locate_quotes", fuzzy_threshold, fuzzy_min_length)
    if isinstance(quotes, str):
        raise TypeError("locate_quotes: `quotes` must be a list of strings, not a single str; wrap it: [quote].")
    for index, quote in enumerate(quotes):
        if not isinstance(quote, str):
            raise TypeError(f"locate_quotes: quote #{index} must be a str, got {type(quote).__name__}.")
        if not quote.strip():
            raise ValueError(
                f"locate_quotes: quote #{index} is empty or whitespace-only ({quote!r}); an empty quote names no "
                "part of the response. Drop it before locating (locate_critique does and counts it)."
            )

    results: list[tuple[int, int] | None] = []
    normalised_text: str | None = None
    origin: list[int] = []
    previous_end = 0
    for quote in quotes:
        stripped = quote.strip()
        span: tuple[int, int] | None = None
        position = _find_preferring(text, stripped, previous_end)
        if position >= 0:
            span = (position, position + len(stripped))
        else:
            if normalised_text is None:
                normalised_text, origin = normalize_with_offsets(text)
            needle = _normalize_quote(stripped)
            after = _first_normalised_index_at_or_after(origin, previous_end)
            n_pos = _find_preferring(normalised_text, needle, after) if needle else -1
            bare = needle.strip("'\" ")
            if n_pos < 0 and bare and bare != needle:  # the critic wrapped the quote in quotation marks
                n_pos = _find_preferring(normalised_text, bare, after)
                if n_pos >= 0:
                    needle = bare
            if n_pos >= 0:
                span = (origin[n_pos], origin[n_pos + len(needle) - 1] + 1)
            elif fuzzy and len(needle) >= fuzzy_min_length and normalised_text:
                window = None
                if after > 0:
                    window = _fuzzy_window(needle, normalised_text, after, fuzzy_threshold)
                if window is None:
                    window = _fuzzy_window(needle, normalised_text, 0, fuzzy_threshold)
                if window is not None:
                    # Trim whitespace the fuzzy window may have caught at its edges.
                    start, end = strip_span(text, origin[window[0]], origin[window[1] - 1] + 1)
                    if end > start:
                        span = (start, end)
        if span is not None:
            previous_end = span[1]
        results.append(span)
    return results


def _first_normalised_index_at_or_after(origin: list[int], char_index: int) -> int:
    if char_index <= 0:
        return 0
    return bisect_left(origin, char_index)


def locate_critique(
    text: str,
    critique: Critique,
    *,
    good_score: float = 1.0,
    poor_score: float = -1.0,
    fuzzy: bool = True,
    fuzzy_threshold: float = DEFAULT_FUZZY_THRESHOLD,
    fuzzy_min_length: int = DEFAULT_FUZZY_MIN_LENGTH,
) -> LocatedCritique:
    """Locate a critique's good and poor quotes in ``text`` and return scored spans plus what was not found.

    Empty quotes are dropped and counted in ``empty_quotes``; unlocated quotes are listed, never guessed.
    """
    text = _check_text(text)
    good_score = _check_score("locate_critique", "good_score", good_score)
    poor_score = _check_score("locate_critique", "poor_score", poor_score)
    kwargs = {"fuzzy": fuzzy, "fuzzy_threshold": fuzzy_threshold, "fuzzy_min_length": fuzzy_min_length}
    spans: list[ScoredSpan] = []
    unlocated: dict[str, list[str]] = {"good": [], "poor": []}
    empty = 0
    for polarity, quotes, score in (("good", critique.good, good_score), ("poor", critique.poor, poor_score)):
        kept = []
        for quote in quotes or []:
            if not isinstance(quote, str) or not quote.strip():
                empty += 1
            else:
                kept.append(quote)
        for quote, span in zip(kept, locate_quotes(text, kept, **kwargs)):
            if span is None:
                unlocated[polarity].append(quote)
            else:
                spans.append(ScoredSpan(span[0], span[1], score, quote))
    return LocatedCritique(spans, unlocated["good"], unlocated["poor"], empty)
