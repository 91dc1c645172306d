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
* ``None``: the reward function could not judge this response (a failure, counted by the trainers).

This module is part of the core layer: it imports nothing of the package but :mod:`.spans`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .spans import Critique, locate_critique

__all__ = ["NormalizedReward", "normalize_reward_output", "prompt_to_text", "UnitTestReward"]


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
    scalar: float | None = None
    spans: list[tuple[int, int, float]] | None = None
    num_unlocated: int = 0
    ok: bool = True
    reason: str = ""


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float, np.floating, np.integer)):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1


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
    spans)`` tuple; ``None`` (failure). A critique whose quotes all fail to locate is a failure.
    """
    try:
        if output is None:
            return NormalizedReward(ok=False, reason="reward is None")
        if _is_number(output):
            value = float(output)
            if not math.isfinite(value):
                return NormalizedReward(ok=False, reason=f"reward is {value}")
            return NormalizedReward(scalar=value)
        if isinstance(output, tuple) and len(output) == 2 and (_is_number(output[0]) or output[0] is None):
            head = normalize_reward_output(output[0], text) if output[0] is not None else NormalizedReward()
            tail = normalize_reward_output(output[1], text, good_score, poor_score, fuzzy_threshold)
            if not (head.ok and tail.ok):
                return NormalizedReward(ok=False, reason=head.reason or tail.reason)
            return NormalizedReward(head.scalar, tail.spans, tail.num_unlocated)
        if isinstance(output, dict):
            scalar = output.get("score")
            if scalar is not None and (not _is_number(scalar) or not math.isfinite(float(scalar))):
                return NormalizedReward(ok=False, reason=f"score {scalar!r} is not a finite number")
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
            return NormalizedReward(None if scalar is None else float(scalar), inner.spans, inner.num_unlocated)
        if isinstance(output, Critique):
            located = locate_critique(
                text, output, good_score=good_score, poor_score=poor_score, fuzzy_threshold=fuzzy_threshold
            )
            quotes = located.num_located + located.num_unlocated
            if quotes > 0 and located.num_located == 0:
                return NormalizedReward(
                    num_unlocated=located.num_unlocated, ok=False, reason="no quote could be located"
                )
            return NormalizedReward(spans=located.span_tuples(), num_unlocated=located.num_unlocated)
        if isinstance(output, (list, tuple)):
            spans = []
            for span in output:
                start, end, score = span
                start, end, score = int(start), int(end), float(score)
                if not (0 <= start <= end <= len(text)) or not math.isfinite(score):
                    return NormalizedReward(ok=False, reason=f"span {span!r} is invalid for the response")
                spans.append((start, end, score))
            return NormalizedReward(spans=spans)
        return NormalizedReward(ok=False, reason=f"unsupported reward output type {type(output).__name__}")
    except Exception as error:  # malformed output of a user function: counted, never fatal
        return NormalizedReward(ok=False, reason=f"malformed reward output ({error})")


class UnitTestReward:
    """PPO reward function ``(prompts, responses, **context) -> list[list[(start, end, score)]]``.

    Runs each response against its HumanEval tests with a :class:`~trl_text2grad.critics.UnitTestCritic` and returns
    the critic's exact character spans (poor: the failing line; good: the return line of passing code). The program
    is built from the raw problem prompt (context ``problem``), not from the chat prompt the policy saw.
    The latest critiques and pass/fail results are kept in ``last_critiques`` / ``last_passed``.
    """

    def __init__(self, critic) -> None:
        self.critic = critic
        self.last_critiques: list = []
        self.last_passed: list[bool] = []
        self.num_passed = 0
        self.num_scored = 0

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str], **context: Any) -> list[list[tuple]]:
        problems = context.get("problem")
        if problems is None:
            problems = [prompt_to_text(p) for p in prompts]
        tests = context.get("test", context.get("tests"))
        entry_points = context.get("entry_point")
        if tests is None or entry_points is None:
            raise ValueError(
                "UnitTestReward needs the per-sample context columns 'test' and 'entry_point' (HumanEval rows "
                "built by trl_text2grad.tasks.humaneval.humaneval_rows have them)."
            )
        self.last_critiques = self.critic.critique(
            list(problems), list(responses), tests=tests, entry_point=entry_points
        )
        spans = [list(s) for s in self.critic.last_spans]
        self.last_passed = [bool(r is not None and r.passed) for r in self.critic.last_results]
        self.num_scored += len(responses)
        self.num_passed += sum(self.last_passed)
        return spans
