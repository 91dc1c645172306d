"""Model pieces of the span reward model: the token head, input layouts, the generative prompt/target format.

Two forms (``SpanRewardConfig.model_form``):

* ``token_head``: :class:`SpanTokenHeadModel` puts a linear classifier (neutral / good / poor) on the last hidden
  state of a causal-LM backbone. :func:`build_token_head_batch` lays out its inputs, either ``plain`` (the head reads
  the response tokens) or ``repeat`` (prompt + response, a separator, the response again; the head reads the second
  copy, so every labelled token has already seen the whole response). An optional critique is appended after the
  laid-out sequence for the joint language-modelling loss.
* ``generative``: the causal LM itself; :func:`build_generative_prompt_ids` renders the instruction through the
  model's chat template and :func:`format_generative_target` is the JSON it learns to write.

Everything here is shared by training (``span_reward_trainer.py``) and inference (``scoring.py``), so both see
exactly the same token sequences.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..rewards import prompt_to_text

logger = logging.getLogger(__name__)

__all__ = [
    "SPAN_LABEL_NAMES",
    "NUM_SPAN_LABELS",
    "DEFAULT_CRITIQUE_PROMPT",
    "CRITIQUE_MARKER",
    "SPAN_REWARD_CONFIG_NAME",
    "SPAN_HEAD_WEIGHTS_NAME",
    "SpanTokenHeadModel",
    "SpanTokenHeadOutput",
    "build_token_head_batch",
    "prompt_to_text",
    "build_generative_prompt_ids",
    "fit_generative_prompt",
    "format_generative_target",
    "write_model_card",
]

SPAN_LABEL_NAMES = ("neutral", "good", "poor")  # indices = collator's SPAN_LABEL_NEUTRAL / GOOD / POOR
NUM_SPAN_LABELS = len(SPAN_LABEL_NAMES)
IGNORE_INDEX = -100
SPAN_REWARD_CONFIG_NAME = "span_reward_config.json"
SPAN_HEAD_WEIGHTS_NAME = "span_head.safetensors"
CRITIQUE_MARKER = "\n\n[Critique]\n"

DEFAULT_CRITIQUE_PROMPT = (
    "You review a response to a task. Write a short critique, then quote the exact phrases of the response that "
    "are good and those that are poor (wrong, buggy or unhelpful). Answer with JSON only: "
    '{"critique": "...", "good_spans": ["..."], "poor_spans": ["..."]}\n\n'
    "### Task\n{prompt}\n\n### Response\n{response}"
)


# ---------------------------------------------------------------------------------------------------------------
# Token head
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SpanTokenHeadOutput:
    """Output of :class:`SpanTokenHeadModel`. ``span_logits`` has shape ``(batch, seq, 3)``."""

    loss: torch.Tensor | None = None
    span_logits: torch.Tensor | None = None
    span_loss: torch.Tensor | None = None
    critique_loss: torch.Tensor | None = None

    def __getitem__(self, key):  # Trainer.prediction_step reads outputs like a dict/tuple
        return (self.loss, self.span_logits)[key] if isinstance(key, int) else getattr(self, key)


def _unwrap_causal_lm(backbone: nn.Module) -> nn.Module:
    """The causal LM inside a PEFT wrapper (LoRA layers stay injected in its modules)."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) else backbone


class SpanTokenHeadModel(nn.Module):
    """A causal-LM backbone with a per-token span classifier (neutral / good / poor).

    Args:
        backbone: An ``AutoModelForCausalLM`` model, optionally wrapped by PEFT (LoRA).
        num_labels: Number of span classes (3).
        head_dropout: Dropout on the hidden states before the head.
        class_weights: Optional cross-entropy weights of the classes.
        critique_loss_weight: Weight of the language-modelling loss on ``lm_labels`` (the appended critique).

    The head is a plain ``nn.Linear`` outside the PEFT wrapper, so it is always trainable and saved next to the
    adapter as ``span_head.safetensors``. The backbone's decoder is called directly: no vocabulary-sized logits are
    computed except at the critique positions when the joint loss is on.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int = NUM_SPAN_LABELS,
        head_dropout: float = 0.0,
        class_weights: Sequence[float] | None = None,
        critique_loss_weight: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        hidden_size = backbone.config.get_text_config().hidden_size
        self.span_head = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.span_head.weight, std=0.02)
        nn.init.zeros_(self.span_head.bias)
        self.dropout = nn.Dropout(head_dropout)
        self.num_labels = num_labels
        self.critique_loss_weight = float(critique_loss_weight)
        if class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(list(class_weights), dtype=torch.float32))
        else:
            self.class_weights = None

    # -- attributes the Trainer and PEFT helpers look for ---------------------------------------------------------
    @property
    def config(self):
        return self.backbone.config

    @property
    def causal_lm(self) -> nn.Module:
        return _unwrap_causal_lm(self.backbone)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
        if hasattr(self.backbone, "enable_input_require_grads"):
            self.backbone.enable_input_require_grads()

    def gradient_checkpointing_disable(self) -> None:
        self.causal_lm.gradient_checkpointing_disable()

    def add_model_tags(self, tags) -> None:
        if hasattr(self.causal_lm, "add_model_tags"):
            self.causal_lm.add_model_tags(tags)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        span_labels: torch.Tensor | None = None,
        lm_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SpanTokenHeadOutput:
        causal_lm = self.causal_lm
        decoder = causal_lm.base_model if causal_lm.base_model is not causal_lm else causal_lm.get_decoder()
        kwargs.pop("use_cache", None)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        head_in = self.dropout(hidden).to(self.span_head.weight.dtype)
        span_logits = self.span_head(head_in)

        loss = span_loss = critique_loss = None
        if span_labels is not None:
            weight = self.class_weights.to(span_logits.dtype) if self.class_weights is not None else None
            if (span_labels != IGNORE_INDEX).any():
                span_loss = F.cross_entropy(
                    span_logits.reshape(-1, self.num_labels).float(),
                    span_labels.reshape(-1),
                    weight=weight.float() if weight is not None else None,
                    ignore_index=IGNORE_INDEX,
                )
            else:  # keep the graph connected (e.g. a batch whose responses were truncated away)
                span_loss = span_logits.sum() * 0.0
            loss = span_loss
        if lm_labels is not None and self.critique_loss_weight > 0:
            # Predict token t+1 from position t, only where the next token is a critique token.
            targets = lm_labels[:, 1:]
            positions = targets != IGNORE_INDEX
            if positions.any():
                lm_head = causal_lm.get_output_embeddings()
                logits = lm_head(hidden[:, :-1][positions])
                critique_loss = F.cross_entropy(logits.float(), targets[positions])
            else:
                critique_loss = hidden.sum() * 0.0
            loss = (
                critique_loss * self.critique_loss_weight
                if loss is None
                else loss + (self.critique_loss_weight * critique_loss)
            )
        return SpanTokenHeadOutput(
            loss=loss, span_logits=span_logits, span_loss=span_loss, critique_loss=critique_loss
        )

    # -- persistence ------------------------------------------------------------------------------------------------
    def save_pretrained(self, output_dir: str | os.PathLike, **kwargs: Any) -> None:
        """Backbone through its own ``save_pretrained`` (LoRA adapter or full model) + ``span_head.safetensors``."""
        from safetensors.torch import save_file

        os.makedirs(output_dir, exist_ok=True)
        kwargs.pop("state_dict", None)  # the Trainer's flat state dict does not fit the PEFT layout
        self.backbone.save_pretrained(output_dir, **kwargs)
        head_state = {k: v.detach().to("cpu").contiguous() for k, v in self.span_head.state_dict().items()}
        save_file(head_state, os.path.join(output_dir, SPAN_HEAD_WEIGHTS_NAME), metadata={"format": "pt"})

    def load_head(self, path: str | os.PathLike) -> None:
        from safetensors.torch import load_file

        file = Path(path) / SPAN_HEAD_WEIGHTS_NAME
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: '{path}' is not a token_head span reward checkpoint.")
        state = load_file(str(file))
        self.span_head.load_state_dict({k: v.to(self.span_head.weight.dtype) for k, v in state.items()})


def build_token_head_batch(
    sequences: Sequence[Sequence[int]],
    response_ranges: Sequence[tuple[int, int]],
    pad_token_id: int,
    layout: str = "repeat",
    separator_ids: Sequence[int] = (),
    labels: Sequence[Sequence[int]] | None = None,
    critique_ids: Sequence[Sequence[int] | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Lay out token-head inputs and right-pad them.

    Args:
        sequences: Unpadded prompt + response token ids per row.
        response_ranges: ``(start, end)`` of the response tokens in each sequence.
        pad_token_id: Padding id.
        layout: ``"plain"`` (head on the response tokens) or ``"repeat"`` (``sequence + separator + response``; head
            on the second copy of the response).
        separator_ids: Token ids of the separator (``repeat`` only).
        labels: Optional span labels per response token (same length as the response range).
        critique_ids: Optional critique token ids per row, appended after the laid-out sequence (joint LM loss).

    Returns:
        ``input_ids``, ``attention_mask``, ``head_mask`` (1 where the head reads a response token; ``head_mask``
        positions enumerate the response tokens in order), and, when given, ``span_labels`` (-100 elsewhere) and
        ``lm_labels`` (critique token ids, -100 elsewhere).
    """
    if layout not in ("plain", "repeat"):
        raise ValueError(f"layout must be 'plain' or 'repeat', got {layout!r}.")
    rows, heads, row_labels, row_lm = [], [], [], []
    for index, (ids, (start, end)) in enumerate(zip(sequences, response_ranges)):
        ids = list(ids)
        if not (0 <= start <= end <= len(ids)):
            raise ValueError(f"row {index}: response range ({start}, {end}) is outside a {len(ids)}-token sequence.")
        if layout == "repeat":
            head_start = len(ids) + len(separator_ids)
            ids = ids + list(separator_ids) + ids[start:end]
            head = (head_start, head_start + end - start)
        else:
            head = (start, end)
        lm = [IGNORE_INDEX] * len(ids)
        crit = critique_ids[index] if critique_ids is not None else None
        if crit:
            ids = ids + list(crit)
            lm = lm + list(crit)
        rows.append(ids)
        heads.append(head)
        row_lm.append(lm)
        if labels is not None:
            lab = list(labels[index])
            if len(lab) != end - start:
                raise ValueError(f"row {index}: {len(lab)} labels for {end - start} response tokens.")
            row_labels.append(lab)
    length = max((len(r) for r in rows), default=0)
    batch = len(rows)
    input_ids = torch.full((batch, length), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    head_mask = torch.zeros((batch, length), dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "head_mask": head_mask}
    if labels is not None:
        out["span_labels"] = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    if critique_ids is not None:
        out["lm_labels"] = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, (h0, h1)) in enumerate(zip(rows, heads)):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
        head_mask[i, h0:h1] = 1
        if labels is not None and h1 > h0:
            out["span_labels"][i, h0:h1] = torch.tensor(row_labels[i], dtype=torch.long)
        if critique_ids is not None:
            out["lm_labels"][i, : len(ids)] = torch.tensor(row_lm[i], dtype=torch.long)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Generative form
# ---------------------------------------------------------------------------------------------------------------
def build_generative_prompt_ids(tokenizer, prompt: Any, response: str, template: str | None = None) -> list[int]:
    """Token ids of the critique instruction for (prompt, response), through the chat template when there is one."""
    template = template or DEFAULT_CRITIQUE_PROMPT
    content = template.replace("{prompt}", prompt_to_text(prompt)).replace("{response}", response)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    else:
        text = content + "\n\n### Review\n"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_generative_prompt(
    tokenizer, prompt: Any, response: str, template: str | None, budget: int | None
) -> tuple[list[int], str, bool]:
    """:func:`build_generative_prompt_ids` within ``budget`` tokens: the response is cut from the right first.

    Returns ``(ids, response_used, truncated)``. If the task prompt alone is too long, the ids keep their last
    ``budget`` tokens.
    """
    ids = build_generative_prompt_ids(tokenizer, prompt, response, template)
    if budget is None or len(ids) <= budget:
        return ids, response, False
    encoding = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    keep = max(0, len(encoding["input_ids"]) - (len(ids) - budget) - 4)
    cut = response[: encoding["offset_mapping"][keep - 1][1]] if keep > 0 else ""
    ids = build_generative_prompt_ids(tokenizer, prompt, cut, template)
    if len(ids) > budget:
        ids = ids[len(ids) - budget :]
    return ids, cut, True


def format_generative_target(critique: str, good: Sequence[str], poor: Sequence[str]) -> str:
    """The JSON the generative reward model writes: the critique first, then the quoted spans."""
    return json.dumps(
        {"critique": critique or "", "good_spans": list(good), "poor_spans": list(poor)}, ensure_ascii=False
    )


# ---------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------
def write_model_card(output_dir: str | os.PathLike, span_config: Mapping[str, Any], metrics: Mapping | None = None):
    """Write ``README.md``: what the checkpoint is, which form, and how to load it."""
    base = span_config.get("base_model_name_or_path") or "unknown"
    form = span_config.get("model_form")
    lines = [
        "---",
        "library_name: trl-text2grad",
        "tags: [trl, text2grad, span-reward-model, reward-model]",
    ]
    if base and not os.path.isdir(str(base)):
        lines.append(f"base_model: {base}")
    lines += [
        "---",
        "",
        f"# Span reward model ({form})",
        "",
        "A Text2Grad span-level reward model trained with `trl_text2grad.SpanRewardTrainer` "
        "(arXiv 2505.22338). Given a prompt and a response it returns a critique and the quoted good / poor "
        "spans of the response.",
        "",
        f"- form: `{form}`" + (f", layout `{span_config.get('head_layout')}`" if form == "token_head" else ""),
        f"- base model: `{base}`",
        f"- adapter (LoRA): {bool(span_config.get('adapter'))}",
        "",
        "```python",
        "from trl_text2grad.reward import SpanRewardModel",
        "",
        'rm = SpanRewardModel.from_pretrained("path/to/this/folder")',
        'critiques = rm.score(["Write add(a, b)."], ["def add(a, b):\\n    return a - b"])',
        "```",
    ]
    if metrics:
        lines += ["", "## Evaluation", ""] + [f"- {k}: {v}" for k, v in metrics.items()]
    Path(output_dir, "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
