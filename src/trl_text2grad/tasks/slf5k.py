"""SLF5K (``JeremyAlain/SLF5K``): Reddit TL;DR summarization with human language feedback (Text2Grad's task 1).

Each hub row has ``subreddit``, ``title``, ``post``, a model summary ``generated_summary_for_feedback``, the human
``feedback`` on it and reference summaries (``ideal_human_summary``, ``tldr_human_reference_summary``).
:func:`prepare` turns rows into the project schema:

* ``prompt``: one user message asking for a TL;DR of the post;
* ``response``: the generated summary (what the annotation step critiques; the PPO policy writes its own);
* context columns ``post`` (title + post, what the critic checks facts against), ``feedback`` (the human
  feedback, shown to the critic when present) and ``reference`` (the ideal summary), plus ``id``.

Splits on the hub: ``train`` (5,000), ``development``, ``validation``, ``test``. Loading needs the hub; pass a
local ``.jsonl`` with the same columns as ``dataset_name`` to work offline.
"""

from __future__ import annotations

from typing import Any

from ..critics.prompts import JSON_INSTRUCTIONS, CritiqueTemplate
from ._hub import load_rows, prepare_rows

__all__ = ["DATASET_NAME", "CRITIC_TEMPLATE", "format_prompt", "format_row", "prepare", "load"]

DATASET_NAME = "JeremyAlain/SLF5K"
REQUIRED_COLUMNS = ("title", "post")

#: Critic prompt of the task: the summary is checked against the post, with the human feedback as a hint.
CRITIC_TEMPLATE = CritiqueTemplate(
    system=(
        "You are a meticulous editor who evaluates TL;DR summaries of Reddit posts. A good summary is accurate "
        "(states nothing the post does not say), complete (covers the author's main point and question) and "
        "concise. Quote as poor every phrase that is inaccurate, unsupported, misleading or redundant; quote as "
        "good the phrases that capture the key facts. When a human's feedback is given, use it as evidence, but "
        "quote only the summary.\n" + JSON_INSTRUCTIONS
    ),
    user=(
        "TASK GIVEN TO THE WRITER:\n{prompt}\n\nHUMAN FEEDBACK ON THE SUMMARY (may be empty):\n{feedback}\n\n"
        "RESPONSE (the summary to evaluate):\n{response}"
    ),
)

_INSTRUCTION = "Summarize the following Reddit post in one to three sentences (a TL;DR)."


def format_prompt(title: str, post: str, subreddit: str | None = None) -> str:
    """The summarization instruction for one post."""
    head = f"SUBREDDIT: r/{subreddit}\n" if subreddit else ""
    return f"{_INSTRUCTION}\n\n{head}TITLE: {title.strip()}\nPOST: {post.strip()}\n\nTL;DR:"


def format_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """One hub row → ``{prompt, response, post, feedback, reference, id}``; ``None`` for rows without a post."""
    title, post = (row.get("title") or "").strip(), (row.get("post") or "").strip()
    if not post:
        return None
    return {
        "prompt": [{"role": "user", "content": format_prompt(title, post, row.get("subreddit"))}],
        "response": (row.get("generated_summary_for_feedback") or "").strip(),
        "post": f"{title}\n{post}" if title else post,
        "feedback": (row.get("feedback") or "").strip(),
        "reference": (row.get("ideal_human_summary") or row.get("tldr_human_reference_summary") or "").strip(),
        "id": str(row.get("id", "")),
    }


def prepare(dataset):
    """Rows with the hub's columns → the project schema (see the module docstring). Returns a ``Dataset``."""
    return prepare_rows(dataset, format_row, REQUIRED_COLUMNS)[0]


def load(
    split: str = "train",
    dataset_name: str = DATASET_NAME,
    dataset_config: str | None = None,
    max_samples: int | None = None,
):
    """Load and prepare a split of SLF5K (hub, or a local file with the same columns)."""
    return prepare(load_rows(dataset_name, split, dataset_config, max_samples))
