"""Extract the critique JSON object from an LLM's answer.

LLM critics (and small local models in particular) wrap the requested object in prose, in Markdown fences, emit
trailing commas, single quotes, unquoted keys or an unterminated string. :func:`parse_critique` handles these
with the maintained ``json_repair`` library rather than a stack of regular expressions:

1. drop ``<think>...</think>`` reasoning blocks;
2. take the first fenced block (```json ... ```) if any, else the text from the first ``{``;
3. ``json_repair.loads`` it; if that yields no object, try the whole answer;
4. validate the schema: ``critique`` (str; ``feedback``/``explanation`` accepted as aliases), ``good_spans`` and
   ``poor_spans`` (lists of str; a bare string becomes a one-element list; objects with a ``quote``/``text``/
   ``span`` field are unwrapped; anything else is dropped and counted in ``ParsedCritique.dropped_items``).

It never raises on model output: an answer without any usable object gives an empty :class:`Critique` whose
text is the raw answer and ``error`` says why. Locating the quotes in the response is
:func:`trl_text2grad.spans.locate_critique`'s job; the annotation pipeline reports the quotes it cannot find.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import json_repair

from ..spans import Critique

__all__ = ["ParsedCritique", "parse_critique"]

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_TEXT_KEYS = ("critique", "feedback", "explanation", "comment", "analysis")
_GOOD_KEYS = ("good_spans", "good", "good_quotes", "positive_spans")
_POOR_KEYS = ("poor_spans", "poor", "bad_spans", "poor_quotes", "negative_spans")
_QUOTE_KEYS = ("quote", "text", "span")


@dataclass
class ParsedCritique:
    """Result of :func:`parse_critique`.

    Args:
        critique: The parsed critique (empty spans when parsing failed).
        error: ``None`` when a JSON object with the expected fields was found, else what went wrong.
        dropped_items: Span entries that were not strings (or quote objects) and were ignored (also in
            ``critique.dropped_quotes``).
        found_object: Whether the answer held a critique object at all. ``False`` means the answer cannot be used:
            critics report such a row as a failure (``Critique.error``, kind ``"parse"`` or ``"empty_answer"``). An
            object that lacks some fields (``error`` set, ``found_object`` true) is still a usable critique.
    """

    critique: Critique
    error: str | None = None
    dropped_items: int = 0
    found_object: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None


def _load_object(candidate: str) -> dict | None:
    candidate = candidate.strip()
    if not candidate:
        return None
    try:
        value = json_repair.loads(candidate)
    except Exception:  # json_repair is lenient, but never let model output crash a run
        return None
    if isinstance(value, list):  # e.g. "[{...}]" or the repairer split the text into several values
        value = next((v for v in value if isinstance(v, dict) and _has_schema_key(v)), None)
    return value if isinstance(value, dict) else None


def _has_schema_key(obj: dict) -> bool:
    return any(k in obj for k in (*_TEXT_KEYS, *_GOOD_KEYS, *_POOR_KEYS))


def _spans(value: object) -> tuple[list[str], int]:
    if value is None:
        return [], 0
    if isinstance(value, str):
        return ([value] if value.strip() else []), 0
    if not isinstance(value, list | tuple):
        return [], 1
    quotes, dropped = [], 0
    for item in value:
        if isinstance(item, str):
            if item.strip():
                quotes.append(item)
        elif isinstance(item, dict) and any(isinstance(item.get(k), str) for k in _QUOTE_KEYS):
            quotes.append(next(item[k] for k in _QUOTE_KEYS if isinstance(item.get(k), str)))
        else:
            dropped += 1
    return quotes, dropped


def _first(obj: dict, keys: tuple[str, ...]) -> object:
    lowered = {str(k).lower(): v for k, v in obj.items()}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return None


def parse_critique(text: str | None) -> ParsedCritique:
    """Parse an LLM answer into a :class:`~trl_text2grad.spans.Critique` (see the module docstring)."""
    if text is None:
        return ParsedCritique(Critique(), error="empty answer (None)", found_object=False)
    if not isinstance(text, str):
        return ParsedCritique(Critique(), error=f"answer is {type(text).__name__}, not text", found_object=False)
    cleaned = _THINK.sub("", text).strip()
    if not cleaned:
        return ParsedCritique(Critique(), error="empty answer", found_object=False)

    candidates: list[str] = []
    fence = _FENCE.search(cleaned)
    if fence:
        candidates.append(fence.group(1))
    brace = cleaned.find("{")
    if brace >= 0:
        candidates.append(cleaned[brace:])
    candidates.append(cleaned)

    obj = None
    for candidate in candidates:
        obj = _load_object(candidate)
        if obj is not None and _has_schema_key(obj):
            break
        obj = None
    if obj is None:
        return ParsedCritique(
            Critique(text=cleaned), error="no JSON object with critique/good_spans/poor_spans", found_object=False
        )

    raw_text = _first(obj, _TEXT_KEYS)
    critique_text = raw_text if isinstance(raw_text, str) else ("" if raw_text is None else str(raw_text))
    good, dropped_good = _spans(_first(obj, _GOOD_KEYS))
    poor, dropped_poor = _spans(_first(obj, _POOR_KEYS))
    missing = [
        name for name, keys in (("good_spans", _GOOD_KEYS), ("poor_spans", _POOR_KEYS)) if _first(obj, keys) is None
    ]
    error = None
    if raw_text is None and missing:
        error = f"JSON object lacks 'critique' and {missing}"
    dropped = dropped_good + dropped_poor
    return ParsedCritique(
        Critique(critique_text, good, poor, dropped_quotes=dropped), error=error, dropped_items=dropped
    )
