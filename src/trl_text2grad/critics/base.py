"""The critic protocol, its failure contract, and the shared machinery of LLM critics.

A *critic* turns a batch of ``(prompt, response)`` pairs into one :class:`~trl_text2grad.spans.Critique` each::

    critic.critique(prompts: list[str], responses: list[str], **context) -> list[Critique]

``context`` holds per-sample lists (``tests=[...]``, ``entry_point=[...]``, ``reference=[...]``) that a critic
may use. Critics are also callable with the same signature, so a critic can be passed directly as the span
reward function of the PPO trainer.

The failure contract (every critic of the package follows it; custom critics should too):

* **Start-up problems raise at construction**: a missing API key, a model that cannot be loaded, a tokenizer
  without a chat template. A critic that cannot work never gets as far as judging rows.
* **Row problems are per-row failures, never exceptions and never empty critiques**: a failed request (401,
  unreachable endpoint, timeout, 5xx after the retries), an unparseable answer, a row lacking a column the critic
  needs. The row's critique is ``Critique(error=CriticFailure(kind, message))``; the other rows of the batch are
  judged normally. :class:`~trl_text2grad.spans.CriticFailure` lists the kinds; ``failure.retryable`` says
  whether asking again later may help (``annotate`` retries those rows on resume).
* ``required_context``: names of the context keys every row needs (e.g. ``("tests", "entry_point")``).
  ``annotate`` turns a row that lacks one into a row error (kind ``"missing_column"``) before calling the critic;
  :meth:`BaseCritic.context_failures` gives critics the same check for direct calls.
* Non-text quote entries in an answer are dropped and counted in ``Critique.dropped_quotes``.

Consumers count failures by kind: ``SpanPPOTrainer`` in ``span/critic_failures`` and its failure budget
(``max_critic_failure_rate`` / ``max_consecutive_failed_rollouts``), ``annotate`` in its records (``row_error``) and
its summary.

After each call, critics also set ``last_failures`` (one :class:`CriticFailure` or ``None`` per sample) and, for
older callers, ``last_errors`` (the failure's message or ``None``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..spans import CriticFailure, Critique
from .parsing import parse_critique
from .prompts import CritiqueTemplate, get_template, prompt_to_text

logger = logging.getLogger(__name__)

__all__ = ["Critic", "BaseCritic", "LLMCritic", "CriticFailure", "check_batch"]


@runtime_checkable
class Critic(Protocol):
    """Anything with a batched ``critique(prompts, responses, **context) -> list[Critique]`` method."""

    def critique(self, prompts: list[str], responses: list[str], **context) -> list[Critique]: ...


def check_batch(prompts: Sequence, responses: Sequence, context: dict) -> None:
    """Validate the shapes of a critique batch; raise a ``ValueError`` naming the offending argument.

    These are programming errors of the caller (not row problems), so they raise.
    """
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


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class BaseCritic:
    """Convenience base: callable like a reward function; keeps ``last_failures`` / ``last_errors``.

    Subclasses implement :meth:`critique` and call :meth:`_finish` with the critiques they return.
    """

    #: Context keys every row needs; a row without one (missing, ``None`` or empty) cannot be judged.
    required_context: tuple[str, ...] = ()

    last_errors: list[str | None]
    last_failures: list[CriticFailure | None]

    def __init__(self) -> None:
        self.last_errors = []
        self.last_failures = []

    def critique(self, prompts: list[str], responses: list[str], **context) -> list[Critique]:
        raise NotImplementedError

    def __call__(self, prompts: list[str], responses: list[str], **context) -> list[Critique]:
        return self.critique(prompts, responses, **context)

    def context_failures(self, count: int, context: dict) -> list[CriticFailure | None]:
        """Per row, a ``"missing_context"`` failure naming the :attr:`required_context` keys it lacks, else ``None``."""
        failures: list[CriticFailure | None] = []
        for index in range(count):
            missing = [
                key for key in self.required_context if context.get(key) is None or _is_missing(context[key][index])
            ]
            failures.append(
                CriticFailure(
                    "missing_context",
                    f"{type(self).__name__} needs {', '.join(repr(k) for k in missing)} for every row; this row has "
                    "none, so it was not judged.",
                )
                if missing
                else None
            )
        return failures

    def _finish(self, critiques: list[Critique]) -> list[Critique]:
        """Record ``last_failures`` / ``last_errors`` of ``critiques`` and log a warning that counts them by kind."""
        self.last_failures = [c.error for c in critiques]
        self.last_errors = [None if f is None else f.message for f in self.last_failures]
        counts: dict[str, int] = {}
        for failure in self.last_failures:
            if failure is not None:
                counts[failure.kind] = counts.get(failure.kind, 0) + 1
        if counts:
            last = next(f for f in reversed(self.last_failures) if f is not None)
            logger.warning(
                "%s: %d of %d rows could not be judged (%s); last: %s",
                type(self).__name__,
                sum(counts.values()),
                len(critiques),
                ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items())),
                last,
            )
        return critiques


class LLMCritic(BaseCritic):
    """Shared logic of critics that prompt a language model: template → messages → answer → parsed critique.

    Subclasses implement :meth:`generate` (a batch of chat conversations → one answer string per conversation, or
    the ``Exception`` that made it fail) and may refine :meth:`classify_error`.
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
        """One conversation per row (raises on a row the template cannot render; see :meth:`_build_row`)."""
        return [self._build_row(index, prompts, responses, context) for index in range(len(prompts))]

    def _build_row(self, index: int, prompts: Sequence, responses: Sequence, context: dict) -> list[dict]:
        extra = {k: v[index] for k, v in context.items() if v is not None}
        response = responses[index]
        if response is not None and not isinstance(response, str):
            raise TypeError(f"the response must be text, got {type(response).__name__}")
        return self.template.messages(prompt_to_text(prompts[index]), response or "", **extra)

    def generate(self, conversations: list[list[dict]]) -> list[str | Exception | None]:
        raise NotImplementedError

    def classify_error(self, error: BaseException) -> CriticFailure:
        """The :class:`CriticFailure` for an exception ``generate`` returned for one conversation."""
        return CriticFailure("request", f"request failed: {type(error).__name__}: {error}")

    def critique(self, prompts: list[str], responses: list[str], **context) -> list[Critique]:
        check_batch(prompts, responses, context)
        critiques: list[Critique | None] = [None] * len(prompts)
        for index, failure in enumerate(self.context_failures(len(prompts), context)):
            if failure is not None:
                critiques[index] = Critique(error=failure)
        conversations, sent = [], []
        for index in range(len(prompts)):
            if critiques[index] is not None:
                continue
            try:
                conversations.append(self._build_row(index, prompts, responses, context))
                sent.append(index)
            except KeyError as error:  # the template names a context field this row lacks
                critiques[index] = Critique(
                    error=CriticFailure("missing_context", f"the critique template needs {error}, not in the row")
                )
            except (TypeError, ValueError) as error:  # e.g. a prompt that is a number
                critiques[index] = Critique(error=CriticFailure("invalid_input", str(error)))
        answers = self.generate(conversations) if conversations else []
        if len(answers) != len(conversations):
            raise RuntimeError(
                f"{type(self).__name__}.generate returned {len(answers)} answers for {len(conversations)} "
                "conversations."
            )
        self.last_answers = [None] * len(prompts)
        for index, answer in zip(sent, answers):
            if isinstance(answer, BaseException):
                critiques[index] = Critique(error=self.classify_error(answer))
                continue
            self.last_answers[index] = answer if isinstance(answer, str) else None
            parsed = parse_critique(answer)
            critique = parsed.critique
            if not parsed.found_object:
                kind = "empty_answer" if str(parsed.error).startswith("empty answer") else "parse"
                critique.error = CriticFailure(kind, parsed.error or "no critique in the answer")
            critiques[index] = critique
        return self._finish([c if c is not None else Critique() for c in critiques])
