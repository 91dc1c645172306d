"""``SpanRewardTrainer``: train a span-level reward model on annotated rows (Text2Grad, component 2).

It subclasses :class:`trl.RewardTrainer` so it plugs into the TRL ecosystem (``isinstance`` checks, logging of
``self._metrics``, activation offloading, model cards on checkpoints), but its data are not preference pairs: each row
is ``{prompt, response, critique, good_spans, poor_spans}`` (the annotation schema written by ``annotate.py``;
``"spans"`` / ``"located_spans"`` character spans are accepted too).

What is replaced from ``RewardTrainer`` and why:

* ``__init__``: the parent loads an ``AutoModelForSequenceClassification`` with one label and tokenizes
  chosen/rejected pairs. Here the model is an ``AutoModelForCausalLM`` (wrapped in
  :class:`~trl_text2grad.reward.modeling.SpanTokenHeadModel` for the ``token_head`` form), PEFT is applied to the
  backbone only, and ``transformers.Trainer.__init__`` is called directly (the parent's own ``__init__`` is skipped).
  The parent's per-instance state that its inherited methods read (``_metrics``, activation offloading context,
  ``can_return_loss``/``label_names``, token counters) is set up the same way.
* ``_prepare_dataset``: validates the annotation columns, drops rows without a response (counted), counts rows
  without spans, quotes that cannot be located and overlong rows; the generative form is tokenized here (prompt →
  target JSON), the token-head form is tokenized on the fly by ``SpanAnnotationCollator``.
* the data collator: ``SpanAnnotationCollator`` (token head; then laid out ``plain`` or ``repeat``) or a padding
  collator for prompt/target pairs (generative).
* ``compute_loss``: per-token cross-entropy of the span head (+ weighted critique LM loss), or the causal-LM loss on
  the target tokens only (generative); logs span accuracy, losses and annotation counters.
* ``prediction_step`` / ``evaluate``: evaluation reports the loss, then scores the raw evaluation rows with
  :class:`~trl_text2grad.reward.scoring.SpanRewardModel` and adds span precision/recall/F1, exact-span match, parse
  rate and critique ROUGE-L (``trl_text2grad.reward.evaluation``).
* ``_save`` / ``_load_from_checkpoint``: ``save_pretrained`` layout (LoRA adapter or full backbone, the span head as
  ``span_head.safetensors``, ``span_reward_config.json``, tokenizer, model card ``README.md``) that
  ``SpanRewardModel.from_pretrained`` reads; resuming reads it back.

Inherited unchanged: ``training_step`` (activation offloading), ``log`` (averaging ``_metrics``),
``_save_checkpoint`` (model card), and everything from ``transformers.Trainer``. Checkpoints are atomic and resuming
takes only complete ones (:class:`~trl_text2grad.checkpoints.AtomicCheckpointMixin`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback, set_seed
from trl import RewardTrainer
from trl.trainer.base_trainer import _BaseTrainer

from .. import __version__
from ..checkpoints import AtomicCheckpointMixin
from ..collator import SpanAnnotationCollator, encode_prompt_response, pad_sequences
from ..spans import Critique, locate_critique
from .evaluation import evaluate_span_reward_model
from .modeling import (
    CRITIQUE_MARKER,
    IGNORE_INDEX,
    NUM_SPAN_LABELS,
    SPAN_LABEL_NAMES,
    SPAN_REWARD_CONFIG_NAME,
    SpanTokenHeadModel,
    build_generative_prompt_ids,
    build_token_head_batch,
    format_generative_target,
    write_model_card,
)
from .scoring import SpanRewardModel
from .span_reward_config import SpanRewardConfig

logger = logging.getLogger(__name__)

__all__ = ["SpanRewardTrainer"]

_STAT_KEYS = ("num_quotes_located", "num_quotes_unlocated", "num_spans_truncated")


def _row_critique(row: Mapping[str, Any]) -> tuple[Critique | None, list | None]:
    """(Critique from the annotation schema, or None; explicit character spans, or None)."""
    spans = row.get("spans")
    if spans is None:
        spans = row.get("located_spans")
    if any(row.get(key) is not None for key in ("good_spans", "poor_spans")):
        return Critique.from_dict(row), None
    return (Critique(text=row.get("critique") or "") if row.get("critique") else None), spans


@dataclass
class _TokenHeadCollator:
    """``SpanAnnotationCollator`` followed by the token-head layout (and the appended critique for the LM loss)."""

    span_collator: SpanAnnotationCollator
    tokenizer: Any
    layout: str
    separator_ids: list[int]
    with_critique: bool
    max_critique_tokens: int

    def _critique_ids(self, row: Mapping[str, Any]) -> list[int] | None:
        text = row.get("critique")
        if not isinstance(text, str) or not text.strip():
            return None
        ids = self.tokenizer(CRITIQUE_MARKER + text, add_special_tokens=False)["input_ids"]
        return list(ids[: self.max_critique_tokens]) + [self.tokenizer.eos_token_id]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        span_rows = []
        for row in rows:
            critique, spans = _row_critique(row)
            span_row = {"prompt": row["prompt"], "response": row["response"]}
            if critique is not None and spans is None:
                span_row.update(critique.to_dict())
            elif spans is not None:
                span_row["spans"] = [tuple(s) for s in spans]
            span_rows.append(span_row)
        batch = self.span_collator(span_rows)
        sequences, ranges, labels = [], [], []
        for i in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][i].bool()
            ids = batch["input_ids"][i][keep]
            positions = torch.nonzero(batch["response_mask"][i][keep]).flatten()
            start, end = (int(positions[0]), int(positions[-1]) + 1) if len(positions) else (len(ids), len(ids))
            sequences.append(ids.tolist())
            ranges.append((start, end))
            labels.append(batch["span_labels"][i][keep][start:end].tolist())
        critiques = [self._critique_ids(row) for row in rows] if self.with_critique else None
        out = build_token_head_batch(
            sequences,
            ranges,
            pad_token_id=self.span_collator._pad_id,
            layout=self.layout,
            separator_ids=self.separator_ids,
            labels=labels,
            critique_ids=critiques,
        )
        out.pop("head_mask")
        for key in _STAT_KEYS:
            out[key] = batch[key]
        return out


@dataclass
class _GenerativeCollator:
    """Right-pads tokenized prompt+target rows; ``labels`` is -100 on the prompt and padding."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        multiple = self.pad_to_multiple_of
        input_ids = pad_sequences([r["input_ids"] for r in rows], self.pad_token_id, pad_to_multiple_of=multiple)
        labels = pad_sequences([r["labels"] for r in rows], IGNORE_INDEX, pad_to_multiple_of=multiple)
        attention_mask = pad_sequences([[1] * len(r["input_ids"]) for r in rows], 0, pad_to_multiple_of=multiple)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class SpanRewardTrainer(AtomicCheckpointMixin, RewardTrainer):
    """Trainer for Text2Grad span reward models (``token_head`` or ``generative``; see ``SpanRewardConfig``).

    Example:

    ```python
    >>> from peft import LoraConfig
    >>> from trl_text2grad import SpanRewardConfig, SpanRewardTrainer
    >>> from trl_text2grad.models import default_model_path

    >>> trainer = SpanRewardTrainer(
    ...     model=default_model_path(),
    ...     args=SpanRewardConfig("rm-out", model_form="token_head", num_train_epochs=1),
    ...     train_dataset=annotated,  # rows {prompt, response, critique, good_spans, poor_spans}
    ...     peft_config=LoraConfig(r=16, target_modules="all-linear"),
    ... )
    >>> trainer.train()
    >>> trainer.save_model()  # SpanRewardModel.from_pretrained("rm-out") then scores (prompt, response) pairs
    ```

    Args:
        model: A path/id of a causal LM (``AutoModelForCausalLM``), a causal-LM model instance, or (token head) a
            ready :class:`SpanTokenHeadModel`.
        args: A :class:`SpanRewardConfig`.
        data_collator: Leave ``None``: the collator follows from the model form.
        train_dataset: Annotated rows (``datasets.Dataset``).
        eval_dataset: Annotated rows, or a dict of them.
        processing_class: The tokenizer (fast); loaded from the model when ``None``.
        compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics: as in
            ``transformers.Trainer``.
        peft_config: A ``peft.PeftConfig`` (e.g. ``LoraConfig``) applied to the causal-LM backbone; the span head
            stays fully trainable.
    """

    _tag_names = ["trl", "reward-trainer", "text2grad", "span-reward-model"]
    _name = "SpanReward"
    _paper = {
        "title": "Text2Grad: Reinforcement Learning from Natural Language Feedback",
        "id": "2505.22338",
        "citation": (
            "@article{wang2025text2grad,\n    title   = {{Text2Grad: Reinforcement Learning from Natural Language "
            "Feedback}},\n    author  = {Hanyang Wang and others},\n    journal = {arXiv preprint "
            "arXiv:2505.22338},\n    year    = {2025}\n}"
        ),
    }

    def __init__(
        self,
        model: str | torch.nn.Module,
        args: SpanRewardConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config: Any | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = SpanRewardConfig(f"{str(name).rstrip('/').split('/')[-1]}-SpanReward")
        elif not isinstance(args, SpanRewardConfig):
            raise TypeError(
                f"SpanRewardTrainer needs a SpanRewardConfig, got {type(args).__name__}; build one with "
                "SpanRewardConfig(output_dir, model_form=...)."
            )
        if train_dataset is None:
            raise ValueError("SpanRewardTrainer: `train_dataset` is required (annotated rows).")
        if not isinstance(train_dataset, Dataset):
            raise TypeError(
                f"SpanRewardTrainer: train_dataset must be a datasets.Dataset, got {type(train_dataset).__name__} "
                "(use Dataset.from_list(rows) for a list of dicts)."
            )
        self.model_form = args.model_form
        set_seed(args.seed)  # the span head is initialised randomly

        # -- model ----------------------------------------------------------------------------------------------
        head_model = None
        if isinstance(model, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            init_kwargs.setdefault("dtype", torch.float32)
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            backbone = AutoModelForCausalLM.from_pretrained(model, **init_kwargs)
        elif isinstance(model, SpanTokenHeadModel):
            if self.model_form != "token_head":
                raise ValueError("a SpanTokenHeadModel was passed but model_form is 'generative'.")
            head_model, backbone = model, model.backbone
        else:
            backbone = model
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(backbone.config._name_or_path)
        if not getattr(processing_class, "is_fast", False):
            raise TypeError("SpanRewardTrainer needs a fast tokenizer (character offsets); pass use_fast=True.")
        if args.eos_token is not None:
            processing_class.eos_token = args.eos_token
        if processing_class.pad_token is None:
            processing_class.pad_token = args.pad_token or processing_class.eos_token
        if processing_class.eos_token_id is None:
            raise ValueError("The tokenizer has no eos_token; set SpanRewardConfig.eos_token.")

        if peft_config is not None:
            from peft import PeftConfig, get_peft_model

            if not isinstance(peft_config, PeftConfig):
                raise TypeError(f"peft_config must be a peft.PeftConfig, got {type(peft_config).__name__}.")
            if is_peft_model(backbone):
                raise ValueError("The model is already a PeftModel; pass either it or a peft_config, not both.")
            backbone = get_peft_model(backbone, peft_config)
        if args.disable_dropout:
            for module in backbone.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0

        if self.model_form == "token_head":
            if head_model is None:
                model = SpanTokenHeadModel(
                    backbone,
                    num_labels=NUM_SPAN_LABELS,
                    head_dropout=args.head_dropout,
                    class_weights=args.span_class_weights,
                    critique_loss_weight=args.critique_loss_weight,
                )
            else:
                head_model.backbone = backbone
                model = head_model
        else:
            model = backbone

        # -- data -------------------------------------------------------------------------------------------------
        if data_collator is None:
            if self.model_form == "token_head":
                span_collator = SpanAnnotationCollator(
                    processing_class,
                    max_length=args.max_length,
                    good_score=args.good_score,
                    poor_score=args.poor_score,
                    fuzzy_threshold=args.fuzzy_threshold,
                    pad_to_multiple_of=None,
                )
                data_collator = _TokenHeadCollator(
                    span_collator=span_collator,
                    tokenizer=processing_class,
                    layout=args.head_layout,
                    separator_ids=list(processing_class(args.layout_separator, add_special_tokens=False)["input_ids"]),
                    with_critique=args.critique_loss_weight > 0,
                    max_critique_tokens=args.max_target_length,
                )
            else:
                data_collator = _GenerativeCollator(processing_class.pad_token_id, args.pad_to_multiple_of)

        self.data_stats: dict[str, dict[str, int]] = {}
        self._raw_eval_datasets: dict[str, Dataset] = {}
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if eval_dataset is not None:
            if isinstance(eval_dataset, dict):
                prepared = {}
                for key, dataset in eval_dataset.items():
                    self._raw_eval_datasets[key] = self._clean_rows(dataset, key)[0]
                    prepared[key] = self._prepare_dataset(dataset, processing_class, args, key)
                eval_dataset = prepared
            else:
                self._raw_eval_datasets["eval"] = self._clean_rows(eval_dataset, "eval")[0]
                eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")

        # RewardTrainer.__init__ is skipped on purpose (sequence-classification model, preference data); the
        # transformers/TRL base initialisation runs directly.
        _BaseTrainer.__init__(
            self,
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        if args.n_gpu > 1:
            raise ValueError(
                "SpanRewardTrainer does not support nn.DataParallel; launch with `accelerate launch` or torchrun, or "
                "make one GPU visible with CUDA_VISIBLE_DEVICES."
            )
        # State read by the inherited RewardTrainer methods.
        self.can_return_loss = True
        self.label_names = []
        if args.activation_offloading:
            from trl.models import get_act_offloading_ctx_manager

            self.maybe_activation_offload_context = get_act_offloading_ctx_manager(model=self.model)
        else:
            import contextlib

            self.maybe_activation_offload_context = contextlib.nullcontext()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0
        self._tp_size = 1
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------------------------------------------------
    # Data
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _clean_rows(dataset: Dataset, name: str) -> tuple[Dataset, int]:
        """Check the columns and drop rows without a usable response or prompt (counted, logged)."""
        if not isinstance(dataset, Dataset):
            raise TypeError(f"{name} dataset must be a datasets.Dataset, got {type(dataset).__name__}.")
        columns = set(dataset.column_names)
        missing = {"response"} - columns
        if "prompt" not in columns and "messages" not in columns:
            missing.add("prompt")
        if missing:
            raise ValueError(
                f"The {name} dataset lacks column(s) {sorted(missing)}. SpanRewardTrainer trains on annotated rows "
                "{prompt, response, critique, good_spans, poor_spans} (the output of trl_text2grad.annotate)."
            )
        if not columns & {"good_spans", "poor_spans", "spans", "located_spans", "critique"}:
            raise ValueError(
                f"The {name} dataset has no annotation columns: add good_spans/poor_spans (quotes) and critique, or "
                "'spans' ([start, end, score] character spans). Annotate it with `trl-text2grad annotate`."
            )
        if "prompt" not in columns:
            dataset = dataset.rename_column("messages", "prompt")
        bad = [
            i
            for i, (p, r) in enumerate(zip(dataset["prompt"], dataset["response"]))
            if not isinstance(r, str) or p is None
        ]
        if bad:
            logger.warning(
                "%s dataset: %d row(s) without a response string or a prompt are skipped (first: %s).",
                name,
                len(bad),
                bad[:5],
            )
            keep = sorted(set(range(len(dataset))) - set(bad))
            dataset = dataset.select(keep)
        if len(dataset) == 0:
            raise ValueError(f"The {name} dataset has no usable rows (every row lacks a response or prompt).")
        return dataset, len(bad)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: D401 - overrides the parent
        """Validate and count (token head: tokenized by the collator) or tokenize prompt → target (generative)."""
        if "input_ids" in getattr(dataset, "column_names", []) and self.model_form == "generative":
            return dataset  # already prepared
        dataset, skipped = self._clean_rows(dataset, dataset_name)
        stats = defaultdict(int, rows=len(dataset), rows_skipped=skipped)
        if self.model_form == "token_head":
            for row in dataset:
                critique, spans = _row_critique(row)
                if spans is None and critique is not None and (critique.good or critique.poor):
                    located = locate_critique(row["response"], critique, fuzzy_threshold=args.fuzzy_threshold)
                    stats["quotes_unlocated"] += located.num_unlocated + located.empty_quotes
                    stats["rows_without_spans"] += int(located.num_located == 0)
                else:
                    stats["rows_without_spans"] += int(not spans)
            if args.max_length is not None:
                for row in dataset:
                    enc = encode_prompt_response(processing_class, row["prompt"], row["response"], args.max_length)
                    stats["rows_truncated"] += int(
                        enc["num_prompt_tokens_truncated"] > 0 or enc["num_response_tokens_truncated"] > 0
                    )
            keep = [
                c
                for c in dataset.column_names
                if c in ("prompt", "response", "critique", "good_spans", "poor_spans", "spans", "located_spans")
            ]
            dataset = dataset.select_columns(keep)
        else:
            rows = []
            for row in dataset:
                encoded = self._encode_generative_row(row, processing_class, args)
                for key in ("quotes_unlocated", "rows_truncated", "rows_without_spans", "critiques_cut"):
                    stats[key] += encoded.pop(key)
                rows.append(encoded)
            dataset = Dataset.from_list(rows)
        self.data_stats[dataset_name] = dict(stats)
        logger.info("SpanRewardTrainer %s data: %s", dataset_name, dict(stats))
        if stats["quotes_unlocated"] or stats["rows_truncated"]:
            logger.warning(
                "%s dataset: %d quote(s) could not be located in their response (dropped from the span labels, rows "
                "kept) and %d row(s) exceed max_length=%s (truncated).",
                dataset_name,
                stats["quotes_unlocated"],
                stats["rows_truncated"],
                args.max_length,
            )
        return dataset

    @staticmethod
    def _encode_generative_row(row: Mapping[str, Any], tokenizer, args: SpanRewardConfig) -> dict[str, Any]:
        response = row["response"]
        critique, spans = _row_critique(row)
        text = critique.text if critique is not None else (row.get("critique") or "")
        unlocated = 0
        if spans is None and critique is not None:
            located = locate_critique(response, critique, fuzzy_threshold=args.fuzzy_threshold)
            unlocated = located.num_unlocated + located.empty_quotes
            char_spans = [(s.start, s.end, 1.0 if s.score > 0 else -1.0) for s in located.spans]
        else:
            char_spans = [(int(s[0]), int(s[1]), float(s[2])) for s in (spans or [])]

        def quotes(upto: int) -> tuple[list[str], list[str]]:
            """Quotes of the spans within ``response[:upto]``; a span cut by ``upto`` keeps its kept part."""
            good, poor = [], []
            for s, e, score in char_spans:
                quote = response[s : min(e, upto)].strip() if s < upto else ""
                if quote and score != 0:
                    (good if score > 0 else poor).append(quote)
            return good, poor

        eos = tokenizer.eos_token_id
        limit = max(2, args.max_target_length)

        def n_tokens(value: str) -> int:
            return len(tokenizer(value, add_special_tokens=False)["input_ids"])

        def build_target(upto: int) -> tuple[list[int], list[str], list[str], bool]:
            """Target ids for the spans within ``response[:upto]``, within ``max_target_length`` tokens: the
            critique is shortened first, then (when the quotes alone are too long) every quote keeps its start."""
            good, poor = quotes(upto)
            critique_text, shortened = text, False
            if n_tokens(format_generative_target(text, good, poor)) + 1 > limit:
                shortened = True
                room = limit - 1 - n_tokens(format_generative_target("", good, poor))
                if room > 0:
                    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
                    critique_text = text[: offsets[min(room, len(offsets)) - 1][1]] if offsets else ""
                else:
                    critique_text = ""
                    chars = max(len(q) for q in good + poor)
                    while (
                        chars > 1
                        and n_tokens(
                            format_generative_target("", [q[:chars] for q in good], [q[:chars] for q in poor])
                        )
                        + 1
                        > limit
                    ):
                        chars //= 2
                    good = [q[:chars].rstrip() for q in good if q[:chars].strip()]
                    poor = [q[:chars].rstrip() for q in poor if q[:chars].strip()]
            ids = list(
                tokenizer(format_generative_target(critique_text, good, poor), add_special_tokens=False)["input_ids"]
            )
            return ids[: limit - 1] + [eos], good, poor, shortened

        def encode(upto: int) -> tuple[list[int], list[int], list[str], list[str], bool]:
            target_ids, good, poor, cut = build_target(upto)
            prompt_ids = build_generative_prompt_ids(tokenizer, row["prompt"], response[:upto], args.critique_prompt)
            return prompt_ids, target_ids, good, poor, cut

        def fits(encoded) -> bool:
            return args.max_length is None or len(encoded[0]) + len(encoded[1]) <= args.max_length

        encoded, any_truncated = encode(len(response)), False
        if not fits(encoded):
            # Keep the longest prefix of the response (at a token boundary) whose prompt + target fit: the total
            # length only grows with the prefix, so a binary search finds it.
            any_truncated = True
            offsets = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            cuts = [0] + [end for _, end in offsets]
            low, high = 0, len(cuts) - 1  # cuts[low] fits (checked below), cuts[high] does not
            best = encode(0)
            while high - low > 1:
                middle = (low + high) // 2
                candidate = encode(cuts[middle])
                if fits(candidate):
                    low, best = middle, candidate
                else:
                    high = middle
            encoded = best
            if not fits(encoded):  # the task prompt alone is too long: keep its end
                keep = max(1, args.max_length - len(encoded[1]))
                encoded = (encoded[0][len(encoded[0]) - keep :],) + encoded[1:]
        prompt_ids, target_ids, good, poor, critiques_cut = encoded
        return {
            "input_ids": prompt_ids + target_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
            "quotes_unlocated": unlocated,
            "rows_truncated": int(any_truncated),
            "rows_without_spans": int(not (good or poor)),
            "critiques_cut": int(critiques_cut),
        }

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [
                "prompt",
                "response",
                "critique",
                "good_spans",
                "poor_spans",
                "spans",
                "located_spans",
                "input_ids",
                "labels",
            ]

    # ------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------
    def _mean_metric(self, value: torch.Tensor) -> float:
        return self.accelerator.gather_for_metrics(value.detach().float().reshape(1)).mean().item()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        counters = {key: inputs.pop(key) for key in _STAT_KEYS if key in inputs}
        if self.model_form == "token_head":
            outputs = model(**inputs)
            loss = outputs.loss
            with torch.no_grad():
                labels = inputs["span_labels"]
                mask = labels != IGNORE_INDEX
                predicted = outputs.span_logits.argmax(-1)
                if mask.any():
                    self._metrics[mode]["span_accuracy"].append(
                        self._mean_metric((predicted[mask] == labels[mask]).float().mean())
                    )
                    for index, name in enumerate(SPAN_LABEL_NAMES[1:], start=1):
                        gold = mask & (labels == index)
                        if gold.any():
                            self._metrics[mode][f"head_{name}_recall"].append(
                                self._mean_metric((predicted[gold] == index).float().mean())
                            )
                self._metrics[mode]["span_loss"].append(self._mean_metric(outputs.span_loss))
                if outputs.critique_loss is not None:
                    self._metrics[mode]["critique_loss"].append(self._mean_metric(outputs.critique_loss))
        else:
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                labels=inputs["labels"],
                use_cache=False,
            )
            loss = outputs.loss
            with torch.no_grad():
                targets = inputs["labels"][:, 1:]
                mask = targets != IGNORE_INDEX
                if mask.any():
                    predicted = outputs.logits[:, :-1].argmax(-1)
                    self._metrics[mode]["mean_token_accuracy"].append(
                        self._mean_metric((predicted[mask] == targets[mask]).float().mean())
                    )
        for key, value in counters.items():
            self._metrics[mode][key].append(float(self.accelerator.gather_for_metrics(value.reshape(1)).sum()))
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum().reshape(1)).sum().item()
            self._total_train_tokens += tokens
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss only (span metrics come from scoring the raw rows in :meth:`evaluate`)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------------------------------------
    def span_reward_model(self, batch_size: int | None = None):
        """The model being trained as a :class:`~trl_text2grad.reward.scoring.SpanRewardModel` (no copy)."""
        return SpanRewardModel(
            self.accelerator.unwrap_model(self.model),
            self.processing_class,
            self.span_config_dict(),
            batch_size=batch_size or self.args.per_device_eval_batch_size,
        )

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluation loss, then (``eval_span_metrics``) span P/R/F1, exact match, parse rate and ROUGE-L."""
        raw = None
        if isinstance(eval_dataset, str):
            raw = self._raw_eval_datasets.get(eval_dataset)
        elif isinstance(eval_dataset, Dataset):
            raw = self._clean_rows(eval_dataset, metric_key_prefix)[0]
            eval_dataset = self._prepare_dataset(eval_dataset, self.processing_class, self.args, metric_key_prefix)
        elif isinstance(eval_dataset, dict):
            eval_dataset = {
                key: self._prepare_dataset(ds, self.processing_class, self.args, key)
                for key, ds in eval_dataset.items()
            }
        elif eval_dataset is None and len(self._raw_eval_datasets) == 1:
            raw = next(iter(self._raw_eval_datasets.values()))
        metrics = _BaseTrainer.evaluate(
            self, eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )
        if self.args.eval_span_metrics and raw is not None:
            span_metrics = self.compute_span_metrics(raw)
            span_metrics = {f"{metric_key_prefix}_{k}": v for k, v in span_metrics.items() if v is not None}
            metrics.update(span_metrics)
            self.log(span_metrics)
        return metrics

    def compute_span_metrics(self, dataset: Dataset, max_samples: int | None = -1) -> dict[str, float]:
        """Score ``dataset``'s rows with the current model and compare to their annotations."""
        limit = self.args.eval_max_samples if max_samples == -1 else max_samples
        if limit is not None and len(dataset) > limit:
            dataset = dataset.select(range(limit))
        return evaluate_span_reward_model(self.span_reward_model(), dataset, fuzzy_threshold=self.args.fuzzy_threshold)

    # ------------------------------------------------------------------------------------------------------------
    # Saving / loading
    # ------------------------------------------------------------------------------------------------------------
    def span_config_dict(self) -> dict[str, Any]:
        """What ``SpanRewardModel.from_pretrained`` needs to rebuild and run the model (``span_reward_config.json``)."""
        model = self.accelerator.unwrap_model(self.model)
        backbone = model.backbone if isinstance(model, SpanTokenHeadModel) else model
        adapter = is_peft_model(backbone)
        base = None
        if adapter:
            base = next(iter(backbone.peft_config.values())).base_model_name_or_path
        base = base or getattr(backbone.config, "_name_or_path", None)
        args = self.args
        return {
            "model_form": self.model_form,
            "base_model_name_or_path": base,
            "adapter": adapter,
            "num_labels": NUM_SPAN_LABELS,
            "label_names": list(SPAN_LABEL_NAMES),
            "head_layout": args.head_layout,
            "layout_separator": args.layout_separator,
            "critique_loss_weight": args.critique_loss_weight,
            "critique_prompt": args.critique_prompt,
            "good_score": args.good_score,
            "poor_score": args.poor_score,
            "fuzzy_threshold": args.fuzzy_threshold,
            "max_length": args.max_length,
            "max_new_tokens": args.max_new_tokens,
            "trl_text2grad_version": __version__,
        }

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        logger.info("Saving span reward model to %s", output_dir)
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, SpanTokenHeadModel) or is_peft_model(model):
            model.save_pretrained(output_dir)
        else:
            model.save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        span_config = self.span_config_dict()
        Path(output_dir, SPAN_REWARD_CONFIG_NAME).write_text(json.dumps(span_config, indent=2), encoding="utf-8")
        write_model_card(output_dir, span_config)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model or self.accelerator.unwrap_model(self.model)
        if not isinstance(model, SpanTokenHeadModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        path = Path(resume_from_checkpoint)
        if is_peft_model(model.backbone):
            from peft import load_peft_weights, set_peft_model_state_dict

            set_peft_model_state_dict(model.backbone, load_peft_weights(str(path)))
        else:
            if (path / "model.safetensors").is_file():
                from safetensors.torch import load_file

                model.backbone.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
            else:
                from transformers.trainer_utils import load_sharded_checkpoint  # (not in modeling_utils in v5)

                load_sharded_checkpoint(model.backbone, str(path), strict=False)
        model.load_head(path)
