"""Inference with a trained span reward model: ``SpanRewardModel.from_pretrained(path).score(prompts, responses)``.

The result is one :class:`~trl_text2grad.spans.Critique` per sample whose quotes are exact substrings of the
response, so spans travel as *characters* and the policy may use a different tokenizer than the reward model.
``SpanRewardModel`` is callable with the span reward function signature ``(prompts, responses, **context)``, so it can
be passed directly as ``reward_model`` of ``SpanPPOTrainer``.

* ``token_head``: one forward pass per batch; consecutive response tokens with the same non-neutral label form one
  span, cut from the response by the tokens' character offsets (outer whitespace trimmed).
* ``generative``: greedy generation of the JSON critique, parsed with ``trl_text2grad.critics.parsing.parse_critique``
  when available, else ``json`` / ``json_repair``. Outputs that do not parse are counted in ``stats["num_unparseable"]`` and give a
  neutral (empty) Critique, never an exception.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl.trainer.utils import pad

from ..collator import encode_prompt_response
from ..critics.parsing import parse_critique
from ..spans import Critique, ScoredSpan, locate_critique
from .modeling import (
    SPAN_REWARD_CONFIG_NAME,
    SpanTokenHeadModel,
    build_token_head_batch,
    fit_generative_prompt,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SpanRewardModel",
    "SpanPrediction",
    "parse_generated_critique",
    "labels_to_spans",
    "length_grouped_batches",
]


@dataclass
class SpanPrediction:
    """One scored sample: the critique (quotes), its character spans, and whether the model output parsed."""

    critique: Critique
    spans: list[ScoredSpan] = field(default_factory=list)
    parsed: bool = True
    raw_output: str | None = None


def labels_to_spans(
    response: str,
    offsets: Sequence[tuple[int, int]],
    labels: Sequence[int],
    good_score: float = 1.0,
    poor_score: float = -1.0,
) -> list[ScoredSpan]:
    """Group consecutive tokens with the same non-neutral label (1 good, 2 poor) into character spans.

    Each span runs from its first token's start offset to its last token's end offset, with outer whitespace
    trimmed; spans that are only whitespace are dropped. ``quote`` is the exact substring of ``response``.
    """
    spans: list[ScoredSpan] = []
    run_label, run_start, run_end = 0, 0, 0

    def close():
        start, end = run_start, run_end
        while start < end and response[start].isspace():
            start += 1
        while end > start and response[end - 1].isspace():
            end -= 1
        if end > start:
            score = good_score if run_label == 1 else poor_score
            spans.append(ScoredSpan(start, end, score, response[start:end]))

    for (start, end), label in zip(offsets, labels):
        label = int(label)
        start, end = min(int(start), len(response)), min(int(end), len(response))
        if end <= start:  # eos / special tokens end a run
            if run_label:
                close()
            run_label = 0
            continue
        if label == run_label and run_label:
            run_end = max(run_end, end)
            continue
        if run_label:
            close()
        run_label, run_start, run_end = (label, start, end) if label in (1, 2) else (0, 0, 0)
    if run_label:
        close()
    return spans


def _parse_with_project_parser(text: str) -> dict | None:
    """The critique dict :func:`~trl_text2grad.critics.parsing.parse_critique` finds in ``text``, else ``None``."""
    try:
        parsed = parse_critique(text)
    except Exception:  # noqa: BLE001 - a parser failure is an unparseable output, counted by the caller
        return None
    if not getattr(parsed, "ok", False):
        return None
    return parsed.critique.to_dict()


def parse_generated_critique(text: str) -> Critique | None:
    """Parse ``{"critique", "good_spans", "poor_spans"}`` from generated text; ``None`` when it does not parse."""
    if not text or not text.strip():
        return None
    data = _parse_with_project_parser(text)
    if data is None:
        start = text.find("{")
        candidate = text[start:] if start >= 0 else text
        try:
            data = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            try:
                import json_repair

                data = json_repair.loads(candidate)
            except Exception:  # noqa: BLE001
                return None
    if not isinstance(data, dict):
        return None
    if not any(key in data for key in ("critique", "good_spans", "poor_spans")):
        return None
    good, poor = data.get("good_spans") or [], data.get("poor_spans") or []
    if not isinstance(good, list) or not isinstance(poor, list):
        return None
    critique = data.get("critique")
    return Critique(
        text=critique if isinstance(critique, str) else "",
        good=[q for q in good if isinstance(q, str) and q.strip()],
        poor=[q for q in poor if isinstance(q, str) and q.strip()],
    )


def length_grouped_batches(lengths: Sequence[int], batch_size: int, max_padding_fraction: float) -> list[list[int]]:
    """Group rows into forward batches by length: at most ``batch_size`` rows each, padding bounded.

    Rows are taken longest first; a row joins the current batch unless that would make more than
    ``max_padding_fraction`` of the batch's tokens (rows x its longest row) padding, or exceed ``batch_size`` rows.
    ``1.0`` gives plain chunks of ``batch_size`` rows in length order; ``0.0`` batches only rows of equal length.

    Returns:
        Lists of row indices (every index exactly once).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not 0.0 <= max_padding_fraction <= 1.0:
        raise ValueError(f"max_padding_fraction must be in [0, 1], got {max_padding_fraction}.")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    groups: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for index in order:
        if current:
            rows = len(current) + 1
            padded = int(lengths[current[0]]) * rows
            padding = padded - (tokens + int(lengths[index]))
            if rows > batch_size or padding > max_padding_fraction * padded:
                groups.append(current)
                current, tokens = [], 0
        current.append(index)
        tokens += int(lengths[index])
    if current:
        groups.append(current)
    return groups


class SpanRewardModel:
    """A trained span reward model ready to score (prompt, response) pairs.

    Build it with :meth:`from_pretrained` (a folder written by ``SpanRewardTrainer.save_model``) or directly from an
    in-memory model (the trainer does so for evaluation).

    Args:
        model: ``SpanTokenHeadModel`` (token_head) or a causal LM (generative).
        tokenizer: The reward model's fast tokenizer.
        span_config: The saved ``span_reward_config.json`` content (form, layout, separator, scores, ...).
        batch_size: Samples per forward pass / generation batch (at most).
        max_padding_fraction: token_head only: samples are grouped by length into forward passes of at most
            ``batch_size`` rows in which at most this fraction of the tokens is padding (a forward costs about its
            padded size, so on a CPU, where a longer batch does not run faster per token, padding is pure waste).
            ``1.0``: fixed chunks of ``batch_size`` samples (sorted by length).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        span_config: dict[str, Any],
        batch_size: int = 8,
        max_padding_fraction: float = 0.1,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.config = dict(span_config)
        self.form = self.config.get("model_form", "token_head")
        if self.form not in ("token_head", "generative"):
            raise ValueError(f"unknown model_form {self.form!r} in the span reward config.")
        if self.form == "token_head" and not isinstance(model, SpanTokenHeadModel):
            raise TypeError("a token_head SpanRewardModel needs a SpanTokenHeadModel.")
        self.batch_size = int(batch_size)
        if not 0.0 <= float(max_padding_fraction) <= 1.0:
            raise ValueError(f"max_padding_fraction must be in [0, 1], got {max_padding_fraction}.")
        self.max_padding_fraction = float(max_padding_fraction)
        self.stats = {"num_scored": 0, "num_unparseable": 0, "num_truncated": 0}
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # -- loading ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        merge_adapter: bool = True,
        base_model_path: str | None = None,
        max_padding_fraction: float = 0.1,
    ) -> SpanRewardModel:
        """Load a checkpoint saved by ``SpanRewardTrainer`` (base model + LoRA adapter or full model, head, config).

        Args:
            path: The saved folder.
            device: Where to run (default: CUDA if available, else CPU).
            dtype: Model dtype (default float32).
            batch_size: Scoring batch size.
            merge_adapter: Merge a LoRA adapter into the base weights (faster scoring; same outputs).
            base_model_path: Override the base model recorded in the config (e.g. the checkpoint moved machines).
            max_padding_fraction: token_head: most padding allowed in one forward (see the class).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        config_file = path / SPAN_REWARD_CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{config_file} not found: '{path}' was not saved by SpanRewardTrainer.save_model (it writes "
                f"{SPAN_REWARD_CONFIG_NAME} next to the weights)."
            )
        span_config = json.loads(config_file.read_text(encoding="utf-8"))
        dtype = dtype or torch.float32
        if (path / "adapter_config.json").is_file():
            from peft import PeftModel

            base = base_model_path or span_config.get("base_model_name_or_path")
            if not base:
                raise ValueError(f"{config_file} records no base model; pass base_model_path=.")
            backbone = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
            backbone = PeftModel.from_pretrained(backbone, str(path))
            if merge_adapter:
                backbone = backbone.merge_and_unload()
        else:
            backbone = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if span_config.get("model_form") == "token_head":
            model = SpanTokenHeadModel(backbone, num_labels=int(span_config.get("num_labels", 3)))
            model.load_head(path)
        else:
            model = backbone
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        model.eval()
        return cls(model, tokenizer, span_config, batch_size=batch_size, max_padding_fraction=max_padding_fraction)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- scoring ---------------------------------------------------------------------------------------------------
    def __call__(self, prompts: Sequence[Any], responses: Sequence[str], **context: Any) -> list[Critique]:
        return self.score(prompts, responses, **context)

    def score(self, prompts: Sequence[Any], responses: Sequence[str], **context: Any) -> list[Critique]:
        """One :class:`Critique` per sample; quotes are exact substrings of the response. ``context`` is ignored."""
        return [p.critique for p in self.predict(prompts, responses)]

    def predict(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[SpanPrediction]:
        """Like :meth:`score`, with the character spans and the parse status of every sample."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses.")
        for index, response in enumerate(responses):
            if not isinstance(response, str):
                raise TypeError(f"response #{index} must be a str, got {type(response).__name__}.")
        predictions: list[SpanPrediction] = []
        was_training = self.model.training
        self.model.eval()
        try:
            if self.form == "token_head":
                predictions = self._predict_token_head(list(prompts), list(responses))
            else:
                for begin in range(0, len(prompts), self.batch_size):
                    batch_prompts = list(prompts[begin : begin + self.batch_size])
                    batch_responses = list(responses[begin : begin + self.batch_size])
                    predictions += self._predict_generative(batch_prompts, batch_responses)
        finally:
            if was_training:
                self.model.train()
        self.stats["num_scored"] += len(predictions)
        return predictions

    @torch.no_grad()
    def _predict_token_head(self, prompts: list, responses: list[str]) -> list[SpanPrediction]:
        """All samples: encoded once, grouped by length (:func:`length_grouped_batches`), one forward per group."""
        cfg = self.config
        tokenizer = self.tokenizer
        encodings = [
            encode_prompt_response(tokenizer, p, r, max_length=cfg.get("max_length"), append_eos=True)
            for p, r in zip(prompts, responses)
        ]
        for enc in encodings:
            if enc["num_response_tokens_truncated"]:
                self.stats["num_truncated"] += 1
        layout = cfg.get("head_layout", "repeat")
        separator = tokenizer(cfg.get("layout_separator", ""), add_special_tokens=False)["input_ids"]
        lengths = [
            len(enc["input_ids"])
            + (len(separator) + len(enc["input_ids"]) - enc["response_start"] if layout == "repeat" else 0)
            for enc in encodings
        ]
        good, poor = float(cfg.get("good_score", 1.0)), float(cfg.get("poor_score", -1.0))
        device = self.device
        predictions: list[SpanPrediction | None] = [None] * len(encodings)
        for group in length_grouped_batches(lengths, self.batch_size, self.max_padding_fraction):
            batch = build_token_head_batch(
                [encodings[i]["input_ids"] for i in group],
                [(encodings[i]["response_start"], len(encodings[i]["input_ids"])) for i in group],
                pad_token_id=tokenizer.pad_token_id,
                layout=layout,
                separator_ids=separator,
            )
            output = self.model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            )
            labels = output.span_logits.argmax(-1).cpu()
            for row, index in enumerate(group):
                row_labels = labels[row][batch["head_mask"][row].bool()].tolist()
                spans = labels_to_spans(responses[index], encodings[index]["response_offsets"], row_labels, good, poor)
                critique = Critique(
                    text="",
                    good=[s.quote for s in spans if s.score > 0],
                    poor=[s.quote for s in spans if s.score < 0],
                )
                predictions[index] = SpanPrediction(critique=critique, spans=spans)
        return predictions

    @torch.no_grad()
    def _predict_generative(self, prompts: list, responses: list[str]) -> list[SpanPrediction]:
        cfg = self.config
        tokenizer = self.tokenizer
        max_length = cfg.get("max_length")
        prompt_ids = []
        budget = None if max_length is None else max(1, int(max_length) - int(cfg.get("max_new_tokens", 256)))
        for prompt, response in zip(prompts, responses):
            ids, _, truncated = fit_generative_prompt(tokenizer, prompt, response, cfg.get("critique_prompt"), budget)
            self.stats["num_truncated"] += int(truncated)
            prompt_ids.append(ids)
        pad_id = tokenizer.pad_token_id
        rows = [torch.tensor(ids, dtype=torch.long) for ids in prompt_ids]
        input_ids = pad(rows, pad_id, padding_side="left")  # left padding for generation
        attention_mask = pad([torch.ones_like(row) for row in rows], 0, padding_side="left")
        length = input_ids.shape[1]
        device = self.device
        generated = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=int(cfg.get("max_new_tokens", 256)),
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(generated[:, length:], skip_special_tokens=True)
        good, poor = float(cfg.get("good_score", 1.0)), float(cfg.get("poor_score", -1.0))
        predictions = []
        for text, response in zip(texts, responses):
            critique = parse_generated_critique(text)
            if critique is None:
                self.stats["num_unparseable"] += 1
                logger.info("unparseable reward-model output (neutral rewards): %r", text[:200])
                predictions.append(SpanPrediction(critique=Critique(), spans=[], parsed=False, raw_output=text))
                continue
            located = locate_critique(
                response,
                critique,
                good_score=good,
                poor_score=poor,
                fuzzy_threshold=float(cfg.get("fuzzy_threshold", 90.0)),
            )
            # Keep only quotes found in the response, as exact substrings: spans travel as characters.
            spans = [
                ScoredSpan(s.start, s.end, s.score, response[s.start : s.end])
                for s in located.spans
                if s.end > s.start
            ]
            exact = Critique(
                text=critique.text,
                good=[s.quote for s in spans if s.score > 0],
                poor=[s.quote for s in spans if s.score < 0],
            )
            predictions.append(SpanPrediction(critique=exact, spans=spans, parsed=True, raw_output=text))
        return predictions
