"""``SpanRewardTrainer``: a ``trl.RewardTrainer`` that also trains span-level reward models (Text2Grad, component 2)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from peft import PeftConfig, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from trl import RewardTrainer
from trl.data_utils import get_dataset_column_names
from trl.trainer.utils import create_model_from_path, get_config_model_id

from ..checkpoints import AtomicCheckpointMixin
from ..collator import SpanAnnotationCollator, encode_prompt_response
from ..spans import locate_critique
from .collators import COUNTER_KEYS, GenerativeCollator, TokenHeadCollator
from .data import ANNOTATION_COLUMNS, PAIR_COLUMNS, check_columns, clean_rows, row_critique, row_kind, span_rows
from .evaluation import evaluate_span_reward_model
from .generative_target import encode_generative_row
from .modeling import (
    IGNORE_INDEX,
    NUM_SPAN_LABELS,
    SPAN_LABEL_NAMES,
    SpanTokenHeadModel,
    has_lm_head,
    is_sequence_classifier,
)
from .preference import bradley_terry_loss, expected_token_rewards, sequence_rewards, split_preference_row
from .save_format import save_span_reward_model, span_config_dict
from .scoring import SpanRewardModel
from .span_reward_config import SpanRewardConfig

logger = logging.getLogger(__name__)

__all__ = ["SpanRewardTrainer", "resolve_model_form"]

_CAUSAL_FORMS = ("token_head", "generative")
_KEPT_COLUMNS = ("prompt", "messages", "response", *ANNOTATION_COLUMNS, *PAIR_COLUMNS, "margin")


def _checkpoint_is_sequence_classifier(path: str, args: SpanRewardConfig) -> bool:
    """Whether the checkpoint at ``path`` declares a ``*ForSequenceClassification`` architecture."""
    revision = (args.model_init_kwargs or {}).get("revision") if isinstance(args.model_init_kwargs, dict) else None
    try:
        config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError):  # not resolvable here: loading the model reports the real error
        return False
    return any(str(name).endswith("ForSequenceClassification") for name in (config.architectures or []))


def resolve_model_form(model: str | torch.nn.Module, args: SpanRewardConfig) -> str:
    """The form ``model`` trains as: ``args.model_form``, or (``None``) what the model is; clear errors on conflicts.

    Raises:
        ValueError: ``args.model_form`` and the model disagree (a sequence classifier asked to be a token head or a
            generator, a ``SpanTokenHeadModel`` asked to be anything else, a causal LM asked to be a classifier).
    """
    if isinstance(model, SpanTokenHeadModel):
        detected = "token_head"
    elif isinstance(model, str):
        detected = "sequence_classification" if _checkpoint_is_sequence_classifier(model, args) else None
    else:
        detected = "sequence_classification" if is_sequence_classifier(model) else None
    wanted = args.model_form
    if wanted is None:
        return detected or "token_head"
    if detected == "sequence_classification" and wanted != detected:
        raise ValueError(
            f"model_form={wanted!r} needs a causal LM (an LM head to build on), but the model is a sequence "
            "classifier; pass an AutoModelForCausalLM (or its path), or leave model_form unset to train the "
            "classifier on preference pairs as trl.RewardTrainer does."
        )
    if detected == "token_head" and wanted != detected:
        raise ValueError(f"a SpanTokenHeadModel was passed but model_form is {wanted!r}.")
    if wanted == "sequence_classification" and not isinstance(model, str) and detected is None:
        raise ValueError(
            f"model_form='sequence_classification' needs an AutoModelForSequenceClassification (num_labels=1) or a "
            f"model path, got a {type(model).__name__}."
        )
    return wanted


def _check_peft_config(peft_config: Any, form: str) -> None:
    """A ``SEQ_CLS`` adapter adds a classification head that a causal-LM form never uses: refuse it."""
    if peft_config is None:
        return
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"peft_config must be a peft.PeftConfig (e.g. LoraConfig), got {type(peft_config).__name__}.")
    task = getattr(peft_config.task_type, "value", peft_config.task_type)
    if form in _CAUSAL_FORMS and task == "SEQ_CLS":
        raise ValueError(
            f"peft_config.task_type='SEQ_CLS' is for sequence-classification reward models, but model_form is "
            f"{form!r} (a causal LM): use task_type='CAUSAL_LM' (TRL ModelConfig: --lora_task_type CAUSAL_LM) or "
            "pass an AutoModelForSequenceClassification."
        )


def _load_causal_lm(path: str, args: SpanRewardConfig, quantization_config: Any) -> torch.nn.Module:
    """``AutoModelForCausalLM`` from ``path`` with ``args.model_init_kwargs`` (dtype float32 unless given)."""
    kwargs = dict(args.model_init_kwargs or {})
    if quantization_config is not None:
        if "quantization_config" in kwargs:
            raise ValueError(
                "quantization_config is set both as a trainer argument and in args.model_init_kwargs; set it once."
            )
        kwargs["quantization_config"] = quantization_config
    kwargs.setdefault("dtype", torch.float32)
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    # The span head lives outside the backbone, so the backbone is not dispatched across devices on its own.
    kwargs.setdefault("device_map", None)
    return create_model_from_path(path, AutoModelForCausalLM, **kwargs)


def _prepare_tokenizer(tokenizer: Any, model: torch.nn.Module, args: SpanRewardConfig) -> PreTrainedTokenizerBase:
    """The fast tokenizer with its pad token set as ``RewardTrainer.__init__`` sets it (the collators need it first)."""
    if tokenizer is None:
        kwargs = args.model_init_kwargs if isinstance(args.model_init_kwargs, dict) else {}
        tokenizer = AutoTokenizer.from_pretrained(
            get_config_model_id(model.config),
            revision=kwargs.get("revision"),
            trust_remote_code=args.trust_remote_code,
        )
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("SpanRewardTrainer needs a fast tokenizer (character offsets); pass use_fast=True.")
    if (args.eos_token or tokenizer.eos_token) is None:
        raise ValueError("The tokenizer has no eos_token; set SpanRewardConfig.eos_token.")
    tokenizer.pad_token = args.pad_token or tokenizer.pad_token or args.eos_token or tokenizer.eos_token
    return tokenizer


@contextmanager
def _one_label_config(config: Any) -> Iterator[None]:
    """Present ``num_labels=1`` while ``RewardTrainer.__init__`` checks it, then restore the config's labels.

    The check guards against sequence classifiers with several outputs. A causal LM never reads ``num_labels`` (it
    has no classification head); the token head's sequence output is one reward (the mean token reward).
    """
    id2label, label2id = config.id2label, config.label2id
    config.num_labels = 1
    try:
        yield
    finally:
        config.id2label, config.label2id = id2label, label2id


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextmanager
def _without_parent_warning(prefix: str | None) -> Iterator[None]:
    """Drop ``RewardTrainer``'s log message starting with ``prefix`` (one that is false for a model we loaded)."""
    parent_logger = logging.getLogger(RewardTrainer.__module__)
    message_filter = _DropMessage(prefix) if prefix else None
    if message_filter:
        parent_logger.addFilter(message_filter)
    try:
        yield
    finally:
        if message_filter:
            parent_logger.removeFilter(message_filter)


class SpanRewardTrainer(AtomicCheckpointMixin, RewardTrainer):
    """A ``trl.RewardTrainer`` for Text2Grad span reward models, that still trains TRL's reward models.

    Three forms (``SpanRewardConfig.model_form``; by default from the model):

    * ``sequence_classification``: an ``AutoModelForSequenceClassification`` (``num_labels=1``) on preference pairs —
      ``RewardTrainer`` unchanged: its model loading, PEFT, tokenization, ``DataCollatorForPreference``, loss and
      metrics (span rows are refused: a one-score model cannot learn from spans);
    * ``token_head``: a causal-LM backbone with a per-token head (neutral / good / poor). Span rows train it with
      per-token cross-entropy (+ an optional critique LM loss); preference pairs train it with ``RewardTrainer``'s
      Bradley–Terry loss on the mean token reward (``trl_text2grad.reward.preference``); one data set may mix both;
    * ``generative``: the causal LM learns to write the critique and the spans as JSON (span rows only).

    Example:

    ```python
    >>> from trl_text2grad import SpanRewardConfig, SpanRewardTrainer

    >>> trainer = SpanRewardTrainer(
    ...     model="HuggingFaceTB/SmolLM2-135M-Instruct",
    ...     args=SpanRewardConfig("rm-out", num_train_epochs=1),
    ...     train_dataset=rows,  # {prompt, response, critique, good_spans, poor_spans} and/or {chosen, rejected}
    ... )
    >>> trainer.train()
    >>> trainer.save_model()  # SpanRewardModel.from_pretrained("rm-out") scores (prompt, response) pairs
    ```

    ``RewardTrainer.__init__`` runs for every form. The parts of it that cannot serve the causal-LM forms, and why:

    * model loading: it loads a path as ``AutoModelForSequenceClassification``; the span forms need the LM itself, so
      a path is loaded here with ``AutoModelForCausalLM`` (same ``model_init_kwargs`` / ``quantization_config``)
      and the parent receives the instance. Its ``num_labels == 1`` check, meant for classifiers, sees 1 while it
      runs (the token head's sequence output is one reward; a causal LM has no ``num_labels`` use);
    * PEFT for the token head: the adapter must wrap the causal-LM backbone inside ``SpanTokenHeadModel`` (the head
      stays an ordinary trainable module, and the adapter is saved in the layout ``PeftModel.from_pretrained`` on an
      ``AutoModelForCausalLM`` reads), so it is applied here and the parent gets ``peft_config=None``. The
      generative form's PEFT is the parent's;
    * the collator: pairs become two prompt + response sequences whose response tokens the head reads, so their
      layout is ``TokenHeadCollator``'s, not ``DataCollatorForPreference``'s (which has no response boundary).

    Overridden hooks (reason above each): ``_prepare_dataset``, ``compute_loss``, ``prediction_step``, ``evaluate``,
    ``_save``, ``_load_from_checkpoint``. Inherited: ``training_step`` (activation offloading), ``log`` (metric
    averaging), ``_save_checkpoint`` (model card), and everything from ``transformers.Trainer``.

    Args:
        model: A model path/id, a causal LM, a ready :class:`SpanTokenHeadModel`, or an
            ``AutoModelForSequenceClassification`` with ``num_labels=1``.
        args: A :class:`SpanRewardConfig` (a ``trl.RewardConfig``).
        data_collator: ``None``: follows from the form.
        train_dataset: Span rows and/or preference rows (``datasets.Dataset``; a streaming ``IterableDataset`` with
            a sequence classifier only).
        eval_dataset: The same, or a dict of them.
        processing_class: The tokenizer (fast); loaded from the model when ``None``.
        compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics: as in
            ``transformers.Trainer``.
        quantization_config: Used when ``model`` is a path (QLoRA with ``peft_config``), as in ``RewardTrainer``.
        peft_config: A ``peft.PeftConfig``; a ``SEQ_CLS`` task type is refused for the causal-LM forms.
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
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset | IterableDataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        quantization_config: Any | None = None,
        peft_config: PeftConfig | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = SpanRewardConfig(f"{str(name).rstrip('/').split('/')[-1]}-SpanReward")
        elif not isinstance(args, SpanRewardConfig):
            raise TypeError(
                f"SpanRewardTrainer needs a SpanRewardConfig (a trl.RewardConfig with the span fields), got "
                f"{type(args).__name__}; `from trl_text2grad import SpanRewardConfig as RewardConfig` keeps a "
                "RewardTrainer script unchanged."
            )
        self.model_form = resolve_model_form(model, args)
        self.data_stats: dict[str, dict[str, int]] = {}
        _check_peft_config(peft_config, self.model_form)
        if self.model_form == "sequence_classification":
            if args.critique_loss_weight > 0:
                raise ValueError(
                    "critique_loss_weight > 0 needs a language-modelling head; a sequence-classification model has "
                    "none. Use a causal LM (model_form='token_head') or set critique_loss_weight=0."
                )
            super().__init__(
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
                quantization_config=quantization_config,
                peft_config=peft_config,
            )
            return

        loaded_here = isinstance(model, str)
        head_model = model if isinstance(model, SpanTokenHeadModel) else None
        if loaded_here:
            model = _load_causal_lm(model, args, quantization_config)
        backbone = head_model.backbone if head_model is not None else model
        if args.critique_loss_weight > 0 and not has_lm_head(backbone):
            raise ValueError(
                f"critique_loss_weight > 0 needs a language-modelling head, but {type(backbone).__name__} has none; "
                "pass an AutoModelForCausalLM or set critique_loss_weight=0."
            )
        template = args.chat_template_path
        if self.model_form == "token_head" and template is not None and not str(template).endswith((".jinja", ".j2")):
            raise ValueError(
                f"chat_template_path={template!r} clones a tokenizer's chat template and resizes the model's "
                "embeddings, which the token head does not support; set processing_class.chat_template (or pass a "
                ".jinja file as chat_template_path) instead."
            )
        if self.model_form == "generative" and not has_lm_head(backbone):
            raise ValueError(f"model_form='generative' needs a causal LM, got {type(backbone).__name__}.")
        processing_class = _prepare_tokenizer(processing_class, backbone, args)
        if self.model_form == "token_head":
            model = self._token_head_model(backbone, head_model, peft_config, args)
            peft_config = None  # applied to the backbone above
        if data_collator is None:
            data_collator = self._default_collator(processing_class, args)
        ignored_warning = "You passed `model_init_kwargs`" if loaded_here else None
        with _one_label_config(model.config), _without_parent_warning(ignored_warning):
            super().__init__(
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
                quantization_config=None if loaded_here else quantization_config,
                peft_config=peft_config,
            )

    @staticmethod
    def _token_head_model(backbone, head_model, peft_config, args: SpanRewardConfig) -> SpanTokenHeadModel:
        """``SpanTokenHeadModel`` over ``backbone``, the adapter (if any) wrapping the backbone only."""
        if peft_config is not None:
            if is_peft_model(backbone):
                raise ValueError("The model is already a PeftModel; pass either it or a peft_config, not both.")
            backbone = get_peft_model(backbone, peft_config)
        if head_model is not None:
            head_model.backbone = backbone
            return head_model
        return SpanTokenHeadModel(
            backbone,
            num_labels=NUM_SPAN_LABELS,
            head_dropout=args.head_dropout,
            class_weights=args.span_class_weights,
            critique_loss_weight=args.critique_loss_weight,
        )

    def _default_collator(self, tokenizer, args: SpanRewardConfig) -> Callable:
        if self.model_form == "generative":
            return GenerativeCollator(tokenizer.pad_token_id, args.pad_to_multiple_of)
        span_collator = SpanAnnotationCollator(
            tokenizer,
            max_length=args.max_length,
            good_score=args.good_span_reward,
            poor_score=args.poor_span_reward,
            fuzzy_threshold=args.fuzzy_threshold,
        )
        return TokenHeadCollator(
            span_collator=span_collator,
            tokenizer=tokenizer,
            layout=args.head_layout,
            separator_ids=list(tokenizer(args.layout_separator, add_special_tokens=False)["input_ids"]),
            with_critique=args.critique_loss_weight > 0,
            max_critique_tokens=args.max_target_length,
            pad_to_multiple_of=args.pad_to_multiple_of,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Data
    # ------------------------------------------------------------------------------------------------------------
    # Span rows and pairs are checked and counted here, and the generative targets tokenized; a sequence classifier
    # keeps RewardTrainer's preparation (after refusing span rows, which it cannot learn from).
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if self.model_form == "sequence_classification":
            _, may_hold_spans = check_columns(get_dataset_column_names(dataset), dataset_name)
            if may_hold_spans:
                raise ValueError(
                    f"The {dataset_name} dataset has span rows (prompt/response + annotations), but a "
                    "sequence-classification model learns from preference pairs only; train a causal LM with "
                    "model_form='token_head' on it (it learns from spans and pairs), or keep the pairs only."
                )
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        columns = get_dataset_column_names(dataset)
        if self.model_form == "generative" and "input_ids" in (columns or []):
            return dataset  # already prepared
        dataset, stats = clean_rows(dataset, dataset_name)
        if self.model_form == "generative" and stats["pairs"]:
            raise ValueError(
                f"The {dataset_name} dataset has {stats['pairs']} preference pair(s); the generative form learns from "
                "span rows only. Use model_form='token_head' (spans and pairs) or drop the pairs."
            )
        if dataset_name == "train" and args.center_rewards_coefficient is not None and not stats["pairs"]:
            raise ValueError(
                "center_rewards_coefficient acts on the rewards of preference pairs, and the train dataset has none."
            )
        if self.model_form == "token_head":
            dataset = self._count_token_head_rows(dataset, processing_class, args, stats)
        else:
            dataset = self._encode_generative_rows(dataset, processing_class, args, stats)
        self.data_stats[dataset_name] = dict(stats)
        logger.info("SpanRewardTrainer %s data: %s", dataset_name, dict(stats))
        if stats.get("quotes_unlocated") or stats.get("rows_truncated"):
            logger.warning(
                "%s dataset: %d quote(s) could not be located in their response (dropped from the span labels, rows "
                "kept) and %d row(s) exceed max_length=%s (truncated).",
                dataset_name,
                stats.get("quotes_unlocated", 0),
                stats.get("rows_truncated", 0),
                args.max_length,
            )
        return dataset

    @staticmethod
    def _count_token_head_rows(dataset: Dataset, tokenizer, args: SpanRewardConfig, stats: dict) -> Dataset:
        """Count unlocated quotes, rows without spans and overlong rows (the collator tokenizes on the fly)."""
        stats.update(quotes_unlocated=0, rows_without_spans=0, rows_truncated=0)
        for row in dataset:
            if row_kind(row) == "pair":
                prompt, chosen, rejected = split_preference_row(row)
                pieces = [(prompt, chosen), (prompt, rejected)]
            else:
                prompt = row["prompt"] if row.get("prompt") is not None else row.get("messages")
                pieces = [(prompt, row["response"])]
                critique, spans = row_critique(row)
                if spans is None and critique is not None and (critique.good or critique.poor):
                    located = locate_critique(row["response"], critique, fuzzy_threshold=args.fuzzy_threshold)
                    stats["quotes_unlocated"] += located.num_unlocated + located.empty_quotes
                    stats["rows_without_spans"] += int(located.num_located == 0)
                else:
                    stats["rows_without_spans"] += int(not spans)
            if args.max_length is not None:
                cut = False
                for prompt, response in pieces:
                    enc = encode_prompt_response(tokenizer, prompt, response, args.max_length)
                    cut |= enc["num_prompt_tokens_truncated"] > 0 or enc["num_response_tokens_truncated"] > 0
                stats["rows_truncated"] += int(cut)
        return dataset.select_columns([c for c in dataset.column_names if c in _KEPT_COLUMNS])

    @staticmethod
    def _encode_generative_rows(dataset: Dataset, tokenizer, args: SpanRewardConfig, stats: dict) -> Dataset:
        """Tokenize instruction → target; the raw columns stay (the span metrics score them)."""
        input_ids, labels = [], []
        for key in ("quotes_unlocated", "rows_truncated", "rows_without_spans", "critiques_cut"):
            stats[key] = 0
        for row in dataset:
            encoded = encode_generative_row(row, tokenizer, args)
            input_ids.append(encoded.pop("input_ids"))
            labels.append(encoded.pop("labels"))
            for key, value in encoded.items():
                stats[key] += value
        dataset = dataset.select_columns([c for c in dataset.column_names if c in _KEPT_COLUMNS])
        return dataset.add_column("input_ids", input_ids).add_column("labels", labels)

    # ------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------
    def _gather_sums(self, values: list[float]) -> list[float]:
        """Sum ``values`` over processes (every process calls this every step, so no collective is skipped)."""
        local = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.gather(local.unsqueeze(0)).sum(0).tolist()

    def _log_ratio(self, mode: str, name: str, numerator: float, denominator: float) -> None:
        if denominator > 0:
            self._metrics[mode][name].append(numerator / denominator)

    # The token head's span cross-entropy (+ critique LM loss) and Bradley–Terry loss on pairs, or the generative
    # target-only LM loss; a sequence classifier keeps RewardTrainer's loss and metrics.
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model_form == "sequence_classification":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        counters = [float(inputs.pop(key)) if key in inputs else 0.0 for key in COUNTER_KEYS]
        if self.model_form == "token_head":
            loss, outputs = self._token_head_loss(model, inputs, mode)
        else:
            loss, outputs = self._generative_loss(model, inputs, mode)
        for key, value in zip(COUNTER_KEYS, self._gather_sums(counters)):
            self._metrics[mode][key].append(value)
        if mode == "train":
            tokens = self._gather_sums([float(inputs["attention_mask"].sum())])[0]
            self._total_train_tokens += int(tokens) // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def _token_head_loss(self, model, inputs: dict, mode: str) -> tuple[torch.Tensor, Any]:
        head_mask = inputs.pop("head_mask")
        chosen_index, rejected_index = inputs.pop("chosen_index"), inputs.pop("rejected_index")
        margin = inputs.pop("margin")
        outputs = model(**inputs)
        loss = outputs.loss
        args = self.args
        with torch.no_grad():
            labels = inputs["span_labels"]
            labelled = labels != IGNORE_INDEX
            predicted = outputs.span_logits.argmax(-1)
            sums = [float((predicted[labelled] == labels[labelled]).sum()), float(labelled.sum())]
            for index in range(1, len(SPAN_LABEL_NAMES)):
                gold = labelled & (labels == index)
                sums += [float((predicted[gold] == index).sum()), float(gold.sum())]
            has_span = bool(labelled.any())
            sums += [float(outputs.span_loss) if has_span else 0.0, float(has_span)]
            has_critique = outputs.critique_loss is not None
            sums += [float(outputs.critique_loss) if has_critique else 0.0, float(has_critique)]
        rewards = None
        if chosen_index.numel():
            token_rewards = expected_token_rewards(outputs.span_logits, args.good_span_reward, args.poor_span_reward)
            rewards = sequence_rewards(token_rewards, head_mask)
            chosen, rejected = rewards[chosen_index], rewards[rejected_index]
            pair_loss = bradley_terry_loss(chosen, rejected, margin, args.center_rewards_coefficient)
            loss = loss + args.preference_loss_weight * pair_loss
        self._log_token_head_metrics(mode, sums, rewards, chosen_index, rejected_index)
        return loss, outputs

    def _log_token_head_metrics(self, mode, sums, rewards, chosen_index, rejected_index) -> None:
        """Span metrics, and ``RewardTrainer``'s pair metrics (accuracy, margin, min/mean/max reward)."""
        with torch.no_grad():
            if rewards is not None:
                chosen, rejected = rewards[chosen_index].float(), rewards[rejected_index].float()
                pairs = [float((chosen > rejected).sum()), float(chosen.numel()), float((chosen - rejected).sum())]
                pairs += [float(torch.cat([chosen, rejected]).sum()), float(-torch.cat([chosen, rejected]).min())]
                pairs += [float(torch.cat([chosen, rejected]).max())]
            else:
                pairs = [0.0, 0.0, 0.0, 0.0, float("-inf"), float("-inf")]
            local = torch.tensor(sums + pairs, dtype=torch.float64, device=self.accelerator.device).unsqueeze(0)
            gathered = self.accelerator.gather(local)
        totals = gathered[:, :-2].sum(0).tolist()
        extremes = gathered[:, -2:].max(0).values.tolist()
        metrics = self._metrics[mode]
        self._log_ratio(mode, "span_accuracy", totals[0], totals[1])
        for offset, name in enumerate(SPAN_LABEL_NAMES[1:]):
            self._log_ratio(mode, f"head_{name}_recall", totals[2 + 2 * offset], totals[3 + 2 * offset])
        self._log_ratio(mode, "span_loss", totals[6], totals[7])
        self._log_ratio(mode, "critique_loss", totals[8], totals[9])
        correct, num_pairs, margin_sum, reward_sum = totals[10:14]
        if num_pairs > 0:
            metrics["accuracy"].append(correct / num_pairs)
            metrics["margin"].append(margin_sum / num_pairs)
            metrics["mean_reward"].append(reward_sum / (2 * num_pairs))
            metrics["min_reward"].append(-extremes[0])
            metrics["max_reward"].append(extremes[1])

    def _generative_loss(self, model, inputs: dict, mode: str) -> tuple[torch.Tensor, Any]:
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=inputs["labels"],
            use_cache=False,
        )
        with torch.no_grad():
            targets = inputs["labels"][:, 1:]
            mask = targets != IGNORE_INDEX
            predicted = outputs.logits[:, :-1].argmax(-1)
            correct, total = self._gather_sums([float((predicted[mask] == targets[mask]).sum()), float(mask.sum())])
        self._log_ratio(mode, "mean_token_accuracy", correct, total)
        return outputs.loss, outputs

    # The span forms' outputs (per-token logits of varying layout) are not predictions for compute_metrics: the
    # evaluation loss only (their metrics come from compute_loss and from scoring the rows in evaluate).
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self.model_form == "sequence_classification":
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------------------------------------------------
    def span_reward_model(self, batch_size: int | None = None) -> SpanRewardModel:
        """The model being trained as a :class:`~trl_text2grad.reward.scoring.SpanRewardModel` (no copy)."""
        if self.model_form == "sequence_classification":
            raise ValueError("a sequence-classification reward model gives one score per sequence, not spans.")
        return SpanRewardModel(
            self.accelerator.unwrap_model(self.model),
            self.processing_class,
            self.span_config_dict(),
            batch_size=batch_size or self.args.per_device_eval_batch_size,
        )

    # RewardTrainer's evaluation (loss, pair accuracy), then the span metrics of the span rows, scored by the model.
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(
            eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )
        if self.model_form == "sequence_classification" or not self.args.eval_span_metrics:
            return metrics
        source = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(source, str) and isinstance(self.eval_dataset, dict):
            source = self.eval_dataset[source]
        if not isinstance(source, Dataset):  # a dict was evaluated name by name through this method
            return metrics
        rows = span_rows(source)
        if len(rows):
            span_metrics = self.compute_span_metrics(rows)
            span_metrics = {f"{metric_key_prefix}_{k}": v for k, v in span_metrics.items() if v is not None}
            metrics.update(span_metrics)
            self.log(span_metrics)
        return metrics

    def compute_span_metrics(self, dataset: Dataset, max_samples: int | None = -1) -> dict[str, float]:
        """Score ``dataset``'s span rows with the current model and compare to their annotations."""
        limit = self.args.eval_max_samples if max_samples == -1 else max_samples
        if limit is not None and len(dataset) > limit:
            dataset = dataset.select(range(limit))
        return evaluate_span_reward_model(self.span_reward_model(), dataset, fuzzy_threshold=self.args.fuzzy_threshold)

    # ------------------------------------------------------------------------------------------------------------
    # Saving / loading
    # ------------------------------------------------------------------------------------------------------------
    def span_config_dict(self) -> dict[str, Any]:
        """What ``SpanRewardModel.from_pretrained`` needs to rebuild and run the model (``span_reward_config.json``)."""
        return span_config_dict(self.accelerator.unwrap_model(self.model), self.model_form, self.args)

    # The span forms save in the layout SpanRewardModel.from_pretrained reads (adapter or backbone, span head,
    # span_reward_config.json, model card); a sequence classifier is saved as Trainer saves it.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.model_form == "sequence_classification":
            return super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        logger.info("Saving span reward model to %s", output_dir)
        model = self.accelerator.unwrap_model(self.model)
        save_span_reward_model(output_dir, model, self.processing_class, self.span_config_dict(), state_dict)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    # Resuming reads the token head's layout back (adapter or backbone weights, then the head); others: Trainer's.
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
