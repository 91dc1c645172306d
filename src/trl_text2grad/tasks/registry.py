"""The task registry: task name -> :class:`~trl_text2grad.tasks.base.Task` (loader, critique template, defaults).

Recipes and the CLI name a task (``task: slf5k``); :func:`get_task` returns what that name means. Each task module
owns its specifics (row formatting, critique template); this module only lists them. A project of your own can add
a task with :func:`register_task`.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from ..critics.prompts import get_template
from . import constrained_text, humaneval, kodcode, simple_code, slf5k, ultrafeedback
from ._hub import load_rows, looks_like_local_path
from .base import Task

__all__ = ["TASKS", "get_task", "register_task", "load_custom", "TaskSource", "parse_task_source"]

logger = logging.getLogger(__name__)


def _has_prompt(prompt) -> bool:
    if isinstance(prompt, str):
        return bool(prompt.strip())
    return isinstance(prompt, list) and bool(prompt)


def load_custom(split: str = "train", dataset_name: str | None = None, dataset_config: str | None = None):
    """Rows of a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file (or a hub data set) that already has a
    ``prompt`` column (a string or chat messages); every other column reaches the critic / reward function as
    context. Rows whose prompt is empty or missing are dropped, counted and logged; a file without any usable
    prompt is an error."""
    if not dataset_name:
        raise ValueError(
            "task 'custom' needs dataset_name: a .jsonl/.json/.parquet file (or a hub data set) with a 'prompt' column."
        )
    dataset = load_rows(dataset_name, split, dataset_config)
    if "prompt" not in dataset.column_names:
        raise ValueError(f"{dataset_name!r} has no 'prompt' column (columns: {dataset.column_names}).")
    keep = [i for i, prompt in enumerate(dataset["prompt"]) if _has_prompt(prompt)]
    if not keep:
        raise ValueError(f"{dataset_name!r}: none of its {len(dataset)} rows has a non-empty 'prompt'.")
    if len(keep) < len(dataset):
        logger.warning("%s: dropped %d rows with an empty 'prompt'", dataset_name, len(dataset) - len(keep))
        dataset = dataset.select(keep)
    return dataset


class TaskSource(NamedTuple):
    """Where a task's rows come from: the task name, the split and, optionally, a local file with the hub's columns
    (``None``: the task's own data set)."""

    task: str
    split: str
    dataset_name: str | None = None


def parse_task_source(source: str) -> TaskSource | None:
    """Read ``<task>``, ``<task>:<split>``, ``<task>:<file>`` or ``<task>:<split>:<file>`` (a registered task name);
    ``None`` when ``source`` does not start with a registered task name (then it is a plain file).

    ``<file>`` is a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file with the columns of the task's hub data set
    (e.g. ``slf5k:/data/slf5k_train.jsonl``); a missing file raises ``FileNotFoundError`` when the rows are loaded.
    """
    name, sep, rest = str(source).partition(":")
    if name.lower() not in TASKS:
        return None
    task = TASKS[name.lower()]
    split, dataset_name = task.default_split, None
    if rest:
        head, sep2, tail = rest.partition(":")
        if sep2 and not looks_like_local_path(head) and tail:
            split, dataset_name = head, tail
        elif looks_like_local_path(rest):
            dataset_name = rest
        else:
            split = rest
    return TaskSource(task.name, split, dataset_name)


TASKS: dict[str, Task] = {}


def register_task(task: Task, overwrite: bool = False) -> Task:
    """Add ``task`` to the registry under ``task.name`` (``overwrite=True`` to replace an existing one)."""
    if task.name in TASKS and not overwrite:
        raise ValueError(f"a task named {task.name!r} is already registered; pass overwrite=True to replace it.")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``; a clear error listing the known names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"Unknown task {name!r}; choose one of {sorted(TASKS)}.") from None


register_task(
    Task(
        "humaneval",
        humaneval.load_task_rows,
        get_template("code"),
        default_split="train",
        description="HumanEval (packaged): chat prompts + unit tests, split by problem into train/test.",
    )
)
register_task(
    Task("slf5k", slf5k.load, slf5k.CRITIC_TEMPLATE, "train", slf5k.DATASET_NAME, "SLF5K Reddit TL;DR summaries.")
)
register_task(
    Task("kodcode", kodcode.load, kodcode.CRITIC_TEMPLATE, "train", kodcode.DATASET_NAME, "KodCode-Light-RL-10K.")
)
register_task(
    Task(
        "ultrafeedback",
        ultrafeedback.load,
        ultrafeedback.CRITIC_TEMPLATE,
        "train_prefs",
        ultrafeedback.DATASET_NAME,
        "UltraFeedback-binarized chat answers.",
    )
)
register_task(
    Task(
        "constrained_text",
        constrained_text.load,
        constrained_text.CRITIC_TEMPLATE,
        description="Generated one-sentence descriptions under word constraints, judged by a program.",
        critic_factory=constrained_text.ConstrainedTextCritic,
    )
)
register_task(
    Task(
        "simple_code",
        simple_code.load,
        simple_code.CRITIC_TEMPLATE,
        description="Generated easy Python problems, judged by their unit tests in the sandbox.",
        critic_factory=simple_code.SimpleCodeCritic,
    )
)
register_task(Task("custom", load_custom, get_template("qa"), "train", None, "Your own rows with a 'prompt' column."))
