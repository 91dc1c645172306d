"""The reward contract: what a reward function, critic or span reward model may return for one response, and its
normalisation into a scalar and/or character spans (then turned into per-token rewards by :mod:`.alignment`).

Every trainer of the package reads reward outputs through :func:`normalize_reward_output`, so the accepted shapes
are defined once, here:

* a number: a sequence-level (scalar) reward;
* a :class:`~trl_text2grad.Critique`: its quotes are located in the response (good -> ``good_score``, poor ->
  ``poor_score``);
* a list of ``(start, end, score)`` character spans of the response;
* an annotation dict (``critique`` / ``good_spans`` / ``poor_spans``, or ``spans``; optionally ``score``);
* a ``(score, critique or spans)`` tuple: both a scalar and spans;
* a failure: a :class:`~trl_text2grad.CriticFailure` (``kind`` + ``message``: the reward function could not
  judge this response, and says why), a ``Critique`` whose ``error`` is set (what critics return for such rows), or
  ``None`` (a failure without a reason). Failures are counted by kind by every trainer (``span/critic_failures``)
  and by ``annotate``; they are never turned into a zero reward silently, and a trainer stops with a
  :class:`CriticFailureError` once they exceed its failure budget.

This module is part of the core layer: it imports nothing of the package but :mod:`.spans`.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .spans import CriticFailure, Critique, check_spans, locate_critique

__all__ = [
    "CriticFailure",
    "CriticFailureError",
    "NormalizedReward",
    "count_failures",
    "describe_critic",
    "normalize_reward_output",
    "prompt_to_text",
    "UnitTestReward",
]


def prompt_to_text(prompt: object) -> str:
    """A prompt as plain text: strings unchanged; a single chat message -> its content; several messages -> one
    ``role: content`` line each.

    Raises:
        ValueError: ``prompt`` is ``None``.
        TypeError: ``prompt`` is neither a string nor a list of ``{"role", "content"}`` dicts.
    """
    if prompt is None:
        raise ValueError("the prompt is None; pass a string or a list of chat messages ('' for no prompt).")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
        if len(prompt) == 1:
            return str(prompt[0]["content"])
        return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in prompt)
    raise TypeError(
        f"a prompt must be a string or a non-empty list of {{'role', 'content'}} chat messages, got "
        f"{type(prompt).__name__}: {str(prompt)[:80]!r}"
    )


@dataclass
class NormalizedReward:
    """One reward output, normalised: ``scalar`` and/or character ``spans``; ``ok=False`` with a ``failure`` when the
    output says the row could not be judged (``reason`` is the failure's message, kept for older callers)."""

    scalar: float | None = None
    spans: list[tuple[int, int, float]] | None = None
    num_unlocated: int = 0
    ok: bool = True
    reason: str = ""
    failure: CriticFailure | None = None
    dropped_quotes: int = 0


class CriticFailureError(RuntimeError):
    """A critic or reward function failed beyond its failure budget (or on every row it was asked about).

    Attributes:
        critic: A description of the critic / reward function (its ``repr``; never holds an API key).
        failure: The last :class:`~trl_text2grad.CriticFailure` seen.
        counts: Failures by kind.
    """

    def __init__(
        self,
        message: str,
        critic: str = "",
        failure: CriticFailure | None = None,
        counts: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.critic = critic
        self.failure = failure
        self.counts = dict(counts or {})


def describe_critic(critic: Any) -> str:
    """A short name for error messages: a function's qualified name, a critic's one-line ``repr`` (critics of the
    package never put keys in it), else the class name (with the model path of a model-like object)."""
    if critic is None:
        return "None"
    if inspect.isfunction(critic) or inspect.ismethod(critic) or inspect.isclass(critic):
        return critic.__qualname__
    if type(critic).__repr__ is not object.__repr__:
        try:
            text = repr(critic)
        except Exception:  # a broken __repr__ must not hide the real error
            text = ""
        if text and "\n" not in text and len(text) <= 300:
            return text
    name = type(critic).__name__
    path = getattr(critic, "name_or_path", None) or getattr(getattr(critic, "config", None), "_name_or_path", None)
    return f"{name}({path!r})" if isinstance(path, str) and path else name


def count_failures(failures: Sequence[CriticFailure | None]) -> dict[str, int]:
    """``{kind: count}`` of the failures in ``failures`` (``None`` entries are rows that did not fail)."""
    counts: dict[str, int] = {}
    for failure in failures:
        if failure is not None:
            counts[failure.kind] = counts.get(failure.kind, 0) + 1
    return counts


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float, np.floating, np.integer)):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1


def _fail(kind: str, message: str, num_unlocated: int = 0, dropped: int = 0) -> NormalizedReward:
    return NormalizedReward(
        num_unlocated=num_unlocated,
        ok=False,
        reason=message,
        failure=CriticFailure(kind, message),
        dropped_quotes=dropped,
    )


def normalize_reward_output(
    output: Any,
    text: str,
    good_score: float = 1.0,
    poor_score: float = -1.0,
    fuzzy_threshold: float = 90.0,
) -> NormalizedReward:
    """Turn one reward-function output into ``(scalar, spans)``; never raises (bad output -> ``ok=False``).

    Accepted: a number; a :class:`~trl_text2grad.Critique`; a list of ``(start, end, score)`` spans; an annotation
    dict (``critique``/``good_spans``/``poor_spans``, or ``spans``, optionally ``score``); a ``(score, critique or
    spans)`` tuple.

    Failures (``ok=False``, ``failure`` says why, by kind): a :class:`~trl_text2grad.CriticFailure` (the reward
    function's own report for this row); a ``Critique`` whose ``error`` is set; ``None`` (``"no_reward"``); a
    non-finite number or invalid spans (``"invalid_output"``); a critique whose quotes all fail to locate
    (``"unlocated"``).
    """
    try:
        if output is None:
            return _fail("no_reward", "the reward function returned None for this response")
        if isinstance(output, CriticFailure):
            return NormalizedReward(ok=False, reason=output.message, failure=output)
        if _is_number(output):
            value = float(output)
            if not math.isfinite(value):
                return _fail("invalid_output", f"reward is {value}")
            return NormalizedReward(scalar=value)
        if isinstance(output, tuple) and len(output) == 2 and (_is_number(output[0]) or output[0] is None):
            head = normalize_reward_output(output[0], text) if output[0] is not None else NormalizedReward()
            tail = normalize_reward_output(output[1], text, good_score, poor_score, fuzzy_threshold)
            if not head.ok:
                return head
            if not tail.ok:
                return tail
            return NormalizedReward(head.scalar, tail.spans, tail.num_unlocated, dropped_quotes=tail.dropped_quotes)
        if isinstance(output, dict):
            scalar = output.get("score")
            if scalar is not None and (not _is_number(scalar) or not math.isfinite(float(scalar))):
                return _fail("invalid_output", f"score {scalar!r} is not a finite number")
            if "spans" in output or "located_spans" in output:
                inner = normalize_reward_output(output.get("spans", output.get("located_spans")) or [], text)
            elif any(key in output for key in ("critique", "good_spans", "poor_spans")):
                inner = normalize_reward_output(
                    Critique.from_dict(output), text, good_score, poor_score, fuzzy_threshold
                )
            else:
                inner = NormalizedReward()
            if not inner.ok:
                return inner
            return NormalizedReward(
                None if scalar is None else float(scalar),
                inner.spans,
                inner.num_unlocated,
                dropped_quotes=inner.dropped_quotes,
            )
        if isinstance(output, Critique):
            if output.error is not None:
                failure = output.error
                if not isinstance(failure, CriticFailure):
                    failure = CriticFailure("exception", str(failure))
                return NormalizedReward(
                    ok=False, reason=failure.message, failure=failure, dropped_quotes=output.dropped_quotes
                )
            located = locate_critique(
                text, output, good_score=good_score, poor_score=poor_score, fuzzy_threshold=fuzzy_threshold
            )
            dropped = output.dropped_quotes + located.empty_quotes
            quotes = located.num_located + located.num_unlocated
            if quotes > 0 and located.num_located == 0:
                return _fail(
                    "unlocated",
                    f"none of the critic's {quotes} quote(s) could be located in the response",
                    located.num_unlocated,
                    dropped,
                )
            return NormalizedReward(
                spans=located.span_tuples(), num_unlocated=located.num_unlocated, dropped_quotes=dropped
            )
        if isinstance(output, (list, tuple)):
            try:
                spans = check_spans(len(text), output)
            except ValueError as error:
                return _fail("invalid_output", f"invalid spans for the response: {error}")
            return NormalizedReward(spans=spans)
        return _fail("invalid_output", f"unsupported reward output type {type(output).__name__}")
    except Exception as error:  # malformed output of a user function: counted, never fatal
        return _fail("invalid_output", f"malformed reward output ({type(error).__name__}: {error})")


_PYTEST_TEST = re.compile(r"^def test_\w*\(", re.MULTILINE)


class UnitTestReward:
    """PPO reward function ``(prompts, responses, **context) -> list[list[(start, end, score)] | CriticFailure]``.

    Runs each response against its HumanEval tests with a :class:`~trl_text2grad.critics.UnitTestCritic` and returns
    the critic's exact character spans (poor: the failing line; good: the return line of passing code). The program
    is built from the raw problem prompt (context ``problem``), not from the chat prompt the policy saw.

    A row the critic cannot judge is a failure, never a failing response: a row without ``test`` (or ``tests``) or,
    for HumanEval-style ``check(candidate)`` tests, without ``entry_point`` (missing column, ``None`` or empty), or
    whose prompt is neither text nor chat messages, gets a
    :class:`~trl_text2grad.CriticFailure` (kind ``"missing_context"`` / ``"invalid_input"``) instead of spans, and
    is not run. The latest critiques and pass/fail results are kept in ``last_critiques`` / ``last_passed``.
    """

    #: Context columns every row needs (``test`` may also be called ``tests``).
    required_columns = ("test", "entry_point")

    def __init__(self, critic) -> None:
        self.critic = critic
        self.last_critiques: list = []
        self.last_passed: list[bool] = []
        self.num_passed = 0
        self.num_scored = 0

    def __repr__(self) -> str:
        return f"UnitTestReward({self.critic!r})"

    @staticmethod
    def _row_failure(prompt: Any, problem: Any, test: Any, entry_point: Any) -> CriticFailure | None:
        missing = [] if isinstance(test, str) and test.strip() else ["test"]
        # HumanEval-style tests end in check(<entry_point>); pytest-style ones (def test_*, no check) do not need it
        pytest_style = not missing and "def check(" not in test and _PYTEST_TEST.search(test) is not None
        if not pytest_style and not (isinstance(entry_point, str) and entry_point.strip()):
            missing.append("entry_point")
        if missing:
            return CriticFailure(
                "missing_context",
                f"the row has no usable {' / '.join(repr(m) for m in missing)} (the unit-test reward needs the "
                "per-row columns 'test' and 'entry_point', as in HumanEval rows built by "
                "trl_text2grad.tasks.humaneval.humaneval_rows); it was not judged.",
            )
        if isinstance(problem, str) and problem:
            return None
        try:
            prompt_to_text(prompt)
        except (TypeError, ValueError) as error:
            return CriticFailure("invalid_input", f"the row's prompt cannot be used: {error}")
        return None

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str], **context: Any) -> list[Any]:
        count = len(responses)
        problems = context.get("problem")
        tests = context.get("test", context.get("tests"))
        entry_points = context.get("entry_point")
        column = lambda values: list(values) if values is not None else [None] * count  # noqa: E731
        problems, tests, entry_points = column(problems), column(tests), column(entry_points)
        failures = [self._row_failure(prompts[i], problems[i], tests[i], entry_points[i]) for i in range(count)]
        usable = [i for i in range(count) if failures[i] is None]
        outputs: list[Any] = list(failures)
        critiques: list[Any] = [Critique(error=f) if f is not None else None for f in failures]
        passed = [False] * count
        if usable:
            heads = [
                problems[i] if isinstance(problems[i], str) and problems[i] else prompt_to_text(prompts[i])
                for i in usable
            ]
            judged = self.critic.critique(
                heads,
                [responses[i] for i in usable],
                tests=[tests[i] for i in usable],
                entry_point=[entry_points[i] for i in usable],
            )
            spans = list(self.critic.last_spans)
            results = list(self.critic.last_results)
            for j, i in enumerate(usable):
                critique = judged[j]
                critiques[i] = critique
                error = getattr(critique, "error", None)
                if error is not None:
                    outputs[i] = error if isinstance(error, CriticFailure) else CriticFailure("exception", str(error))
                    continue
                outputs[i] = [tuple(span) for span in spans[j]]
                passed[i] = bool(results[j] is not None and results[j].passed)
        self.last_critiques = critiques
        self.last_passed = passed
        self.num_scored += len(usable)
        self.num_passed += sum(passed)
        return outputs
