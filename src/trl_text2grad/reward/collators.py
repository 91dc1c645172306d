"""Batch collators of :class:`~trl_text2grad.reward.span_reward_trainer.SpanRewardTrainer` (its two causal-LM forms).

A sequence-classification model uses ``trl.RewardTrainer``'s own ``DataCollatorForPreference``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.utils import pad

from ..collator import SpanAnnotationCollator
from .data import row_critique, row_kind
from .modeling import CRITIQUE_MARKER, IGNORE_INDEX, build_token_head_batch
from .preference import split_preference_row

__all__ = ["TokenHeadCollator", "GenerativeCollator", "COUNTER_KEYS"]

COUNTER_KEYS = ("num_quotes_located", "num_quotes_unlocated", "num_spans_truncated")
"""Per-batch annotation counters the token-head collator passes on (``compute_loss`` pops and logs them)."""


def _span_input(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``SpanAnnotationCollator`` row of a span row: prompt, response and its quotes or character spans."""
    prompt = row["prompt"] if row.get("prompt") is not None else row.get("messages")
    span_input = {"prompt": prompt, "response": row["response"]}
    critique, spans = row_critique(row)
    if critique is not None and spans is None:
        span_input.update(critique.to_dict())
    elif spans is not None:
        span_input["spans"] = [tuple(s) for s in spans]
    return span_input


@dataclass
class TokenHeadCollator:
    """``SpanAnnotationCollator`` followed by the token-head layout, for span rows and preference pairs alike.

    A pair row becomes two sequences, prompt + chosen and prompt + rejected, without span labels (-100): they train
    the head only through the Bradley–Terry loss on their sequence rewards.

    Returns ``input_ids``, ``attention_mask``, ``head_mask`` (1 where the head reads a response token),
    ``span_labels``, ``lm_labels`` (the appended critique, when ``with_critique``), ``chosen_index`` /
    ``rejected_index`` (``[pairs]`` rows of the batch), ``margin`` (``[pairs]``, 0 where a row has none) and the
    :data:`COUNTER_KEYS` counters.
    """

    span_collator: SpanAnnotationCollator
    tokenizer: Any
    layout: str
    separator_ids: list[int]
    with_critique: bool
    max_critique_tokens: int
    pad_to_multiple_of: int | None = None

    def _critique_ids(self, row: Mapping[str, Any]) -> list[int] | None:
        text = row.get("critique")
        if not self.with_critique or not isinstance(text, str) or not text.strip():
            return None
        ids = self.tokenizer(CRITIQUE_MARKER + text, add_special_tokens=False)["input_ids"]
        return list(ids[: self.max_critique_tokens]) + [self.tokenizer.eos_token_id]

    def _expand(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list, list, list, list, list, list]:
        """Span-collator rows (two per pair), which are pair sequences, critiques, and the pair indices/margins."""
        inputs, from_pair, critiques, chosen, rejected, margins = [], [], [], [], [], []
        for row in rows:
            if row_kind(row) == "pair":
                prompt, chosen_text, rejected_text = split_preference_row(row)
                chosen.append(len(inputs))
                rejected.append(len(inputs) + 1)
                inputs += [{"prompt": prompt, "response": chosen_text}, {"prompt": prompt, "response": rejected_text}]
                from_pair += [True, True]
                critiques += [None, None]
                margins.append(0.0 if row.get("margin") is None else float(row["margin"]))
            else:
                inputs.append(_span_input(row))
                from_pair.append(False)
                critiques.append(self._critique_ids(row))
        return inputs, from_pair, critiques, chosen, rejected, margins

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        inputs, from_pair, critiques, chosen, rejected, margins = self._expand(rows)
        batch = self.span_collator(inputs)
        sequences, ranges, labels = [], [], []
        for i in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][i].bool()
            ids = batch["input_ids"][i][keep]
            positions = torch.nonzero(batch["response_mask"][i][keep]).flatten()
            start, end = (int(positions[0]), int(positions[-1]) + 1) if len(positions) else (len(ids), len(ids))
            sequences.append(ids.tolist())
            ranges.append((start, end))
            row_labels = batch["span_labels"][i][keep][start:end].tolist()
            labels.append([IGNORE_INDEX] * len(row_labels) if from_pair[i] else row_labels)
        out = build_token_head_batch(
            sequences,
            ranges,
            pad_token_id=self.span_collator.pad_token_id,
            layout=self.layout,
            separator_ids=self.separator_ids,
            labels=labels,
            critique_ids=critiques if self.with_critique else None,
        )
        if self.pad_to_multiple_of:
            out = self._pad_to_multiple(out)
        out["chosen_index"] = torch.tensor(chosen, dtype=torch.long)
        out["rejected_index"] = torch.tensor(rejected, dtype=torch.long)
        out["margin"] = torch.tensor(margins, dtype=torch.float32)
        for key in COUNTER_KEYS:
            out[key] = batch[key]
        return out

    def _pad_to_multiple(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Right-pad every ``[batch, seq]`` tensor to a multiple of ``pad_to_multiple_of`` positions."""
        values = {"input_ids": self.span_collator.pad_token_id, "span_labels": IGNORE_INDEX, "lm_labels": IGNORE_INDEX}
        length = out["input_ids"].shape[1]
        extra = -length % self.pad_to_multiple_of
        return {key: torch.nn.functional.pad(t, (0, extra), value=values.get(key, 0)) for key, t in out.items()}


@dataclass
class GenerativeCollator:
    """Right-pads tokenized prompt + target rows (``trl.trainer.utils.pad``); ``labels`` is -100 on the prompt and
    the padding."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        def padded(key: str, value: int) -> torch.Tensor:
            tensors = [torch.tensor(r[key], dtype=torch.long) for r in rows]
            return pad(tensors, padding_value=value, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of)

        masks = [torch.ones(len(r["input_ids"]), dtype=torch.long) for r in rows]
        return {
            "input_ids": padded("input_ids", self.pad_token_id),
            "attention_mask": pad(masks, 0, "right", self.pad_to_multiple_of),
            "labels": padded("labels", IGNORE_INDEX),
        }
