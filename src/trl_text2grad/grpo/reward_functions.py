"""Reward functions with span outputs for TRL's online trainers.

TRL calls every reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)`` and expects
one float (or ``None``) per completion. :class:`SpanRewardFunction` wraps such a function, a critic
(``critique(prompts, responses, **context)``), a span reward model (``score(prompts, responses)``) or a PPO-style
reward ``f(prompts, responses, **context)`` (e.g. :class:`~trl_text2grad.rewards.UnitTestReward`) so that it may
return, per completion, anything :func:`~trl_text2grad.rewards.normalize_reward_output` accepts: a float, a
:class:`~trl_text2grad.Critique`, ``(start, end, score)`` character spans, an annotation dict, ``(score, spans)``
or ``None``. TRL receives the scalar part; the spans are aligned onto the sampled completion tokens and kept in
:attr:`SpanRewardFunction.last` for the trainer's scoring hook.

A completion with spans but no explicit scalar gets the mean of its per-token span rewards as its sequence reward
(the convention of ``SpanPPOTrainer``). A function that raises, returns the wrong number of outputs, or an output
that cannot be used (``None``, NaN, malformed spans, a critique none of whose quotes can be located) gives ``None``
for the completions concerned -- TRL then leaves them out of the baseline and gives them no sequence advantage --
and is counted in ``span/critic_failures``; training never stops on it.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..alignment import token_char_offsets, token_rewards_from_offsets
from ..rewards import normalize_reward_output

__all__ = ["SpanBatch", "SpanRewardFunction", "AsyncSpanRewardFunction", "as_span_reward_function", "completion_text"]

logger = logging.getLogger(__name__)

#: Keyword arguments TRL adds for its own purposes; they are not data-set columns and never reach a critic.
TRL_CONTROL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


@dataclass
class SpanBatch:
    """What one call of a :class:`SpanRewardFunction` produced, one entry per completion.

    Attributes:
        token_rewards: Per sampled completion token, the score of the span it lies in (0 outside every span), or
            ``None`` where the output had no spans (a plain float) or failed.
        scalars: The sequence reward handed to TRL (``None`` = failure).
        num_unlocated: Quotes (or spans) that could not be placed on the completion tokens.
        num_failures: Completions whose output was unusable.
        reasons: Failure reason per completion (``""`` when fine).
    """

    token_rewards: list[np.ndarray | None] = field(default_factory=list)
    scalars: list[float | None] = field(default_factory=list)
    num_unlocated: int = 0
    num_failures: int = 0
    reasons: list[str] = field(default_factory=list)


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string unchanged; chat messages -> their contents joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return completion_text([completion])
    if isinstance(completion, (list, tuple)):
        parts = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else message
            if isinstance(content, list):  # typed content blocks
                content = "".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
            parts.append("" if content is None else str(content))
        return "".join(parts)
    raise TypeError(f"a completion must be a string or chat messages, got {type(completion).__name__}.")


def _character_map(source: str, target: str) -> np.ndarray:
    """``map[k]`` = index in ``target`` of ``source[k]`` (``-1`` where it has none), ``k`` in ``0..len(source)``.

    Used when the text a reward function saw differs from the decoding of the sampled tokens (tokenization-space
    clean-up, parsed chat responses): equal runs of characters are matched with :class:`difflib.SequenceMatcher`.
    """
    mapping = np.full(len(source) + 1, -1, dtype=np.int64)
    matcher = difflib.SequenceMatcher(None, source, target, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        mapping[a : a + size] = np.arange(b, b + size)
        if size:
            mapping[a + size] = b + size
    return mapping


def _map_spans(spans: list[tuple[int, int, float]], mapping: np.ndarray) -> tuple[list[tuple[int, int, float]], int]:
    """Spans of the reward function's text moved onto the decoded text; spans with no matched character are lost."""
    moved, lost = [], 0
    for start, end, score in spans:
        hits = mapping[start:end]
        hits = hits[hits >= 0]
        if hits.size == 0:
            lost += 1
            continue
        moved.append((int(hits.min()), int(hits.max()) + 1, score))
    return moved, lost


class SpanRewardFunction:
    """A reward source made into a TRL reward function whose outputs may carry spans.

    Args:
        source: A TRL-style function ``f(prompts, completions, completion_ids, **kwargs)``; an object with
            ``critique(prompts, responses, **context)`` (critics); an object with ``score(prompts, responses)``
            (:class:`~trl_text2grad.reward.SpanRewardModel`); or a PPO-style callable ``f(prompts, responses,
            **context)`` (recognised by a ``responses`` parameter and no ``completions`` one).
        name: Name in TRL's logs (default: the source's ``__name__`` or class name).
        good_score / poor_score / fuzzy_threshold: How a :class:`~trl_text2grad.Critique`'s quotes are scored and
            located.

    :meth:`bind` must give it the policy tokenizer before spans can be aligned (the trainers do it).
    """

    def __init__(
        self,
        source: Any,
        name: str | None = None,
        good_score: float = 1.0,
        poor_score: float = -1.0,
        fuzzy_threshold: float = 90.0,
    ) -> None:
        if isinstance(source, SpanRewardFunction):
            source = source.source
        self.source = source
        self.kind = _source_kind(source)
        self.__name__ = name or _display_name(source)
        self.good_score = float(good_score)
        self.poor_score = float(poor_score)
        self.fuzzy_threshold = float(fuzzy_threshold)
        self.tokenizer = None
        self.last: SpanBatch | None = None

    def bind(self, tokenizer) -> SpanRewardFunction:
        """Use ``tokenizer`` (the policy's) to align spans onto the sampled token ids."""
        self.tokenizer = tokenizer
        return self

    # -- calling the source ----------------------------------------------------------------------------------------
    def _call_arguments(self, prompts, completions, completion_ids, kwargs) -> tuple[tuple, dict]:
        if self.kind == "trl":
            return (), {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **kwargs}
        responses = [completion_text(c) for c in completions]
        context = {k: v for k, v in kwargs.items() if k not in TRL_CONTROL_KWARGS}
        return (list(prompts), responses), context

    def _target(self) -> Callable:
        if self.kind == "critic":
            return self.source.critique
        if self.kind == "span_model":
            return self.source.score
        return self.source

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        args, call_kwargs = self._call_arguments(prompts, completions, completion_ids, kwargs)
        try:
            outputs = self._target()(*args, **call_kwargs)
        except Exception as error:  # a critic that raises must not stop training
            outputs = error
        return self._finish(outputs, completions, completion_ids)

    def _finish(self, outputs: Any, completions: Sequence, completion_ids: Sequence | None) -> list[float | None]:
        count = len(completions)
        if isinstance(outputs, Exception):
            logger.warning(
                "reward function %s raised %s: %s; its %d completions count as failures.",
                self.__name__,
                type(outputs).__name__,
                outputs,
                count,
            )
            outputs = None
        else:
            try:
                outputs = list(outputs) if outputs is not None else None
            except TypeError:
                outputs = None
            if outputs is None or len(outputs) != count:
                logger.warning(
                    "reward function %s returned %s outputs for %d completions (one per completion expected); "
                    "they count as failures.",
                    self.__name__,
                    "no" if outputs is None else len(outputs),
                    count,
                )
                outputs = None
        batch = SpanBatch()
        if outputs is None:
            batch.token_rewards = [None] * count
            batch.scalars = [None] * count
            batch.num_failures = count
            batch.reasons = ["reward function failed"] * count
            self.last = batch
            return batch.scalars
        for index, (output, completion) in enumerate(zip(outputs, completions)):
            ids = None if completion_ids is None else completion_ids[index]
            scalar, token_rewards, unlocated, reason = self._one(output, completion, ids)
            batch.scalars.append(scalar)
            batch.token_rewards.append(token_rewards)
            batch.num_unlocated += unlocated
            batch.reasons.append(reason)
            if reason:
                batch.num_failures += 1
        self.last = batch
        return batch.scalars

    def _one(self, output: Any, completion: Any, ids) -> tuple[float | None, np.ndarray | None, int, str]:
        """``(scalar, token rewards, unlocated, failure reason)`` for one completion."""
        try:
            text = completion_text(completion)
        except TypeError as error:
            return None, None, 0, str(error)
        result = normalize_reward_output(output, text, self.good_score, self.poor_score, self.fuzzy_threshold)
        if not result.ok:
            logger.info("reward function %s: unusable output (%s)", self.__name__, result.reason)
            return None, None, result.num_unlocated, result.reason or "unusable output"
        if result.spans is None:
            return result.scalar, None, 0, ""
        if ids is None or self.tokenizer is None:
            raise RuntimeError(
                f"reward function {self.__name__} returned spans but has no completion_ids/tokenizer to align "
                "them; use it through SpanGRPOTrainer / SpanRLOOTrainer (they bind the policy tokenizer)."
            )
        token_rewards, lost = self.align(text, result.spans, ids)
        scalar = result.scalar
        if scalar is None:  # spans only: the mean token reward is the sequence reward (as in SpanPPOTrainer)
            scalar = float(token_rewards.mean()) if token_rewards.size else 0.0
        return scalar, token_rewards, result.num_unlocated + lost, ""

    def align(self, text: str, spans: list[tuple[int, int, float]], ids: Sequence[int]) -> tuple[np.ndarray, int]:
        """Per-token rewards of the sampled ``ids`` for character ``spans`` of ``text``, and the spans lost.

        Offsets come from decoding the sampled ids (:func:`~trl_text2grad.alignment.token_char_offsets`); when that
        decoding differs from ``text`` the spans are moved through a character alignment of the two texts.
        """
        ids = [int(i) for i in ids]
        decoded, offsets = token_char_offsets(self.tokenizer, ids)
        lost = 0
        if decoded != text:
            spans, lost = _map_spans(spans, _character_map(text, decoded))
        return token_rewards_from_offsets(decoded, offsets, spans), lost


class AsyncSpanRewardFunction(SpanRewardFunction):
    """:class:`SpanRewardFunction` for an ``async`` TRL-style reward function (TRL awaits it on its event loop)."""

    async def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        args, call_kwargs = self._call_arguments(prompts, completions, completion_ids, kwargs)
        try:
            outputs = await self._target()(*args, **call_kwargs)
        except Exception as error:  # a critic that raises must not stop training
            outputs = error
        return self._finish(outputs, completions, completion_ids)


def _display_name(source: Any) -> str:
    """The name TRL would log for ``source``: a function's ``__name__`` (through ``functools.partial``), else the
    class name."""
    while isinstance(source, functools.partial):
        source = source.func
    return getattr(source, "__name__", None) or type(source).__name__


def _is_async(func: Any) -> bool:
    """Whether calling ``func`` returns a coroutine (functions, partials, and instances with an async ``__call__``)."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(type(func), "__call__", None)  # noqa: B004 (the class attribute, not callable())
    return not inspect.isroutine(func) and inspect.iscoroutinefunction(call)


def _source_kind(source: Any) -> str:
    if callable(getattr(source, "critique", None)):
        return "critic"
    if callable(getattr(source, "score", None)) and callable(getattr(source, "predict", None)):
        return "span_model"
    if not callable(source):
        raise TypeError(
            f"a reward source must be callable, or have critique() / score(): got {type(source).__name__}."
        )
    try:
        parameters = inspect.signature(source).parameters
    except (TypeError, ValueError):
        return "trl"
    if "responses" in parameters and "completions" not in parameters:
        return "ppo"
    return "trl"


def as_span_reward_function(source: Any, **kwargs: Any) -> SpanRewardFunction:
    """Wrap ``source`` (see :class:`SpanRewardFunction`) in the sync or async adapter TRL needs.

    ``kwargs`` go to :class:`SpanRewardFunction` (``name``, ``good_score``, ``poor_score``, ``fuzzy_threshold``).
    """
    inner = source.source if isinstance(source, SpanRewardFunction) else source
    target = inner
    if callable(getattr(inner, "critique", None)):
        target = inner.critique
    cls = AsyncSpanRewardFunction if _is_async(target) else SpanRewardFunction
    return cls(inner, **kwargs)
