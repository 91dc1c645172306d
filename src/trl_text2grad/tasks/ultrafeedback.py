"""UltraFeedback (``HuggingFaceH4/ultrafeedback_binarized``): open-ended instruction following (Text2Grad's task 3).

Each hub row has a ``prompt``, ``chosen`` and ``rejected`` conversations (lists of chat messages whose last turn
is the assistant's answer) with their scores. :func:`prepare` produces:

* ``prompt``: one user message;
* ``response``: the last assistant turn of ``chosen`` (default) or ``rejected`` — or both, one row each, with
  ``response_from="both"`` (useful to give the span reward model good and poor examples);
* context columns ``question`` (the prompt text), ``source`` (``chosen``/``rejected``), ``score`` and
  ``prompt_id``.

Hub splits: ``train_prefs``/``test_prefs`` (and ``*_sft``, ``*_gen``).
"""

from __future__ import annotations

from typing import Any, Literal

from ..critics.prompts import JSON_INSTRUCTIONS, CritiqueTemplate
from ._hub import load_rows, prepare_rows

__all__ = ["DATASET_NAME", "CRITIC_TEMPLATE", "format_rows", "prepare", "load"]

DATASET_NAME = "HuggingFaceH4/ultrafeedback_binarized"
REQUIRED_COLUMNS = ("prompt",)

#: Critic prompt of the task: helpfulness, correctness, honesty and instruction following.
CRITIC_TEMPLATE = CritiqueTemplate(
    system=(
        "You are an expert evaluator of assistant answers. Judge the RESPONSE to the user's QUESTION for "
        "helpfulness, factual correctness, honesty and instruction following. Quote as poor the phrases that are "
        "wrong, unhelpful, evasive or that ignore an instruction; quote as good the phrases that answer the "
        "question correctly and usefully.\n" + JSON_INSTRUCTIONS
    ),
    user="QUESTION:\n{prompt}\n\nRESPONSE (the answer to evaluate):\n{response}",
)


def _last_assistant(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "assistant":
                return str(message.get("content") or "").strip()
    return ""


def format_rows(row: dict[str, Any], response_from: Literal["chosen", "rejected", "both"] = "chosen") -> list[dict]:
    """One hub row → one output row per requested response (none when the prompt is empty)."""
    question = (row.get("prompt") or "").strip()
    if not question:
        return []
    sources = ["chosen", "rejected"] if response_from == "both" else [response_from]
    out = []
    for source in sources:
        out.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "response": _last_assistant(row.get(source)),
                "question": question,
                "source": source,
                "score": float(row.get(f"score_{source}") or 0.0),
                "prompt_id": str(row.get("prompt_id", "")),
            }
        )
    return out


def prepare(dataset, response_from: Literal["chosen", "rejected", "both"] = "chosen"):
    """Rows with the hub's columns → the project schema (see the module docstring). Returns a ``Dataset``."""
    if response_from not in ("chosen", "rejected", "both"):
        raise ValueError(f"response_from must be 'chosen', 'rejected' or 'both', got {response_from!r}")
    from datasets import Dataset

    if response_from != "both":
        return prepare_rows(dataset, lambda r: (format_rows(r, response_from) or [None])[0], REQUIRED_COLUMNS)[0]
    single, _ = prepare_rows(
        dataset, lambda r: {"rows": rows} if (rows := format_rows(r, "both")) else None, REQUIRED_COLUMNS
    )
    return Dataset.from_list([item for rows in single["rows"] for item in rows])


def load(
    split: str = "train_prefs",
    dataset_name: str = DATASET_NAME,
    dataset_config: str | None = None,
    max_samples: int | None = None,
    response_from: Literal["chosen", "rejected", "both"] = "chosen",
):
    """Load and prepare a split of UltraFeedback-binarized (hub, or a local file with the same columns)."""
    return prepare(load_rows(dataset_name, split, dataset_config, max_samples), response_from=response_from)
