"""Batches of prompt + response with per-token span rewards: the one place where character spans become tokens.

:class:`SpanAnnotationCollator` is shared by span reward-model training and PPO. For every row it

1. encodes the prompt: a conversation (list of ``{"role", "content"}`` messages) goes through the tokenizer's chat
   template with ``add_generation_prompt=True``; a plain string is tokenized as plain text (no special tokens);
2. encodes the response **on its own** with character offsets and appends those tokens after the prompt. The
   response is not re-tokenized together with the prompt, so the token rewards are exactly
   :func:`~trl_text2grad.alignment.token_rewards_from_offsets` of the response text (the alignment rule of
   ``DESIGN.md``) and never depend on how a template or the prompt's last characters merge with the response;
3. appends ``eos`` after the response when ``append_eos`` is set (reward 0, label neutral);
4. truncates to ``max_length``: the prompt loses tokens from the left first, then the response from the right
   (and its ``eos`` is not appended, since the response no longer ends there). A span that loses any of its tokens
   this way is counted in ``num_spans_truncated`` and logged, never silently dropped;
5. pads to the longest row on ``tokenizer.padding_side``.

Spans come either directly (``"spans": [(start, end, score), ...]`` character offsets into the response) or from
the annotation schema (``"critique"``, ``"good_spans"``, ``"poor_spans"``), located with
:func:`~trl_text2grad.spans.locate_critique`; quotes that cannot be located are counted in
``num_quotes_unlocated``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from .alignment import _validate_spans, require_fast_tokenizer, token_rewards_from_offsets
from .spans import DEFAULT_FUZZY_THRESHOLD, Critique, locate_critique

logger = logging.getLogger(__name__)

__all__ = [
    "SpanAnnotationCollator",
    "encode_prompt_response",
    "pad_sequences",
    "SPAN_LABEL_IGNORE",
    "SPAN_LABEL_NEUTRAL",
    "SPAN_LABEL_GOOD",
    "SPAN_LABEL_POOR",
]

SPAN_LABEL_IGNORE = -100
"""``span_labels`` value outside the response (prompt and padding)."""
SPAN_LABEL_NEUTRAL = 0
"""``span_labels`` value of a response token outside every span (and of the appended ``eos``)."""
SPAN_LABEL_GOOD = 1
"""``span_labels`` value of a response token in a span with a positive score."""
SPAN_LABEL_POOR = 2
"""``span_labels`` value of a response token in a span with a negative score."""

_ANNOTATION_KEYS = ("critique", "good_spans", "poor_spans")


def pad_sequences(
    sequences: Sequence[Sequence[float] | np.ndarray | torch.Tensor],
    pad_value: float,
    *,
    side: Literal["left", "right"] = "right",
    dtype: torch.dtype = torch.long,
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """Stack ragged 1-D rows into one ``[batch, length]`` tensor, padded with ``pad_value`` on ``side``.

    The one padding rule of the package (the annotation collator, the generative reward collator, PPO prompts and
    the generative span scorer use it); a thin wrapper of :func:`torch.nn.utils.rnn.pad_sequence`.

    Args:
        sequences: The rows (lists, NumPy arrays or 1-D tensors); rows may be empty.
        pad_value: The value of the padding positions (a pad token id, ``-100``, ``0`` for masks, ...).
        side: ``"right"`` (rows start at column 0) or ``"left"`` (rows end at the last column, as generation needs).
        dtype: The dtype of the result; every row is converted to it.
        pad_to_multiple_of: Round ``length`` up to a multiple of this (``None``: the longest row).

    Returns:
        A ``[len(sequences), length]`` tensor on the CPU (``[0, 0]`` for no rows).

    Example:
        >>> pad_sequences([[1, 2], [3]], 0, side="left")
        tensor([[1, 2],
                [0, 3]])
    """
    if side not in ("left", "right"):
        raise ValueError(f"pad_sequences: side must be 'left' or 'right', got {side!r}.")
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(
            f"pad_sequences: pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of}."
        )
    rows = [torch.as_tensor(row, dtype=dtype).cpu() for row in sequences]
    for index, row in enumerate(rows):
        if row.dim() != 1:
            raise ValueError(f"pad_sequences: row {index} must be 1-D, got shape {tuple(row.shape)}.")
    if not rows:
        return torch.empty((0, 0), dtype=dtype)
    padded = pad_sequence(rows, batch_first=True, padding_value=pad_value, padding_side=side)
    if pad_to_multiple_of:
        extra = -padded.shape[1] % pad_to_multiple_of
        if extra:
            widths = (extra, 0) if side == "left" else (0, extra)
            padded = torch.nn.functional.pad(padded, widths, value=pad_value)
    return padded


def _is_conversation(prompt: Any) -> bool:
    return isinstance(prompt, Sequence) and not isinstance(prompt, str)


def _encode_prompt(tokenizer, prompt: str | Sequence[Mapping[str, Any]]) -> list[int]:
    if prompt is None:
        raise ValueError("the prompt is None; pass a string or a list of chat messages ('' for no prompt).")
    if _is_conversation(prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the prompt is a conversation (list of messages) but the tokenizer has no chat template; set "
                "tokenizer.chat_template or pass the prompt as a plain string."
            )
        prompt_text = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        return list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    if not isinstance(prompt, str):
        raise TypeError(f"the prompt must be a str or a list of chat messages, got {type(prompt).__name__}.")
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []


def _fit(num_prompt: int, num_response: int, eos: bool, max_length: int | None) -> tuple[int, int, bool]:
    """How many prompt tokens (kept from the right), response tokens (kept from the left) and whether eos fits."""
    if max_length is None:
        return num_prompt, num_response, eos
    if max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length}.")
    excess = num_prompt + num_response + int(eos) - max_length
    if excess <= 0:
        return num_prompt, num_response, eos
    cut_prompt = min(excess, num_prompt)
    num_prompt -= cut_prompt
    excess -= cut_prompt
    if excess > 0 and eos:  # eos goes first: a cut response no longer ends there
        eos = False
        excess -= 1
    return num_prompt, num_response - excess if excess > 0 else num_response, eos


def _encode(
    tokenizer,
    prompt_ids: list[int],
    response_ids: Sequence[int],
    response_offsets: Sequence[tuple[int, int]],
    response_length: int,
    max_length: int | None,
    append_eos: bool,
) -> dict[str, Any]:
    eos_id = tokenizer.eos_token_id if append_eos else None
    if append_eos and eos_id is None:
        raise ValueError(
            "append_eos=True but the tokenizer has no eos_token; set tokenizer.eos_token or pass append_eos=False."
        )
    num_prompt, num_response, eos = _fit(len(prompt_ids), len(response_ids), append_eos, max_length)
    kept_prompt = prompt_ids[len(prompt_ids) - num_prompt :]
    ids = list(kept_prompt) + list(response_ids[:num_response])
    offsets = [tuple(o) for o in response_offsets[:num_response]]
    if eos:
        ids.append(eos_id)
        offsets.append((response_length, response_length))
    return {
        "input_ids": ids,
        "response_start": len(kept_prompt),
        "response_offsets": offsets,
        "num_prompt_tokens_truncated": len(prompt_ids) - num_prompt,
        "num_response_tokens_truncated": len(response_ids) - num_response,
        "eos_appended": eos,
    }


def encode_prompt_response(
    tokenizer,
    prompt: str | Sequence[Mapping[str, Any]],
    response: str,
    max_length: int | None = None,
    *,
    append_eos: bool = False,
) -> dict[str, Any]:
    """Token ids of ``prompt`` followed by ``response``, with the response tokens' character offsets.

    The prompt goes through the chat template (``add_generation_prompt=True``) when it is a list of messages and is
    tokenized as plain text otherwise; the response is tokenized on its own (no special tokens) and appended, so
    ``response_offsets`` index the response string. Truncation to ``max_length`` removes prompt tokens from the
    left first, then response tokens from the right.

    Args:
        tokenizer: A fast tokenizer.
        prompt: A string or a list of chat messages.
        response: The response text.
        max_length: Maximum total number of tokens, or ``None`` for no truncation.
        append_eos: Append ``tokenizer.eos_token_id`` after the response (only if the whole response fits);
            its offset is the empty range ``(len(response), len(response))``. The collator sets it (default True
            there); this helper leaves it off by default.

    Returns:
        A dict with ``input_ids`` (list of ints), ``response_start`` (index of the first response token in
        ``input_ids``), ``response_offsets`` (one ``(start, end)`` per token from ``response_start`` on),
        ``num_prompt_tokens_truncated``, ``num_response_tokens_truncated`` and ``eos_appended``.
    """
    require_fast_tokenizer(tokenizer)
    if response is None:
        raise ValueError("encode_prompt_response: the response is None; pass the response string.")
    if not isinstance(response, str):
        raise TypeError(f"encode_prompt_response: the response must be a str, got {type(response).__name__}.")
    prompt_ids = _encode_prompt(tokenizer, prompt)
    encoding = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    return _encode(
        tokenizer,
        prompt_ids,
        encoding["input_ids"],
        encoding["offset_mapping"],
        len(response),
        max_length,
        append_eos,
    )


def _labels_from_rewards(rewards: np.ndarray) -> np.ndarray:
    labels = np.full(rewards.shape, SPAN_LABEL_NEUTRAL, dtype=np.int64)
    labels[rewards > 0] = SPAN_LABEL_GOOD
    labels[rewards < 0] = SPAN_LABEL_POOR
    return labels


@dataclass
class SpanAnnotationCollator:
    """Collate ``{prompt, response, spans | critique}`` rows into padded tensors with per-token span rewards.

    Args:
        tokenizer: A fast tokenizer (character offsets are required). Its ``padding_side`` decides where padding
            goes; ``pad_token_id`` (else ``eos_token_id``) fills it.
        max_length: Maximum sequence length (prompt + response + eos); ``None`` keeps everything. Longer rows lose
            prompt tokens from the left first, then response tokens from the right.
        good_score: Reward of tokens in a located good quote (annotation schema rows).
        poor_score: Reward of tokens in a located poor quote (annotation schema rows). Where a good and a poor
            span overlap, the poor one wins.
        fuzzy_threshold: rapidfuzz threshold (0–100) for the fuzzy quote-location stage.
        fuzzy: Allow fuzzy quote location at all.
        append_eos: Append the eos token after each response that fits (reward 0, label neutral, in the response
            mask).
        pad_to_multiple_of: Pad the sequence length up to a multiple of this (``None``: to the longest row).

    Rows (dicts): ``"prompt"`` (str or list of chat messages; ``"messages"`` is accepted as the same), ``"response"``
    (str), and either ``"spans"`` (``[(start, end, score), ...]`` character offsets into the response, applied in
    order, later wins) or the annotation schema ``"critique"`` / ``"good_spans"`` / ``"poor_spans"`` (quotes located
    in the response). A row with neither gets zero rewards.

    Returns (from ``__call__``), all ``torch`` tensors of shape ``(batch, seq)`` unless noted:
        ``input_ids``, ``attention_mask``, ``response_mask`` (1 on response tokens, including eos),
        ``token_rewards`` (float32, 0 outside spans and outside the response), ``span_labels`` (int64:
        ``SPAN_LABEL_IGNORE`` = -100 outside the response, 0 neutral, 1 good, 2 poor), and the per-batch 0-dim
        int64 counters ``num_quotes_located``, ``num_quotes_unlocated`` (including empty quotes),
        ``num_spans_truncated``. Pop the counters before passing the batch to a model's ``forward``.
    """

    tokenizer: Any
    max_length: int | None = None
    good_score: float = 1.0
    poor_score: float = -1.0
    fuzzy_threshold: float = DEFAULT_FUZZY_THRESHOLD
    fuzzy: bool = True
    append_eos: bool = True
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        require_fast_tokenizer(self.tokenizer)
        for name in ("good_score", "poor_score"):
            value = getattr(self, name)
            if isinstance(value, bool | str) or not isinstance(value, int | float) or not np.isfinite(value):
                raise ValueError(f"SpanAnnotationCollator: {name} must be a finite number, got {value!r}.")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be a positive number of tokens or None, got {self.max_length}.")
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError(
                "The tokenizer has neither a pad_token nor an eos_token to pad with; set tokenizer.pad_token."
            )
        self._pad_id = int(pad_id)

    @property
    def pad_token_id(self) -> int:
        """The id padding uses: ``tokenizer.pad_token_id``, else ``tokenizer.eos_token_id``."""
        return self._pad_id

    # -- per-row -----------------------------------------------------------------------------------------------
    def _row_spans(self, index: int, row: Mapping[str, Any], response: str) -> tuple[list, int, int]:
        """Spans for a row, plus (quotes located, quotes unlocated)."""
        spans = row.get("spans")
        if spans is not None:
            try:
                return _validate_spans(response, spans), 0, 0
            except (ValueError, TypeError, OverflowError) as error:
                raise ValueError(f"row {index}: {error}") from None
        if not any(row.get(key) is not None for key in _ANNOTATION_KEYS):
            return [], 0, 0
        try:
            critique = Critique.from_dict(row)
        except (TypeError, ValueError) as error:
            raise type(error)(f"row {index}: {error}") from None
        located = locate_critique(
            response,
            critique,
            good_score=self.good_score,
            poor_score=self.poor_score,
            fuzzy=self.fuzzy,
            fuzzy_threshold=self.fuzzy_threshold,
        )
        unlocated = located.num_unlocated + located.empty_quotes
        if unlocated:
            logger.info(
                "row %d: %d quote(s) not located in the response (%d empty): %s",
                index,
                unlocated,
                located.empty_quotes,
                [q[:60] for q in located.unlocated_good + located.unlocated_poor],
            )
        return located.span_tuples(), located.num_located, unlocated

    @staticmethod
    def _count_truncated_spans(
        index: int, response: str, offsets: Sequence[tuple[int, int]], kept: int, spans: list
    ) -> int:
        """Spans that lose at least one of their tokens when only the first ``kept`` response tokens remain."""
        if kept >= len(offsets) or not spans:
            return 0
        truncated = 0
        for span_index, span in enumerate(spans):
            hits = np.flatnonzero(token_rewards_from_offsets(response, offsets, [(span[0], span[1], 1.0)]))
            if len(hits) and hits[-1] >= kept:
                truncated += 1
                logger.warning(
                    "row %d: span #%d (characters %d-%d) is cut by max_length truncation (%d of its %d tokens kept).",
                    index,
                    span_index,
                    span[0],
                    span[1],
                    int((hits < kept).sum()),
                    len(hits),
                )
        return truncated

    # -- batch -------------------------------------------------------------------------------------------------
    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise ValueError("SpanAnnotationCollator got an empty batch.")
        responses: list[str] = []
        prompts: list[Any] = []
        for index, row in enumerate(examples):
            if not isinstance(row, Mapping):
                raise TypeError(f"row {index} must be a dict, got {type(row).__name__}.")
            response = row.get("response")
            if response is None:
                raise ValueError(
                    f"row {index} has no 'response' (missing or None); every row needs the response text "
                    "('' for an empty response)."
                )
            if not isinstance(response, str):
                raise TypeError(f"row {index}: 'response' must be a str, got {type(response).__name__}.")
            prompt = row["prompt"] if "prompt" in row else row.get("messages")
            if prompt is None:
                raise ValueError(
                    f"row {index} has no 'prompt' (or 'messages'); pass a string, a list of chat messages, or ''."
                )
            responses.append(response)
            prompts.append(prompt)

        response_encoding = self.tokenizer(responses, add_special_tokens=False, return_offsets_mapping=True)
        sequences, rewards_list, labels_list, starts = [], [], [], []
        located_total = unlocated_total = truncated_total = 0
        for index, (row, prompt, response) in enumerate(zip(examples, prompts, responses)):
            try:
                prompt_ids = _encode_prompt(self.tokenizer, prompt)
            except (TypeError, ValueError) as error:
                raise type(error)(f"row {index}: {error}") from None
            spans, located, unlocated = self._row_spans(index, row, response)
            located_total += located
            unlocated_total += unlocated
            response_ids = response_encoding["input_ids"][index]
            offsets = response_encoding["offset_mapping"][index]
            encoded = _encode(
                self.tokenizer, prompt_ids, response_ids, offsets, len(response), self.max_length, self.append_eos
            )
            kept = len(response_ids) - encoded["num_response_tokens_truncated"]
            truncated_total += self._count_truncated_spans(index, response, offsets, kept, spans)
            rewards = token_rewards_from_offsets(response, encoded["response_offsets"], spans)
            sequences.append(encoded["input_ids"])
            starts.append(encoded["response_start"])
            rewards_list.append(rewards)
            labels_list.append(_labels_from_rewards(rewards))

        side = "left" if self.tokenizer.padding_side == "left" else "right"

        def pad(rows: list, value: float, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return pad_sequences(rows, value, side=side, dtype=dtype, pad_to_multiple_of=self.pad_to_multiple_of)

        input_ids = pad(sequences, self._pad_id)
        attention_mask = pad([[1] * len(ids) for ids in sequences], 0)
        response_mask = pad([[0] * start + [1] * (len(ids) - start) for ids, start in zip(sequences, starts)], 0)
        token_rewards = pad(
            [np.concatenate([np.zeros(start), r]) for start, r in zip(starts, rewards_list)], 0.0, torch.float32
        )
        span_labels = pad(
            [
                np.concatenate([np.full(start, SPAN_LABEL_IGNORE), labels])
                for start, labels in zip(starts, labels_list)
            ],
            SPAN_LABEL_IGNORE,
        )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "token_rewards": token_rewards,
            "span_labels": span_labels,
            "num_quotes_located": torch.tensor(located_total, dtype=torch.long),
            "num_quotes_unlocated": torch.tensor(unlocated_total, dtype=torch.long),
            "num_spans_truncated": torch.tensor(truncated_total, dtype=torch.long),
        }
