"""``trl-text2grad reward``: train a span reward model (:class:`~trl_text2grad.SpanRewardTrainer`) from a recipe.

Usage::

    trl-text2grad annotate --config recipes/slf5k/annotate.yaml          # writes annotations.jsonl
    trl-text2grad reward --config recipes/slf5k/reward.yaml              # trains on it
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m trl_text2grad.cli.reward \\
        --config recipes/slf5k/reward.yaml

Arguments are three dataclasses parsed by :class:`trl.TrlParser`: :class:`RewardScriptArguments` (the annotated
data), :class:`~trl_text2grad.SpanRewardConfig` (training, model form) and :class:`trl.ModelConfig` (backbone,
dtype, LoRA, quantization). The model is saved in the layout ``SpanRewardModel.from_pretrained`` reads, so the
folder can be passed to ``trl-text2grad ppo --critic reward_model --reward_model_path <output_dir>``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from datasets import Dataset
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from ..reward import SpanRewardConfig, SpanRewardTrainer
from ..tasks._hub import load_rows
from ..tasks.humaneval import split_by_problem
from .common import load_tokenizer, main_from_argv, resolve_model_path, train_and_save

__all__ = ["RewardScriptArguments", "make_parser", "run", "main"]

logger = logging.getLogger(__name__)


@dataclass
class RewardScriptArguments(ScriptArguments):
    """The annotated data of a span reward model run (fields of :class:`trl.ScriptArguments` included).

    ``dataset_name`` is the output of ``trl-text2grad annotate`` (a ``.jsonl`` file) or a hub data set with the
    annotation schema: ``prompt``, ``response``, ``critique``, ``good_spans``, ``poor_spans`` (``located_spans``
    optional).

    Args:
        eval_fraction: Hold out this fraction of the rows for evaluation (``0``: no evaluation). Rows are split by
            ``group_column`` when the data has it (no problem/prompt in both splits).
        group_column: Column that identifies a problem (``task_id`` for HumanEval, ``id`` for SLF5K, …); when it
            is missing the split is by ``prompt``.
        split_seed: Seed of the evaluation split.
        max_train_samples: Use only the first N rows.
    """

    eval_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of rows held out for evaluation (0 = none)."}
    )
    group_column: str = field(
        default="task_id", metadata={"help": "Problem id column for the split (falls back to 'prompt')."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the evaluation split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})


def make_parser():
    """The :class:`trl.TrlParser` of this script: (RewardScriptArguments, SpanRewardConfig, ModelConfig)."""
    return TrlParser((RewardScriptArguments, SpanRewardConfig, ModelConfig), prog="trl-text2grad reward")


def load_annotations(script_args: RewardScriptArguments):
    """(train, eval or None) annotated rows as ``datasets.Dataset``."""
    if not script_args.dataset_name:
        raise ValueError(
            "dataset_name is required: the .jsonl written by `trl-text2grad annotate` (or a hub data set with the "
            "annotation schema)."
        )
    dataset = load_rows(
        script_args.dataset_name,
        script_args.dataset_train_split,
        script_args.dataset_config,
        produced_by="`trl-text2grad annotate`",
    )
    # chat prompts were written as JSON lists; keep them as lists of messages
    if "prompt" in dataset.column_names and len(dataset) and isinstance(dataset[0]["prompt"], str):
        first = dataset[0]["prompt"].lstrip()
        if first.startswith("[{"):
            dataset = Dataset.from_list([{**r, "prompt": json.loads(r["prompt"])} for r in dataset])
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    if not script_args.eval_fraction or len(dataset) < 2:
        return dataset, None
    key = script_args.group_column if script_args.group_column in dataset.column_names else None
    if key is None:
        dataset = dataset.add_column("_group", [json.dumps(p, sort_keys=True) for p in dataset["prompt"]])
        key = "_group"
    parts = split_by_problem(dataset, test_fraction=script_args.eval_fraction, seed=script_args.split_seed, key=key)
    train, evaluation = parts["train"], parts["test"]
    if key == "_group":
        train, evaluation = train.remove_columns("_group"), evaluation.remove_columns("_group")
    if len(train) == 0:
        raise ValueError("eval_fraction left no training rows; lower it or add rows.")
    return train, (evaluation if len(evaluation) else None)


def run(script_args: RewardScriptArguments, training_args, model_args):
    """Train (and evaluate) as configured; returns the trainer after ``save_model()``."""
    path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(
        path,
        padding_side="right",
        revision=model_args.model_revision,
        trust_remote_code=getattr(training_args, "trust_remote_code", False),
    )
    init_kwargs = dict(training_args.model_init_kwargs or {})
    if model_args.dtype not in (None, "auto"):
        import torch

        init_kwargs.setdefault("dtype", getattr(torch, model_args.dtype))
    if model_args.attn_implementation:
        init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    training_args.model_init_kwargs = init_kwargs or None
    train, evaluation = load_annotations(script_args)
    if (
        evaluation is None
        and training_args.eval_strategy not in ("no", None)
        and str(training_args.eval_strategy) != "IntervalStrategy.NO"
    ):
        training_args.eval_strategy = "no"
    trainer = SpanRewardTrainer(
        model=path,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    return train_and_save(
        trainer, training_args, evaluation is not None, f"span reward model saved to {training_args.output_dir}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``--config recipe.yaml`` + overrides with ``TrlParser`` and train."""
    return main_from_argv(make_parser, run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
