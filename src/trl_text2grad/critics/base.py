"""The critic protocol and the shared machinery of LLM critics.

A *critic* turns a batch of ``(prompt, response)`` pairs into one :class:`~trl_text2grad.spans.Critique` each::

    critic.critique(prompts: list[str], responses: list[str], **context) -> list[Critique]

``context`` holds per-sample lists (``tests=[...]``, ``entry_point=[...]``, ``reference=[...]``) that a critic
may use. Critics are also callable with the same signature, so a critic can be passed directly as the span
reward function of the PPO trainer.

After each call, critics set ``last_errors``: one entry per sample, ``None`` or a short description of what
went wrong for that sample (unparseable answer, request failure, ...). The annotation pipeline stores it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..spans import Critique
from .parsing import parse_critique
from .prompts import CritiqueTemplate, get_template, prompt_to_text

logger = logging.getLogger(__name__)

__all__ = ["Critic", "BaseCritic", "LLMCritic", "check_batch"]


@runtime_checkable
class Critic(Protocol):
    """Anything with a batched ``critique(prompts, responses, **context) -> list[Critique]`` method."""

    def critique(self, prompts: list[str], responses: list[str], **context) -> list[Critique]: ...


def check_batch(prompts: Sequence, responses: Sequence, context: dict) -> None:
    """Validate the shapes of a critique batch; raise a ``ValueError`` naming the offending argument."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("critique() takes lists of prompts and responses, not single strings; wrap them in a list.")
    if len(prompts) != len(responses):
        raise ValueError(f"critique(): {len(prompts)} prompts but {len(responses)} responses; pass one per sample.")
    for key, values in context.items():
        if values is None:
            continue
        if isinstance(values, str) or not hasattr(values, "__len__") or len(values) != len(prompts):
            raise ValueError(
                f"critique(): context '{key}' must be a list with one entry per sample ({len(prompts)}), got "
                f"{type(values).__name__}{'' if not hasattr(values, '__len__') else f' of length {len(values)}'}."
            )


class BaseCritic:
    """Convenience base: callable like a reward function and keeps ``last_errors``."""

    last_errors: list[str | None]

    def __init__(self) -> None:
        self.last_errors = []

    def critique(self, prompts: list[str], responses: list[str], **context) -> list[Critique]:
        raise NotImplementedError

    def __call__(self, prompts: list[str], responses: list[str], **context) -> list[Critique]:
        return self.critique(prompts, responses, **context)


class LLMCritic(BaseCritic):
    """Shared logic of critics that prompt a language model: template → messages → answer → parsed critique.

    Subclasses implement :meth:`generate` (a batch of chat conversations → answer strings, ``None`` on failure).
    """

    def __init__(
        self,
        template: str | CritiqueTemplate | None = "qa",
        system_prompt: str | None = None,
        user_template: str | None = None,
    ) -> None:
        super().__init__()
        self.template = get_template(template, system=system_prompt, user=user_template)
        self.last_answers: list[str | None] = []

    def build_messages(self, prompts: Sequence, responses: Sequence[str], context: dict) -> list[list[dict]]:
        conversations = []
        for index, (prompt, response) in enumerate(zip(prompts, responses)):
            extra = {k: v[index] for k, v in context.items() if v is not None}
            conversations.append(self.template.messages(prompt_to_text(prompt), response or "", **extra))
        return conversations

    def generate(self, conversations: list[list[dict]]) -> list[str | None]:
        raise NotImplementedError

    def critique(self, prompts: list[str], responses: list[str], **context) -> list[Critique]:
        check_batch(prompts, responses, context)
        if not prompts:
            self.last_errors, self.last_answers = [], []
            return []
        answers = self.generate(self.build_messages(prompts, responses, context))
        critiques, errors = [], []
        for answer in answers:
            if isinstance(answer, Exception):
                critiques.append(Critique())
                errors.append(f"request failed: {type(answer).__name__}: {answer}")
                continue
            parsed = parse_critique(answer)
            critiques.append(parsed.critique)
            errors.append(parsed.error)
        failures = sum(e is not None for e in errors)
        if failures:
            logger.warning(
                "%s: %d of %d critiques had errors (see last_errors)", type(self).__name__, failures, len(errors)
            )
        self.last_errors = errors
        self.last_answers = [a if isinstance(a, str) else None for a in answers]
        return critiques
