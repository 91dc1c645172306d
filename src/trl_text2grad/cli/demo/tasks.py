"""The demo's tasks (``--task``): their train/held-out rows, programmatic reward and success metric.

- :class:`ConstrainedTextDemo` (default): one-sentence descriptions under word constraints
  (:mod:`trl_text2grad.tasks.constrained_text`). The topics are split into train and held-out topics (no topic in
  both); the reward is the task's program (exact character spans) and success is its verdict.
- :class:`HumanEvalDemo`: the packaged HumanEval problems split by problem; the reward is the sandboxed unit-test
  critic and success is passing the tests (pass@1 of each answer).

:class:`SuccessRecorder` wraps whatever reward function trains the policy and records, per call (one call per PPO
rollout), how many of the sampled responses succeed by the task's metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from datasets import Dataset

from ...critics import UnitTestCritic
from ...rewards import UnitTestReward
from ...tasks import constrained_text
from ...tasks.humaneval import evaluate_completions, humaneval_rows, load_humaneval, split_by_problem
from ...tasks.programmatic import seeded_cycle, split_items
from .config import DemoConfig

logger = logging.getLogger(__name__)

__all__ = ["DemoTask", "ConstrainedTextDemo", "HumanEvalDemo", "ProgrammaticReward", "SuccessRecorder", "demo_task"]


class DemoTask:
    """What the demo needs from a task. Rows carry ``prompt``, the critic's context columns and ``task_id``."""

    name = ""
    #: name of the held-out metric in the report (``pass@1`` for HumanEval)
    metric = "success"
    #: what one held-out row is (``problem`` / ``topic``)
    unit = "prompt"
    #: stop held-out/stage-1 generation once a Markdown code block is closed
    stop_at_closed_fence = False

    def __init__(self, config: DemoConfig) -> None:
        self.config = config

    def rows(self) -> tuple[Dataset, Dataset]:
        """``(train rows, held-out rows)``; no problem or topic is in both."""
        raise NotImplementedError

    def programmatic_reward(self) -> Callable[..., list[Any]]:
        """The reward function of ``--critic programmatic``."""
        raise NotImplementedError

    def success(self, rows: Dataset | dict, responses: Sequence[str]) -> list[bool]:
        """Per response, whether it succeeds by the task's metric (``rows`` gives each response's context)."""
        raise NotImplementedError

    def rollout_success(self, reward_fn, prompts, responses, context: dict) -> list[bool]:
        """Success of the responses of one PPO rollout (reuses the reward function's verdicts when it has them)."""
        return self.success(context, responses)

    def context(self, rows: Dataset) -> dict[str, list]:
        """The context columns of ``rows`` (everything but the prompt), as the trainer passes them."""
        return {k: list(rows[k]) for k in rows.column_names if k != "prompt"}


class ProgrammaticReward:
    """A reward function from a :class:`~trl_text2grad.tasks.programmatic.JudgingCritic`: returns the critic's exact
    character spans per response, and keeps its critiques (``last_critiques``) and verdicts (``last_passed``)."""

    def __init__(self, critic) -> None:
        self.critic = critic
        self.last_critiques: list = []
        self.last_passed: list[bool] = []

    def __repr__(self) -> str:
        return f"ProgrammaticReward({self.critic!r})"

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str], **context: Any) -> list[list[tuple]]:
        self.last_critiques = self.critic.critique(list(prompts), list(responses), **context)
        self.last_passed = [j.success >= 1.0 for j in self.critic.last_judgements]
        return [list(spans) for spans in self.critic.last_spans]


class ConstrainedTextDemo(DemoTask):
    name = "constrained_text"
    unit = "topic"

    def __init__(self, config: DemoConfig) -> None:
        super().__init__(config)
        self.judge = constrained_text.ConstrainedTextCritic()

    def _topics(self, split: str, limit: int) -> list[tuple[str, str, str, str]]:
        topics = split_items(constrained_text.TOPICS, split, self.config.test_fraction, self.config.split_seed)
        return topics if limit <= 0 else topics[:limit]

    @staticmethod
    def _dataset(rows: list[dict], topics: list[str]) -> Dataset:
        columns = {key: [row[key] for row in rows] for key in ("prompt", "required", "forbidden")}
        return Dataset.from_dict({**columns, "task_id": topics})

    def rows(self) -> tuple[Dataset, Dataset]:
        config = self.config
        train_topics = self._topics("train", config.train_problems)
        # one new prompt per rollout slot, cycling through the train topics in seeded orders (as bench/ does)
        cycle = seeded_cycle(train_topics, max(config.steps, 1) * config.batch_size, config.seed)
        train = [constrained_text.make_row(t, r, [a, b]) for t, r, a, b in cycle]
        held_topics = self._topics("test", config.eval_problems)
        held_out = [constrained_text.make_row(t, r, [a, b]) for t, r, a, b in held_topics]
        return (
            self._dataset(train, [t[0] for t in cycle]),
            self._dataset(held_out, [t[0] for t in held_topics]),
        )

    def programmatic_reward(self) -> ProgrammaticReward:
        return ProgrammaticReward(constrained_text.ConstrainedTextCritic())

    def success(self, rows, responses) -> list[bool]:
        judgements = self.judge.judge(list(responses), required=list(rows["required"]), forbidden=rows["forbidden"])
        return [j.success >= 1.0 for j in judgements]

    def rollout_success(self, reward_fn, prompts, responses, context) -> list[bool]:
        if isinstance(reward_fn, ProgrammaticReward) and len(reward_fn.last_passed) == len(responses):
            return list(reward_fn.last_passed)
        return self.success(context, responses)


class HumanEvalDemo(DemoTask):
    name = "humaneval"
    metric = "pass@1"
    unit = "problem"
    stop_at_closed_fence = True

    def rows(self) -> tuple[Dataset, Dataset]:
        config = self.config
        split = split_by_problem(load_humaneval(), test_fraction=config.test_fraction, seed=config.split_seed)
        n_train = (
            len(split["train"]) if config.train_problems <= 0 else min(config.train_problems, len(split["train"]))
        )
        n_eval = len(split["test"]) if config.eval_problems <= 0 else min(config.eval_problems, len(split["test"]))
        return humaneval_rows(split["train"].select(range(n_train))), humaneval_rows(
            split["test"].select(range(n_eval))
        )

    def programmatic_reward(self) -> UnitTestReward:
        return UnitTestReward(UnitTestCritic(timeout=self.config.sandbox_timeout))

    def success(self, rows, responses) -> list[bool]:
        problems = [
            {"prompt": problem, "test": test, "entry_point": entry_point}
            for problem, test, entry_point in zip(rows["problem"], rows["test"], rows["entry_point"])
        ]
        results = evaluate_completions(problems, list(responses), timeout=self.config.sandbox_timeout)
        return [r.passed for r in results]

    def rollout_success(self, reward_fn, prompts, responses, context) -> list[bool]:
        if isinstance(reward_fn, UnitTestReward) and len(reward_fn.last_passed) == len(responses):
            return [bool(p) for p in reward_fn.last_passed]
        return self.success(context, responses)


def demo_task(config: DemoConfig) -> DemoTask:
    """The :class:`DemoTask` of ``config.task``."""
    tasks = {"constrained_text": ConstrainedTextDemo, "humaneval": HumanEvalDemo}
    if config.task not in tasks:
        raise ValueError(f"--task must be one of {sorted(tasks)}, got {config.task!r}.")
    return tasks[config.task](config)


class SuccessRecorder:
    """Wraps the reward function given to the trainer; after every call (one PPO rollout) it appends
    ``(successes, judged responses)`` by the task's metric to :attr:`records`. A failure of the success measurement
    is logged and recorded as ``(0, 0)`` (no data for that update); it never changes the rewards."""

    def __init__(self, reward_fn, task: DemoTask) -> None:
        self.reward_fn = reward_fn
        self.task = task
        self.records: list[tuple[int, int]] = []
        self.failures = 0

    def __repr__(self) -> str:
        return repr(self.reward_fn)

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str], **context: Any) -> list[Any]:
        outputs = self.reward_fn(prompts, responses, **context)
        try:
            passed = self.task.rollout_success(self.reward_fn, prompts, responses, context)
            if len(passed) != len(responses):
                raise ValueError(f"{len(passed)} verdicts for {len(responses)} responses")
            self.records.append((sum(bool(p) for p in passed), len(passed)))
        except Exception as err:  # the curve loses one point; training goes on
            self.failures += 1
            self.records.append((0, 0))
            logger.warning("could not measure the success of rollout %d: %s", len(self.records), err)
        return outputs
