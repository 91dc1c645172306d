"""KodCode (``KodCode/KodCode-Light-RL-10K``): Python coding problems with unit tests (Text2Grad's task 2).

Each hub row has a ``question``, a reference ``solution``, pytest-style ``test`` code (``from solution import
...``) and ``test_info`` (function names and signatures). :func:`prepare` produces:

* ``prompt``: one user message with the question and the required function signature(s);
* ``response``: the reference solution in a Markdown fence (what the annotation step critiques when no policy
  completions are given; the paper annotates the policy's own answers);
* context columns ``question``, ``tests`` (shown to the critic) and ``question_id``.

The tests are pytest modules, so the paper's (and this recipe's) critic is an LLM critic reading the code and
the tests (``critics.OpenAICompatibleCritic`` with :data:`CRITIC_TEMPLATE`), not the HumanEval sandbox critic.
The hub data set has one split, ``train`` (10,000 rows); hold out a part for evaluation.
"""

from __future__ import annotations

from typing import Any

from ..critics.prompts import JSON_INSTRUCTIONS, CritiqueTemplate
from ._hub import load_rows, prepare_rows

__all__ = ["DATASET_NAME", "CRITIC_TEMPLATE", "format_prompt", "format_row", "prepare", "load"]

DATASET_NAME = "KodCode/KodCode-Light-RL-10K"
REQUIRED_COLUMNS = ("question",)

#: Critic prompt of the task: the code is reviewed against the question and its unit tests.
CRITIC_TEMPLATE = CritiqueTemplate(
    system=(
        "You are a senior Python reviewer. Judge whether the RESPONSE solves the TASK and would pass the UNIT "
        "TESTS: logic errors, unhandled edge cases, wrong return values or types, syntax errors, wrong function "
        "names or signatures, and needless inefficiency. Explain the most important problem first. Quote as poor "
        "the exact lines that are wrong; quote as good the lines that are correct and essential.\n" + JSON_INSTRUCTIONS
    ),
    user="TASK:\n{prompt}\n\nUNIT TESTS (pytest):\n{tests}\n\nRESPONSE (the code to review):\n{response}",
)


def _signatures(test_info: Any) -> list[str]:
    out = []
    for item in test_info or []:
        if isinstance(item, dict) and item.get("function_declaration"):
            out.append(str(item["function_declaration"]).strip())
    return out


def format_prompt(question: str, signatures: list[str] | None = None) -> str:
    """The coding instruction for one problem."""
    text = question.strip()
    if signatures:
        text += "\n\nImplement: " + "; ".join(f"`{s}`" for s in signatures)
    return text + "\n\nAnswer with the complete Python solution in one ```python code block."


def format_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """One hub row → ``{prompt, response, question, tests, question_id}``; ``None`` without a question."""
    question = (row.get("question") or "").strip()
    if not question:
        return None
    solution = (row.get("solution") or "").strip()
    return {
        "prompt": [{"role": "user", "content": format_prompt(question, _signatures(row.get("test_info")))}],
        "response": f"```python\n{solution}\n```" if solution else "",
        "question": question,
        "tests": row.get("test") or "",
        "question_id": str(row.get("question_id", row.get("conversation_id", ""))),
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
    """Load and prepare a split of KodCode-Light-RL-10K (hub, or a local file with the same columns)."""
    return prepare(load_rows(dataset_name, split, dataset_config, max_samples))
