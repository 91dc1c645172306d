"""Shared parts of the offline tasks whose critic is a program (:mod:`.constrained_text`, :mod:`.simple_code`).

Such a task generates its prompt rows itself (no data set to download) and judges a response with a deterministic
program. One verdict is a :class:`Judgement`:

- ``spans``: character spans ``(start, end, score)`` of the response (+1 good, -1 poor), the per-token reward of
  span PPO;
- ``critique``: the same verdict as a :class:`~trl_text2grad.spans.Critique` whose quotes are the span texts (what
  an annotation stores and a span reward model learns from);
- ``scalar``: the verdict collapsed to one number, the **normalised sum of span scores**
  ``sum(scores) / number of spans`` (in [-1, 1]; 0 when nothing is marked), the reward of a scalar arm;
- ``success``: the task metric (1.0 / 0.0);
- ``details``: per-criterion flags (1.0 / 0.0) for logging.

:class:`JudgingCritic` turns a task's ``judge`` into the critic protocol (``critique(prompts, responses,
**context)``), so the programmatic critic can annotate rows or reward PPO like any other critic.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..critics.base import BaseCritic, check_batch
from ..spans import Critique

__all__ = [
    "Span",
    "Judgement",
    "JudgingCritic",
    "collapse_to_scalar",
    "critique_from_spans",
    "seeded_cycle",
    "split_items",
    "SPLITS",
]

Span = tuple[int, int, float]

#: The splits of a generated task: ``all`` items, or a fixed partition of them into ``train`` and ``test``.
SPLITS = ("train", "test", "all")


def collapse_to_scalar(spans: Sequence[Span]) -> float:
    """The scalar form of a verdict: ``sum(score) / len(spans)``, 0.0 when there are no spans."""
    if not spans:
        return 0.0
    return float(sum(score for _, _, score in spans) / len(spans))


def critique_from_spans(response: str, spans: Sequence[Span], text: str) -> Critique:
    """A critique whose good/poor quotes are the texts of the positive/negative ``spans`` of ``response``."""
    good = [response[s:e] for s, e, score in spans if score > 0]
    poor = [response[s:e] for s, e, score in spans if score < 0]
    return Critique(text=text, good=good, poor=poor)


@dataclass
class Judgement:
    """One programmatic verdict on one response (see the module docstring).

    Args:
        spans: Character spans ``(start, end, score)`` into the response (good +1, poor -1).
        critique: The same verdict as a critique whose quotes are the span texts.
        success: Task metric (1.0 when the response satisfies the task, else 0.0).
        details: Per-criterion flags for logging (e.g. ``{"forbidden_free": 1.0}``).
    """

    spans: list[Span]
    critique: Critique
    success: float
    details: dict[str, float] = field(default_factory=dict)

    @property
    def scalar(self) -> float:
        """The normalised sum of span scores (:func:`collapse_to_scalar`)."""
        return collapse_to_scalar(self.spans)


class JudgingCritic(BaseCritic):
    """Base of programmatic task critics: subclasses implement :meth:`judge`; :meth:`critique` follows the critic
    protocol and keeps the exact verdicts of the last call in ``last_judgements`` / ``last_spans``."""

    def __init__(self) -> None:
        super().__init__()
        self.last_judgements: list[Judgement] = []
        self.last_spans: list[list[Span]] = []

    def judge(self, responses: Sequence[str], **context: Any) -> list[Judgement]:
        raise NotImplementedError

    def critique(self, prompts: list[Any], responses: list[str], **context: Any) -> list[Critique]:
        check_batch(prompts, responses, context)
        judgements = self.judge(list(responses), **context)
        self.last_judgements = judgements
        self.last_spans = [list(j.spans) for j in judgements]
        self.last_errors = [None] * len(judgements)
        return [j.critique for j in judgements]


def seeded_cycle(items: Sequence[Any], num: int, seed: int) -> list[Any]:
    """``num`` items: passes over ``items``, each pass in a new order drawn from ``random.Random(seed)``."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if not items:
        raise ValueError("seeded_cycle: no items to draw from")
    rng = random.Random(seed)
    order = list(range(len(items)))
    out: list[Any] = []
    while len(out) < num:
        rng.shuffle(order)
        out.extend(items[i] for i in order)
    return out[:num]


def split_items(items: Sequence[Any], split: str, test_fraction: float = 0.25, seed: int = 0) -> list[Any]:
    """The items of ``split``: ``all`` of them, or a fixed partition into ``train`` and ``test`` (no item in both;
    ``test`` gets ``round(len(items) * test_fraction)`` items, at least one, drawn with ``seed``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}.")
    if split == "all":
        return list(items)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(items) * test_fraction))
    test_ids = set(order[:n_test])
    return [item for i, item in enumerate(items) if (i in test_ids) == (split == "test")]
