"""``trl-text2grad ppo``: span-level PPO (:class:`~trl_text2grad.SpanPPOTrainer`) from a recipe.

Usage::

    trl-text2grad ppo --config recipes/humaneval_smollm2/ppo.yaml
    trl-text2grad ppo --task custom --dataset_name rows.jsonl --reward_function my_rewards:score \\
        --output_dir runs/mine --bf16 false
    accelerate launch --config_file recipes/accelerate/multi_cpu.yaml -m trl_text2grad.cli.ppo \\
        --config recipes/humaneval_smollm2/ppo.yaml --total_episodes 64 --use_cpu true
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m trl_text2grad.cli.ppo \\
        --config recipes/slf5k/ppo.yaml --reward_model_path runs/slf5k-reward

Arguments are three dataclasses parsed by :class:`trl.TrlParser`, as in TRL's example scripts:
:class:`PPOScriptArguments` (data and reward source), :class:`~trl_text2grad.SpanPPOConfig` (training) and
:class:`trl.ModelConfig` (policy checkpoint, dtype, LoRA, quantization).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from ..ppo import SpanPPOConfig, SpanPPOTrainer
from .common import (
    build_reward_function,
    load_task_dataset,
    load_tokenizer,
    main_from_argv,
    resolve_model_path,
    train_and_save,
)

__all__ = [
    "PPOScriptArguments",
    "make_parser",
    "given_reward_model_path",
    "load_policy",
    "prompt_datasets",
    "reward_source",
    "run",
    "main",
]

logger = logging.getLogger(__name__)


@dataclass
class PPOScriptArguments(ScriptArguments):
    """Data and reward source of a span-PPO run (fields of :class:`trl.ScriptArguments` included).

    Args:
        task: ``humaneval`` (bundled, offline), ``slf5k``, ``kodcode``, ``ultrafeedback`` (hub data sets) or
            ``custom`` (``dataset_name``: a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file with a ``prompt``
            column).
        dataset_name: Overrides the task's data set: a hub name, or a local ``.jsonl``/``.json``/``.parquet``/``.csv``
            file with the same columns (HumanEval: a ``HumanEval.jsonl.gz``-style file). A local path that does not
            exist is a "file not found" error.
        max_train_samples: Use only the first N prompts.
        max_eval_samples: Prompts of ``dataset_test_split`` to evaluate on (first N). ``None`` (default): no
            evaluation set, unless ``eval_strategy`` is not ``"no"``, in which case the whole split is used. With an
            evaluation set the trainer writes sample-completion tables (``num_sample_generations``), evaluates at
            ``eval_strategy``'s cadence, and the script runs a final ``evaluate()`` and saves ``eval_results.json``.
        test_fraction: HumanEval: fraction of problems held out (split by problem).
        split_seed: HumanEval: seed of the problem split.
        reward_function: Your own Python reward function, ``module:function`` (importable; the current directory
            is searched) or ``path/to/file.py:function``, with the contract of :mod:`trl_text2grad.rewards`:
            ``fn(prompts, completions, **context) -> list[float | Critique | spans | dict | None]``. When set, it is
            the reward source and ``critic`` is ignored.
        critic: Reward source when ``reward_function`` is not set: ``unit_tests`` (sandboxed tests, HumanEval),
            ``reward_model`` (a span reward model trained with ``trl-text2grad reward``, at ``--reward_model_path``,
            which is then required), ``openai`` (an OpenAI-compatible server) or ``transformers`` (a local critic
            model).
        critic_model: Model name on the server (``openai``) or checkpoint path (``transformers``).
        critic_base_url: Root of the OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        critic_api_key_env: Environment variable holding the critic's API key (never put the key in a recipe).
        critic_max_new_tokens: Maximum tokens of an LLM critic's answer.
        sandbox_timeout: Seconds per sandboxed program (``unit_tests``).
    """

    task: str = field(
        default="humaneval",
        metadata={"help": "humaneval | slf5k | kodcode | ultrafeedback | custom (dataset_name with a prompt column)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate on the first N prompts of dataset_test_split (default: none, or all of it when "
                  "eval_strategy is not 'no')."},
    )  # fmt: skip
    test_fraction: float = field(default=0.2, metadata={"help": "HumanEval: fraction of problems held out."})
    split_seed: int = field(default=0, metadata={"help": "HumanEval: seed of the split by problem."})
    reward_function: str | None = field(
        default=None,
        metadata={"help": "Your Python reward function: module:function or path/to/file.py:function (overrides "
                  "critic); called as fn(prompts, completions, **columns)."},
    )  # fmt: skip
    critic: str = field(
        default="unit_tests",
        metadata={"help": "unit_tests | reward_model (needs --reward_model_path) | openai | transformers."},
    )
    critic_model: str | None = field(
        default=None, metadata={"help": "Critic model name (openai) or checkpoint path (transformers)."}
    )
    critic_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint root (.../v1)."})
    critic_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Env var holding the critic's API key."}
    )
    critic_max_new_tokens: int = field(default=512, metadata={"help": "Maximum tokens of an LLM critic's answer."})
    sandbox_timeout: float = field(default=10.0, metadata={"help": "Seconds per sandboxed program (unit_tests)."})


def make_parser():
    """The :class:`trl.TrlParser` of this script: (PPOScriptArguments, SpanPPOConfig, ModelConfig)."""
    return TrlParser((PPOScriptArguments, SpanPPOConfig, ModelConfig), prog="trl-text2grad ppo")


def _dtype(name):
    if name in (None, "auto"):
        return name
    if not hasattr(torch, str(name)):
        raise ValueError(f"Unknown dtype {name!r}; use auto, float32, bfloat16 or float16.")
    return getattr(torch, str(name))


def _kbit_device_map() -> dict[str, str | int]:
    """Where each process loads a 4-bit/8-bit policy: its own accelerator (``cuda:<local rank>``...) or the CPU."""
    device = PartialState().device
    return {"": "cpu"} if device.type == "cpu" else {"": str(device)}


def load_policy(model_args, training_args):
    """Policy model and tokenizer from a :class:`trl.ModelConfig` (``default`` = packaged SmolLM2).

    ``--load_in_4bit`` (nf4 by default, compute dtype ``--dtype``) or ``--load_in_8bit`` loads the policy quantized
    with bitsandbytes on each process's device (the CPU included); quantized weights cannot be trained, so this needs
    ``--use_peft`` (QLoRA: LoRA adapters on the frozen quantized base; the reference policy is the same model with
    its adapters disabled, so no second copy is loaded).
    """
    quantized = bool(getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False))
    if quantized and not getattr(model_args, "use_peft", False):
        raise ValueError(
            "--load_in_4bit/--load_in_8bit need --use_peft: quantized weights cannot be trained, only LoRA adapters "
            "on them (QLoRA). Add --use_peft (and e.g. --lora_target_modules all-linear)."
        )
    path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(
        path, revision=model_args.model_revision, trust_remote_code=getattr(training_args, "trust_remote_code", False)
    )
    quantization_config = get_quantization_config(model_args)
    kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=_dtype(model_args.dtype),
        trust_remote_code=getattr(training_args, "trust_remote_code", False),
    )
    if quantization_config is not None:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "--load_in_4bit/--load_in_8bit need bitsandbytes: pip install 'trl-text2grad[quantization]'."
            ) from error
        kwargs.update(quantization_config=quantization_config, device_map=_kbit_device_map())
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def given_reward_model_path(training_args) -> str | None:
    """``reward_model_path`` as the user gave it: ``None`` when it is still ``SpanPPOConfig``'s TRL-compatible
    placeholder default (a hub id that is not a span reward model), so that a forgotten path is a clear error."""
    default = next(f.default for f in fields(SpanPPOConfig) if f.name == "reward_model_path")
    value = getattr(training_args, "reward_model_path", None)
    return None if not value or value == default else value


def reward_source(script_args: PPOScriptArguments, reward_model_path: str | None):
    """The reward function a script's arguments name (``--reward_function`` wins over ``--critic``)."""
    if script_args.reward_function and script_args.critic != "unit_tests":
        logger.warning("reward_function %r is the reward source; critic %r is ignored.",
                       script_args.reward_function, script_args.critic)  # fmt: skip
    return build_reward_function(
        script_args.critic,
        script_args.task,
        critic_model=script_args.critic_model,
        critic_base_url=script_args.critic_base_url,
        critic_api_key_env=script_args.critic_api_key_env,
        reward_model_path=reward_model_path,
        sandbox_timeout=script_args.sandbox_timeout,
        max_new_tokens=script_args.critic_max_new_tokens,
        reward_function=script_args.reward_function,
    )


def prompt_datasets(script_args: PPOScriptArguments, training_args):
    """``(train, eval or None)`` prompt rows of the task; an existing ``response`` column is dropped (the trainer
    samples its own) and the eval split is loaded only when evaluation is asked for."""

    def prompts(split: str, max_samples: int | None):
        dataset = load_task_dataset(
            script_args.task,
            split,
            dataset_name=script_args.dataset_name,
            dataset_config=script_args.dataset_config,
            max_samples=max_samples,
            test_fraction=script_args.test_fraction,
            split_seed=script_args.split_seed,
        )
        if "response" in dataset.column_names:
            dataset = dataset.remove_columns("response")
        return dataset

    train_dataset = prompts(script_args.dataset_train_split, script_args.max_train_samples)
    wants_eval = str(getattr(training_args, "eval_strategy", "no")).lower() not in ("no", "intervalstrategy.no")
    if script_args.max_eval_samples is not None and script_args.max_eval_samples < 0:
        raise ValueError(f"max_eval_samples must be >= 0, got {script_args.max_eval_samples}.")
    eval_dataset = None
    if (script_args.max_eval_samples or 0) > 0 or wants_eval:
        eval_dataset = prompts(script_args.dataset_test_split, script_args.max_eval_samples)
    return train_dataset, eval_dataset


def run(script_args: PPOScriptArguments, training_args, model_args):
    """Train as configured; returns the trainer (after ``train()`` and ``save_model()``)."""
    reward = reward_source(script_args, given_reward_model_path(training_args))  # fails before the policy loads
    model, tokenizer = load_policy(model_args, training_args)
    train_dataset, eval_dataset = prompt_datasets(script_args, training_args)
    trainer = SpanPPOTrainer(
        args=training_args,
        processing_class=tokenizer,
        model=model,
        ref_model=None,
        reward_model=reward,
        train_dataset=train_dataset,
        value_model=None,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    return train_and_save(
        trainer,
        training_args,
        eval_dataset is not None,
        f"span PPO finished: policy saved to {training_args.output_dir}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``--config recipe.yaml`` + overrides with ``TrlParser`` and train."""
    return main_from_argv(make_parser, run, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
