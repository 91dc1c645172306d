"""Preference pairs for the span reward model: reading a pair row, and the Bradley–Terry objective on token rewards.

A pair row is what ``trl.RewardTrainer`` trains on: ``chosen`` and ``rejected``, with an explicit ``prompt`` or an
implicit one (the shared prefix, found by TRL's :func:`trl.data_utils.maybe_extract_prompt`), as plain text or as
conversational messages, optionally with a ``margin``.

The token head gives every response token a reward; the *sequence* reward of a response is their mean,

    r_t = p_good(t) · good_score + p_poor(t) · poor_score          (a neutral token is worth 0)
    R   = (1 / |response|) · Σ_t r_t                              (over the response tokens the head reads)

which is the soft version of what ``SpanPPOTrainer`` does with a span reward model: it turns the predicted spans into
per-token rewards (``good_span_reward`` / ``poor_span_reward``, 0 elsewhere) and, where it needs one number per
sample (``reward_mode`` ``scalar`` / ``hybrid``), takes their mean over the response. Pairs are then trained with the
Bradley–Terry loss of ``RewardTrainer.compute_loss`` (see :func:`bradley_terry_loss`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from trl.data_utils import maybe_extract_prompt

from ..collator import SPAN_LABEL_GOOD, SPAN_LABEL_POOR

__all__ = [
    "PreferencePair",
    "split_preference_row",
    "expected_token_rewards",
    "sequence_rewards",
    "bradley_terry_loss",
]

PreferencePair = tuple[Any, str, str]
"""``(prompt, chosen response text, rejected response text)``; the prompt is a string or a list of messages."""


PAIR = ("chosen", "rejected")


def _is_messages(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(m, Mapping) for m in value)


def _completion_text(completion: Any, side: str) -> str:
    """A completion as response text: a string as is; conversational messages -> their contents, one per line."""
    if isinstance(completion, str):
        return completion
    if _is_messages(completion):
        contents = [m.get("content") for m in completion]
        if all(isinstance(c, str) for c in contents):
            return "\n".join(contents)
    raise TypeError(
        f"'{side}' must be a string or a list of {{'role', 'content'}} messages with string contents, got "
        f"{type(completion).__name__}: {str(completion)[:80]!r}"
    )


def split_preference_row(row: Mapping[str, Any]) -> PreferencePair:
    """``(prompt, chosen text, rejected text)`` of a preference row (explicit or implicit prompt, text or messages).

    An implicit prompt is the shared prefix of ``chosen`` and ``rejected`` (:func:`trl.data_utils.extract_prompt`:
    common leading messages, or common leading characters of plain text). Conversational completions become the text
    of their messages (contents joined by newlines), the response the reward model scores.

    Raises:
        TypeError: ``chosen`` / ``rejected`` / ``prompt`` have an unusable type.
    """
    example = {"chosen": row["chosen"], "rejected": row["rejected"]}
    if row.get("prompt") is not None:
        example["prompt"] = row["prompt"]
    if not all(isinstance(example[k], str) for k in PAIR) and not all(_is_messages(example[k]) for k in PAIR):
        raise TypeError(
            "'chosen' and 'rejected' must both be strings or both lists of {'role', 'content'} messages, got "
            f"{type(row['chosen']).__name__} and {type(row['rejected']).__name__}."
        )
    example = maybe_extract_prompt(example)
    prompt = example["prompt"]
    if not isinstance(prompt, str) and not _is_messages(prompt):
        raise TypeError(f"'prompt' must be a string or a list of messages, got {type(prompt).__name__}.")
    return prompt, _completion_text(example["chosen"], "chosen"), _completion_text(example["rejected"], "rejected")


def expected_token_rewards(span_logits: torch.Tensor, good_score: float, poor_score: float) -> torch.Tensor:
    """``r_t = p_good(t) · good_score + p_poor(t) · poor_score`` from ``[..., 3]`` span logits (neutral = 0)."""
    probs = span_logits.float().softmax(-1)
    return probs[..., SPAN_LABEL_GOOD] * good_score + probs[..., SPAN_LABEL_POOR] * poor_score


def sequence_rewards(token_rewards: torch.Tensor, head_mask: torch.Tensor) -> torch.Tensor:
    """``R_i = Σ_t m_it r_it / max(1, Σ_t m_it)``: the mean token reward over each row's response tokens.

    Args:
        token_rewards: ``[batch, seq]`` per-token rewards.
        head_mask: ``[batch, seq]``, 1 where the head reads a response token.

    Returns:
        ``[batch]`` sequence rewards (0 for a row without response tokens).
    """
    mask = head_mask.to(token_rewards.dtype)
    return (token_rewards * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """The pairwise loss of ``trl.RewardTrainer``:

        L = -mean_i log σ(R_chosen,i - R_rejected,i - m_i)  +  c · mean_i (R_chosen,i + R_rejected,i)²

    with ``m_i`` the pair's margin (0 when ``margin`` is ``None``) and ``c`` = ``center_rewards_coefficient`` (the
    second term only when it is not ``None``).

    Args:
        chosen: ``[pairs]`` rewards of the chosen responses.
        rejected: ``[pairs]`` rewards of the rejected responses.
        margin: ``[pairs]`` margins, or ``None``.
        center_rewards_coefficient: ``c``, or ``None``.
    """
    difference = chosen - rejected
    if margin is not None:
        difference = difference - margin.to(difference.dtype)
    loss = -F.logsigmoid(difference).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
    return loss
