"""Critique prompt templates for LLM critics.

A template is a system message plus a user message with the placeholders ``{prompt}`` and ``{response}`` (and
optionally any other per-sample context passed to ``critique(..., **context)``, e.g. ``{reference}``). Every
template asks for one JSON object::

    {"critique": "<free text>", "good_spans": ["<exact quote>", ...], "poor_spans": ["<exact quote>", ...]}

with 0 to N verbatim quotes per polarity. The three built-in templates follow the paper's tasks:
``summarization`` (SLF5K), ``code`` (KodCode / HumanEval) and ``qa`` (UltraFeedback). Users override them from
YAML (``AnnotateConfig.system_prompt`` / ``user_template``) or in code with :class:`CritiqueTemplate`.
Literal braces in a template must be doubled (``{{`` / ``}}``) as in :meth:`str.format`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from ..rewards import prompt_to_text  # re-exported: critics build their messages from it

__all__ = ["CritiqueTemplate", "JSON_INSTRUCTIONS", "TEMPLATES", "get_template", "prompt_to_text"]

JSON_INSTRUCTIONS = (
    "Answer with one JSON object and nothing else, of the form\n"
    '{{"critique": "<your critique>", "good_spans": ["<exact quote>", ...], "poor_spans": ["<exact quote>", ...]}}\n'
    "Rules for the spans: copy each quote character for character from the RESPONSE (not from the prompt), keep "
    "quotes short (a phrase, a line of code, at most one sentence), do not paraphrase, and use an empty list when "
    "nothing qualifies. Quote a phrase as poor when it is wrong, unsupported, harmful or buggy, and as good when "
    "it is correct and essential."
)


@dataclass(frozen=True)
class CritiqueTemplate:
    """A critique prompt: ``system`` and ``user`` strings with ``{prompt}``/``{response}`` placeholders."""

    system: str
    user: str

    def __post_init__(self) -> None:
        fields = {name for _, name, _, _ in string.Formatter().parse(self.user) if name}
        missing = {"prompt", "response"} - fields
        if missing:
            raise ValueError(
                f"CritiqueTemplate.user must contain the placeholders {{prompt}} and {{response}}; missing "
                f"{sorted(missing)}. Double literal braces ({{{{ and }}}}) in the template."
            )

    def placeholders(self) -> set[str]:
        return {name for text in (self.system, self.user) for _, name, _, _ in string.Formatter().parse(text) if name}

    def messages(self, prompt: str, response: str, **context: object) -> list[dict[str, str]]:
        """Chat messages for one sample; ``context`` fills extra placeholders (missing ones become "")."""
        values = {name: "" for name in self.placeholders()}
        values.update({k: "" if v is None else str(v) for k, v in context.items() if k in values})
        values.update(prompt=prompt, response=response)
        return [
            {"role": "system", "content": self.system.format(**values)},
            {"role": "user", "content": self.user.format(**values)},
        ]


_SUMMARIZATION = CritiqueTemplate(
    system=(
        "You are a meticulous editor who evaluates summaries of Reddit posts. A good summary is accurate (no "
        "facts that are not in the post), complete (covers the main point), and concise.\n" + JSON_INSTRUCTIONS
    ),
    user="POST:\n{prompt}\n\nRESPONSE (the summary to evaluate):\n{response}",
)

_CODE = CritiqueTemplate(
    system=(
        "You are a senior Python reviewer. Judge whether the RESPONSE correctly solves the programming TASK: "
        "logic errors, unhandled edge cases, wrong return values, syntax errors and inefficiency. In the critique "
        "explain the most important problem first.\n" + JSON_INSTRUCTIONS
    ),
    user="TASK:\n{prompt}\n\nRESPONSE (the code to review):\n{response}",
)

_QA = CritiqueTemplate(
    system=(
        "You are an expert assistant evaluator. Judge the RESPONSE to the user's QUESTION for helpfulness, "
        "correctness, honesty and instruction following.\n" + JSON_INSTRUCTIONS
    ),
    user="QUESTION:\n{prompt}\n\nRESPONSE (the answer to evaluate):\n{response}",
)

#: Built-in templates by task name.
TEMPLATES: dict[str, CritiqueTemplate] = {
    "summarization": _SUMMARIZATION,
    "slf5k": _SUMMARIZATION,
    "code": _CODE,
    "kodcode": _CODE,
    "humaneval": _CODE,
    "qa": _QA,
    "ultrafeedback": _QA,
}


def get_template(
    task: str | CritiqueTemplate | None = "qa", system: str | None = None, user: str | None = None
) -> CritiqueTemplate:
    """Resolve a template by task name (or pass one through), optionally overriding its system or user part."""
    if isinstance(task, CritiqueTemplate):
        base = task
    else:
        key = (task or "qa").lower()
        if key not in TEMPLATES:
            raise ValueError(f"Unknown critique task {task!r}; choose one of {sorted(TEMPLATES)} or pass a template.")
        base = TEMPLATES[key]
    if system is None and user is None:
        return base
    return CritiqueTemplate(system=base.system if system is None else system, user=base.user if user is None else user)
