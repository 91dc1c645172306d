"""The task registry: task name -> :class:`~trl_text2grad.tasks.base.Task` (loader, critique template, defaults).

Recipes and the CLI name a task (``task: slf5k``); :func:`get_task` returns what that name means. Each task module
owns its specifics (row formatting, critique template); this module only lists them. A project of your own can add
a task with :func:`register_task`.
"""

from __future__ import annotations

from ..critics.prompts import get_template
from . import constrained_text, humaneval, kodcode, simple_code, slf5k, ultrafeedback
from ._hub import load_rows
from .base import Task

__all__ = ["TASKS", "get_task", "register_task", "load_custom"]


def load_custom(split: str = "train", dataset_name: str | None = None, dataset_config: str | None = None):
    """Rows of a local ``.jsonl``/``.json``/``.parquet`` file (or a hub data set) that already has a ``prompt``
    column (a string or chat messages); every other column reaches the critic / reward function as context."""
    if not dataset_name:
        raise ValueError(
            "task 'custom' needs dataset_name: a .jsonl/.json/.parquet file (or a hub data set) with a 'prompt' column."
        )
    dataset = load_rows(dataset_name, split, dataset_config)
    if "prompt" not in dataset.column_names:
        raise ValueError(f"{dataset_name!r} has no 'prompt' column (columns: {dataset.column_names}).")
    return dataset


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
