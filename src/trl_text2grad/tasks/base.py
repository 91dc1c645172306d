"""What a task is: a named way to load prompt rows and the critique template its LLM critics use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..critics.prompts import CritiqueTemplate

__all__ = ["Task"]


@dataclass(frozen=True)
class Task:
    """A task of the registry (:mod:`trl_text2grad.tasks.registry`).

    Args:
        name: The name recipes and the CLI use (``task: slf5k``).
        load: ``load(split, dataset_name, dataset_config, **options) -> datasets.Dataset`` in the project's row
            schema: ``prompt`` (a string or chat messages), optionally ``response``, plus the task's context
            columns, which critics and reward functions receive per sample.
        critic_template: The critique prompt of LLM critics for this task.
        default_split: The split annotation uses when none is given.
        dataset_name: The hub data set the task loads by default (``None``: packaged or user-given data).
        description: One line for ``--help`` texts and docs.
        critic_factory: Builds the task's programmatic critic (no arguments), for tasks whose responses a program
            can judge; ``None`` otherwise (the task is judged by an LLM critic with ``critic_template``).
    """

    name: str
    load: Callable[..., Any]
    critic_template: CritiqueTemplate
    default_split: str = "train"
    dataset_name: str | None = None
    description: str = ""
    critic_factory: Callable[[], Any] | None = None
