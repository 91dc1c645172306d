"""Helpers shared by the ``trl-text2grad`` subcommands (``annotate``, ``reward``, ``ppo``, ``demo``).

Each subcommand module has ``main(argv=None)`` and runs as ``python -m trl_text2grad.cli.<name>`` or
``accelerate launch -m trl_text2grad.cli.<name> --config recipe.yaml``. Arguments are parsed with
:class:`trl.TrlParser` (YAML ``--config`` + command-line overrides) as TRL's own example scripts do.

This module holds what the scripts share: resolving the default model, loading a task's data set by name, and
building the reward function (critic or span reward model) that a recipe names.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, set_seed

from ..checkpoints import parse_resume_argument
from ..critics import OpenAICompatibleCritic, TransformersCritic, UnitTestCritic
from ..models import default_model_path
from ..reward import SpanRewardModel
from ..reward.modeling import SPAN_REWARD_CONFIG_NAME
from ..rewards import UnitTestReward
from ..tasks.registry import TASKS, get_task

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_ALIASES",
    "TASKS",
    "CRITICS",
    "resolve_model_path",
    "load_tokenizer",
    "load_task_dataset",
    "critic_template",
    "load_reward_function",
    "build_reward_function",
    "train_and_save",
    "main_from_argv",
]

#: Values of ``model_name_or_path`` that mean the packaged SmolLM2-135M-Instruct (see ``trl_text2grad.models``).
DEFAULT_MODEL_ALIASES = frozenset({"", "default", "smollm2", "smollm2-135m-instruct"})

#: Reward sources for PPO: ``unit_tests`` (sandbox), ``openai`` (OpenAI-compatible server), ``transformers`` (local
#: critic model), ``reward_model`` (a span reward model trained with ``trl-text2grad reward``). A Python reward
#: function of your own is given with ``reward_function`` instead (see :func:`load_reward_function`).
CRITICS = ("unit_tests", "openai", "transformers", "reward_model")


def resolve_model_path(name_or_path: str | None) -> str:
    """``None``/``"default"``/``"smollm2"`` → the cached SmolLM2-135M-Instruct checkpoint; anything else unchanged."""
    if name_or_path is None or str(name_or_path).strip().lower() in DEFAULT_MODEL_ALIASES:
        return default_model_path()
    return str(name_or_path)


def load_tokenizer(
    name_or_path: str, padding_side: str = "left", revision: str | None = None, trust_remote_code=False
):
    """A fast tokenizer with a pad token (falls back to EOS) and the requested padding side."""
    tokenizer = AutoTokenizer.from_pretrained(
        name_or_path, padding_side=padding_side, revision=revision, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"The tokenizer of {name_or_path!r} has neither a pad nor an EOS token; add one.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_task_dataset(
    task: str,
    split: str = "train",
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    max_samples: int | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
):
    """Rows of ``task`` in the project schema: ``prompt`` (chat messages) + ``response`` + task context columns.

    * ``humaneval``: the bundled problems split by problem (``split`` is ``train`` or ``test``), with the chat
      prompt of the demo and the context the unit-test critic needs (``problem``, ``test``, ``entry_point``).
    * ``slf5k`` / ``kodcode`` / ``ultrafeedback``: the hub data sets (or a local file with their columns passed as
      ``dataset_name``), see ``trl_text2grad.tasks``.
    * ``custom``: ``dataset_name`` is a local ``.jsonl``/``.json`` file or a hub data set that already has a
      ``prompt`` column (string or chat messages); other columns are passed to the critic as context.
    """
    spec = get_task(task)
    if task == "humaneval":
        dataset = spec.load(split, dataset_name, dataset_config, test_fraction=test_fraction, split_seed=split_seed)
    else:
        dataset = spec.load(split, dataset_name or spec.dataset_name, dataset_config)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def critic_template(task: str):
    """The critique prompt template of ``task``."""
    return get_task(task).critic_template


def _import_module_from_file(path: Path):
    """Import the Python file ``path`` as a module (its folder is put on ``sys.path`` for its own imports)."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"_trl_text2grad_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {str(path)!r} as a Python module")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module_from_cwd(target: str, spec: str):
    """``importlib.import_module(target)``, retried with the current directory on ``sys.path``."""
    parts = target.split(".")
    own = {".".join(parts[: i + 1]) for i in range(len(parts))}
    for attempt in range(2):
        try:
            return importlib.import_module(target)
        except ModuleNotFoundError as err:
            if err.name not in own:  # the user's module imports something missing: that error says it best
                raise
            if attempt == 0 and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # as `python -m` does: a module in the current directory
                continue
            raise ImportError(
                f"reward_function {spec!r}: no module named {target!r} (looked on sys.path and in the current "
                f"directory {os.getcwd()!r}); install it, add its folder to PYTHONPATH, or pass "
                "path/to/file.py:function."
            ) from err
    raise AssertionError("unreachable")  # pragma: no cover


def load_reward_function(spec: str) -> Callable[..., list[Any]]:
    """The Python reward function named by ``spec``: ``"package.module:function"`` or ``"path/to/file.py:function"``.

    The contract of the callable (:mod:`trl_text2grad.rewards`): ``fn(prompts, completions, **context) -> list`` with
    one entry per completion: a number, a :class:`~trl_text2grad.Critique`, ``(start, end, score)`` character spans,
    an annotation dict, or ``None`` when it cannot judge that completion. ``context`` holds the data set's other
    columns, one list each. When the attribute is a class, it is instantiated with no arguments and the instance is
    the reward function. A module name is imported with the current directory on ``sys.path`` (as ``python -m``
    does), so ``my_rewards:score`` finds ``./my_rewards.py``.

    Raises:
        ValueError: ``spec`` has no ``:function`` part, or names something that is not callable.
        FileNotFoundError: the file of ``path/to/file.py:function`` does not exist.
        ImportError: the module cannot be imported (the message names it and ``spec``).
    """
    target, sep, attribute = str(spec).strip().rpartition(":")
    if not sep or not target or not attribute.isidentifier():
        raise ValueError(
            f"reward_function {spec!r}: expected 'module:function' or 'path/to/file.py:function' "
            "(e.g. --reward_function my_rewards:score)."
        )
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"file not found: {target!r} (from reward_function {spec!r}).")
        module = _import_module_from_file(path)
    else:
        module = _import_module_from_cwd(target, spec)
    if not hasattr(module, attribute):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ValueError(f"reward_function {spec!r}: {target!r} has no attribute {attribute!r} (callables: {public}).")
    function = getattr(module, attribute)
    if inspect.isclass(function):
        function = function()
    if not callable(function):
        raise ValueError(f"reward_function {spec!r}: {attribute!r} is a {type(function).__name__}, not a callable.")
    return function


def build_reward_function(
    critic: str,
    task: str,
    *,
    critic_model: str | None = None,
    critic_base_url: str | None = None,
    critic_api_key_env: str = "OPENAI_API_KEY",
    reward_model_path: str | None = None,
    sandbox_timeout: float = 10.0,
    max_new_tokens: int = 512,
    reward_function: str | None = None,
) -> Callable[..., list[Any]]:
    """The ``reward_model`` callable for ``SpanPPOTrainer``: ``(prompts, responses, **context) -> list[Critique|spans]``.

    ``reward_function`` (``"module:function"`` or ``"file.py:function"``, see :func:`load_reward_function`) wins
    over ``critic``. ``unit_tests`` on HumanEval rows runs the raw problem prompt + code against the tests in the
    sandbox and returns the critic's exact character spans; LLM critics get the task's critique template;
    ``reward_model`` loads the folder ``reward_model_path`` written by ``trl-text2grad reward`` (required: there is
    no default model).
    """
    if reward_function:
        return load_reward_function(reward_function)
    if critic not in CRITICS:
        raise ValueError(
            f"Unknown critic {critic!r}; choose one of {CRITICS}, or pass reward_function=module:function for a "
            "Python reward function of your own."
        )
    if critic == "unit_tests":
        return UnitTestReward(UnitTestCritic(timeout=sandbox_timeout))
    if critic == "reward_model":
        if not reward_model_path:
            raise ValueError(
                "critic 'reward_model' needs reward_model_path: the output_dir of `trl-text2grad reward` "
                "(e.g. --reward_model_path runs/slf5k-reward); there is no default reward model."
            )
        if not (Path(reward_model_path).expanduser() / SPAN_REWARD_CONFIG_NAME).is_file():
            folder = Path(reward_model_path).expanduser()
            what = f"has no {SPAN_REWARD_CONFIG_NAME}" if folder.exists() else "does not exist"
            raise FileNotFoundError(
                f"file not found: reward_model_path {reward_model_path!r} {what}; it must be the output_dir of "
                "`trl-text2grad reward` (run that step first)."
            )
        return SpanRewardModel.from_pretrained(reward_model_path)
    template = critic_template(task)
    if critic == "openai":
        if not critic_model:
            raise ValueError("critic 'openai' needs critic_model: the model name as the server knows it.")
        return OpenAICompatibleCritic(
            model=critic_model,
            base_url=critic_base_url,
            api_key_env=critic_api_key_env,
            template=template,
            max_tokens=max_new_tokens,
        )
    return TransformersCritic(model=critic_model or None, template=template, max_new_tokens=max_new_tokens)


def train_and_save(trainer, training_args, evaluate: bool, done_message: str):
    """The end of every training script: train (resuming if asked), save to ``output_dir``, run a final
    ``evaluate()`` when there is an evaluation set (metrics logged and saved as ``eval_results.json``), and print
    ``done_message`` on the main process. Returns the trainer.

    ``--resume_from_checkpoint true`` (or ``latest``) resumes from the newest *complete* checkpoint in ``output_dir``
    (newer incomplete ones are skipped with a warning); any other value is the path of a checkpoint folder, which
    must be complete; ``false``/``none`` (or leaving it out) starts afresh."""
    trainer.train(resume_from_checkpoint=parse_resume_argument(training_args.resume_from_checkpoint))
    trainer.save_model(training_args.output_dir)
    if evaluate:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.accelerator.is_main_process:
        print(done_message)
    return trainer


def main_from_argv(make_parser: Callable, run: Callable, argv=None) -> int:
    """Entry point of a training script: parse ``--config recipe.yaml`` + overrides with the script's ``TrlParser``,
    set up logging, and ``run(script_args, training_args, model_args)``."""
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        args=list(argv) if argv is not None else None
    )
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)  # before the script loads any model (the same seed gives the same run)
    try:
        run(script_args, training_args, model_args)
    finally:
        # a gloo process group still alive at interpreter exit can abort the process after a successful run
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
