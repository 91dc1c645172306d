"""Training rows of the generative form: instruction (prompt + response) → target JSON, within the length limits.

:func:`encode_generative_row` tokenizes one span row. Two limits apply:

* ``max_target_length`` bounds the target (``{"critique", "good_spans", "poor_spans"}`` JSON + eos): the critique is
  shortened first; when the quotes alone are too long, every quote keeps its beginning (:func:`build_target`);
* ``max_length`` bounds instruction + target: the longest prefix of the response (at a token boundary) whose
  instruction + target fit is kept, found by binary search since the length only grows with the prefix; a span cut
  by the prefix keeps its kept part (:func:`longest_fitting_prefix`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..spans import locate_critique
from .data import row_critique
from .modeling import IGNORE_INDEX, build_generative_prompt_ids, format_generative_target

__all__ = ["GenerativeTarget", "build_target", "longest_fitting_prefix", "encode_generative_row"]


@dataclass
class GenerativeTarget:
    """One encoded candidate: instruction ids, target ids (ending with eos), the quotes kept, whether it was cut."""

    prompt_ids: list[int]
    target_ids: list[int]
    good: list[str]
    poor: list[str]
    critique_cut: bool

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


def _quotes_within(response: str, char_spans: list[tuple[int, int, float]], upto: int) -> tuple[list, list]:
    """Quotes of the spans within ``response[:upto]``; a span cut by ``upto`` keeps its kept part."""
    good, poor = [], []
    for start, end, score in char_spans:
        quote = response[start : min(end, upto)].strip() if start < upto else ""
        if quote and score != 0:
            (good if score > 0 else poor).append(quote)
    return good, poor


def _shorten_quotes(good: list[str], poor: list[str], fits: Callable[[list, list], bool]) -> tuple[list, list]:
    """Cut every quote to the same number of characters (halving it) until ``fits``; drop quotes left empty."""
    chars = max(len(q) for q in good + poor)
    while chars > 1 and not fits([q[:chars] for q in good], [q[:chars] for q in poor]):
        chars //= 2
    return [q[:chars].rstrip() for q in good if q[:chars].strip()], [
        q[:chars].rstrip() for q in poor if q[:chars].strip()
    ]


def build_target(tokenizer, critique: str, good: list[str], poor: list[str], max_target_length: int) -> tuple:
    """``(target ids ending with eos, good, poor, cut)`` within ``max_target_length`` tokens (at least 2).

    The critique text is shortened first (at a token boundary); when the quotes alone do not fit, the critique is
    dropped and every quote keeps its beginning.
    """
    limit = max(2, max_target_length)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    critique_text, cut = critique, False
    if n_tokens(format_generative_target(critique, good, poor)) + 1 > limit:
        cut = True
        room = limit - 1 - n_tokens(format_generative_target("", good, poor))
        if room > 0:
            offsets = tokenizer(critique, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            critique_text = critique[: offsets[min(room, len(offsets)) - 1][1]] if offsets else ""
        else:
            critique_text = ""
            good, poor = _shorten_quotes(
                good, poor, lambda g, p: n_tokens(format_generative_target("", g, p)) + 1 <= limit
            )
    ids = list(tokenizer(format_generative_target(critique_text, good, poor), add_special_tokens=False)["input_ids"])
    return ids[: limit - 1] + [tokenizer.eos_token_id], good, poor, cut


def longest_fitting_prefix(
    tokenizer, response: str, encode: Callable[[int], GenerativeTarget], max_length: int
) -> GenerativeTarget:
    """The encoding of the longest token-boundary prefix of ``response`` whose length is at most ``max_length``.

    ``encode(upto)`` encodes ``response[:upto]``; its length must not decrease as ``upto`` grows (binary search).
    If even the empty prefix is too long (the task prompt alone), the instruction keeps its last tokens.
    """
    offsets = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    cuts = [0] + [end for _, end in offsets]
    low, high = 0, len(cuts) - 1  # cuts[high] does not fit; cuts[low] is the best that does (if any)
    best = encode(0)
    while high - low > 1:
        middle = (low + high) // 2
        candidate = encode(cuts[middle])
        if len(candidate) <= max_length:
            low, best = middle, candidate
        else:
            high = middle
    if len(best) > max_length:
        keep = max(1, max_length - len(best.target_ids))
        best.prompt_ids = best.prompt_ids[len(best.prompt_ids) - keep :]
    return best


def _char_spans(row: Mapping[str, Any], response: str, fuzzy_threshold: float) -> tuple[str, list, int]:
    """(critique text, ``(start, end, ±1)`` character spans of the row's quotes or spans, quotes not located)."""
    critique, spans = row_critique(row)
    text = critique.text if critique is not None else (row.get("critique") or "")
    if spans is None and critique is not None:
        located = locate_critique(response, critique, fuzzy_threshold=fuzzy_threshold)
        char_spans = [(s.start, s.end, 1.0 if s.score > 0 else -1.0) for s in located.spans]
        return text, char_spans, located.num_unlocated + located.empty_quotes
    return text, [(int(s[0]), int(s[1]), float(s[2])) for s in (spans or [])], 0


def encode_generative_row(row: Mapping[str, Any], tokenizer, args: Any) -> dict[str, Any]:
    """Tokenize one span row for the generative form (``args``: a ``SpanRewardConfig``).

    Returns ``input_ids`` (instruction + target), ``labels`` (-100 on the instruction) and the counters
    ``quotes_unlocated``, ``rows_truncated``, ``rows_without_spans``, ``critiques_cut``.
    """
    response = row["response"]
    prompt = row["prompt"] if row.get("prompt") is not None else row.get("messages")
    text, char_spans, unlocated = _char_spans(row, response, args.fuzzy_threshold)

    def encode(upto: int) -> GenerativeTarget:
        good, poor = _quotes_within(response, char_spans, upto)
        target_ids, good, poor, cut = build_target(tokenizer, text, good, poor, args.max_target_length)
        prompt_ids = build_generative_prompt_ids(tokenizer, prompt, response[:upto], args.critique_prompt)
        return GenerativeTarget(prompt_ids, target_ids, good, poor, cut)

    encoded = encode(len(response))
    truncated = args.max_length is not None and len(encoded) > args.max_length
    if truncated:
        encoded = longest_fitting_prefix(tokenizer, response, encode, args.max_length)
    return {
        "input_ids": encoded.prompt_ids + encoded.target_ids,
        "labels": [IGNORE_INDEX] * len(encoded.prompt_ids) + encoded.target_ids,
        "quotes_unlocated": unlocated,
        "rows_truncated": int(truncated),
        "rows_without_spans": int(not (encoded.good or encoded.poor)),
        "critiques_cut": int(encoded.critique_cut),
    }
