"""The ``simple_code`` task: easy generated Python problems, judged by their unit tests in the sandbox.

42 one-line problems ("Write a Python function `add_three(x)` that returns x plus 3. Reply with only the code.",
"... `last(xs)` that returns the last element of the list xs", ...), each with 2-3 HumanEval-style tests
(``def check(candidate): assert candidate(1) == 4 ...``). HumanEval itself is out of reach for a 135M model within a
few dozen CPU updates (pass@1 close to 0), so these are easier problems of the same kind. Rows carry the context
columns ``entry_point`` (the function name) and ``tests`` (the ``check`` code).

The verdict (:class:`SimpleCodeCritic`) comes from :class:`~trl_text2grad.critics.UnitTestCritic`, which runs the
trusted tests against the untrusted code in the sandbox; nothing the response prints, writes or exits with decides
pass or fail there. The code is taken out of the response first (:func:`code_range`: the first fenced block, closed
or truncated, else the code-like lines from the first ``def``/``import`` line on). Spans:

- tests pass: the whole function, from its ``def`` line to the end of the code, is good;
- no code in the response: the whole response is poor;
- the tests did not finish (timeout, resource limit): the whole code is poor;
- no ``def`` of the asked name: the first ``def`` line is poor (the whole code when there is none);
- otherwise the poor span is the one :class:`~trl_text2grad.critics.UnitTestCritic` locates: the line of the
  response that raised (syntax or runtime error), or, when a test assertion failed (wrong value), the function's
  implementation lines without the signature (``good_span="body"`` of the critic: for these one-line problems
  that is the ``return`` line; in a longer body it is every line of it, where an earlier version of this task
  marked only the ``return`` lines); the whole code when the critic locates nothing.

Success: the tests pass. See :mod:`.programmatic` for the :class:`~.programmatic.Judgement`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

from ..critics import UnitTestCritic
from ..critics.prompts import get_template
from .programmatic import Judgement, JudgingCritic, Span, critique_from_spans, seeded_cycle, split_items

__all__ = [
    "CodeProblem",
    "PROBLEMS",
    "CRITIC_TEMPLATE",
    "SimpleCodeCritic",
    "code_range",
    "prompt_rows",
    "load",
]

#: The critique prompt for LLM critics of this task (the code review template).
CRITIC_TEMPLATE = get_template("code")


@dataclass(frozen=True)
class CodeProblem:
    """One generated problem.

    Attributes:
        entry_point: The function name.
        params: Its parameter list as written in the prompt (``"a, b"``).
        description: What it returns (``"returns x plus 3"``).
        asserts: Test expressions on ``candidate`` (``"candidate(1) == 4"``).
    """

    entry_point: str
    params: str
    description: str
    asserts: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return (
            f"Write a Python function `{self.entry_point}({self.params})` that {self.description}. "
            "Reply with only the code."
        )

    @property
    def tests(self) -> str:
        """HumanEval-style test code: ``def check(candidate)`` with one ``assert`` per expression."""
        body = "".join(f"    assert {expr}\n" for expr in self.asserts)
        return f"def check(candidate):\n{body}"


_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def _family(k: int) -> list[CodeProblem]:
    """The four problems of one constant ``k`` (2..9)."""
    w = _NUMBER_WORDS[k]
    return [
        CodeProblem(
            f"add_{w}", "x", f"returns x plus {k}", (f"candidate(1) == {1 + k}", f"candidate(-{k}) == 0",
                                                     f"candidate(10) == {10 + k}"),
        ),
        CodeProblem(
            f"times_{w}", "x", f"returns x multiplied by {k}", (f"candidate(1) == {k}", "candidate(0) == 0",
                                                               f"candidate(-2) == {-2 * k}"),
        ),
        CodeProblem(
            f"divisible_by_{w}", "n", f"returns True if n is divisible by {k} and False otherwise",
            (f"candidate({k}) is True", f"candidate({k * 3}) is True", f"candidate({k + 1}) is False"),
        ),
        CodeProblem(
            f"first_{w}", "xs", f"returns the first {k} elements of the list xs",
            (f"candidate(list(range(20))) == list(range({k}))", "candidate([]) == []"),
        ),
    ]  # fmt: skip


_FIXED = [
    CodeProblem("last", "xs", "returns the last element of the list xs", ("candidate([1, 2, 3]) == 3",
                                                                          "candidate(['a']) == 'a'")),
    CodeProblem("reverse", "s", "returns the string s reversed", ("candidate('abc') == 'cba'", "candidate('') == ''")),
    CodeProblem("square", "x", "returns x squared", ("candidate(3) == 9", "candidate(-2) == 4", "candidate(0) == 0")),
    CodeProblem("total", "xs", "returns the sum of the numbers in the list xs", ("candidate([1, 2, 3]) == 6",
                                                                                 "candidate([]) == 0")),
    CodeProblem("larger", "a, b", "returns the larger of a and b", ("candidate(1, 2) == 2", "candidate(5, -1) == 5",
                                                                    "candidate(3, 3) == 3")),
    CodeProblem("shout", "s", "returns the string s in upper case", ("candidate('hi') == 'HI'",
                                                                     "candidate('a b') == 'A B'")),
    CodeProblem("count_items", "xs", "returns the number of elements in the list xs", ("candidate([1, 2]) == 2",
                                                                                       "candidate([]) == 0")),
    CodeProblem("is_negative", "x", "returns True if x is less than zero", ("candidate(-1) is True",
                                                                            "candidate(0) is False",
                                                                            "candidate(4) is False")),
    CodeProblem("halve", "x", "returns x divided by 2", ("candidate(4) == 2", "candidate(3) == 1.5")),
    CodeProblem("first_char", "s", "returns the first character of the string s", ("candidate('hello') == 'h'",
                                                                                    "candidate('z') == 'z'")),
]  # fmt: skip

#: Every problem of the task, in a fixed order.
PROBLEMS: tuple[CodeProblem, ...] = tuple(_FIXED + [p for k in range(2, 10) for p in _family(k)])

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(?:def |import |from |class |@)", re.MULTILINE)


def code_range(response: str) -> tuple[int, int] | None:
    """Character range of the code in ``response``: the first fenced block (closed or truncated), else the run of
    code-like lines starting at the first ``def``/``import``/``from``/``class``/``@`` line. ``None``: no code."""
    m = _FENCE.search(response)
    if m and m.group(1).strip():
        return m.start(1), m.end(1)
    m = _CODE_START.search(response)
    if not m:
        return None
    start = lines_end = m.start()
    for line in response[start:].splitlines(keepends=True):
        body = line.rstrip("\n")
        if body and not body[0].isspace() and not _CODE_START.match(body) and lines_end > start:
            break  # prose after the code
        lines_end += len(line)
    return start, lines_end


def _line_start(text: str, line_index: int) -> int:
    """Character offset of 0-based line ``line_index`` of ``text``."""
    return sum(len(line) for line in text.splitlines(keepends=True)[:line_index])


def prompt_rows(num: int, seed: int, problems: Sequence[CodeProblem] = PROBLEMS) -> list[dict]:
    """``num`` prompt rows (chat ``prompt``, ``entry_point``, ``tests``), cycling through ``problems`` in orders
    drawn from ``seed`` (see :func:`~.programmatic.seeded_cycle`)."""
    return [
        {"prompt": [{"role": "user", "content": p.prompt}], "entry_point": p.entry_point, "tests": p.tests}
        for p in seeded_cycle(problems, num, seed)
    ]


def load(
    split: str = "train",
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    num_rows: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.25,
    split_seed: int = 0,
) -> Dataset:
    """The task's rows as a ``datasets.Dataset`` (columns ``prompt``, ``entry_point``, ``tests``).

    Args:
        split: ``train`` or ``test`` (a fixed partition of the problems: no problem in both; the problems of one
            family, e.g. ``add_two`` and ``add_three``, can fall on both sides) or ``all`` problems.
        dataset_name: Must be ``None``: the rows are generated, not downloaded.
        dataset_config: Must be ``None``.
        num_rows: Number of rows (default: one per problem of the split); more rows cycle through the problems.
        seed: Order of the rows.
        test_fraction: Share of the problems in ``test``.
        split_seed: Seed of the train/test partition.
    """
    if dataset_name is not None or dataset_config is not None:
        raise ValueError(
            "task 'simple_code' generates its problems; it takes no dataset_name/dataset_config "
            f"(got {dataset_name!r}/{dataset_config!r})."
        )
    problems = split_items(PROBLEMS, split, test_fraction, split_seed)
    rows = prompt_rows(len(problems) if num_rows is None else num_rows, seed, problems)
    return Dataset.from_dict({key: [row[key] for row in rows] for key in ("prompt", "entry_point", "tests")})


class SimpleCodeCritic(JudgingCritic):
    """The programmatic critic of the task (see the module docstring): the verdict of a
    :class:`~trl_text2grad.critics.UnitTestCritic`, with the task's spans. Context per sample: ``entry_point`` and
    ``tests`` (HumanEval-style ``check(candidate)`` code).

    Args:
        timeout: Wall-clock seconds per program.
        memory_mb: Memory limit per program.
        max_workers: Programs run in parallel.
    """

    def __init__(self, timeout: float = 5.0, memory_mb: int = 512, max_workers: int = 4) -> None:
        super().__init__()
        self.unit_tests = UnitTestCritic(
            timeout=timeout, memory_mb=memory_mb, max_workers=max_workers, good_span="body", extract=False
        )

    def judge(
        self,
        responses: Sequence[str],
        entry_point: Sequence[str] | None = None,
        tests: Sequence[str] | None = None,
        **_: object,
    ) -> list[Judgement]:
        """Verdicts on a batch; ``entry_point`` and ``tests`` hold one entry per response."""
        if entry_point is None or tests is None:
            raise ValueError(
                "SimpleCodeCritic needs per-sample context entry_point=[...] and tests=[...] (the 'entry_point' and "
                "'tests' columns of the task's rows)."
            )
        if not len(entry_point) == len(tests) == len(responses):
            raise ValueError(
                f"SimpleCodeCritic: {len(responses)} responses but {len(entry_point)} 'entry_point' and {len(tests)} "
                "'tests' entries; pass one per response."
            )
        for i, (response, name, test) in enumerate(zip(responses, entry_point, tests)):
            if not isinstance(response, str):
                raise TypeError(f"response {i} must be a string, got {type(response).__name__}")
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"entry_point {i} must be a function name, got {name!r}")
            if not isinstance(test, str) or "def check(" not in test:
                raise ValueError(f"tests {i} must be HumanEval-style code defining check(candidate), got {test!r:.80}")
        ranges = [code_range(r) for r in responses]
        todo = [i for i, rng in enumerate(ranges) if rng is not None]
        codes = [responses[i][ranges[i][0] : ranges[i][1]] for i in todo]
        verdicts: dict[int, tuple] = {}
        if todo:
            # the code alone is the critic's "response" (extract=False); no prompt text goes into the program
            critiques = self.unit_tests.critique(
                [""] * len(todo), codes, tests=[tests[i] for i in todo], entry_point=[entry_point[i] for i in todo]
            )
            for k, i in enumerate(todo):
                verdicts[i] = (critiques[k], self.unit_tests.last_spans[k], self.unit_tests.last_results[k])
        judgements = []
        for i, response in enumerate(responses):
            if ranges[i] is None:
                judgements.append(self._no_code(response))
            else:
                judgements.append(self._judge_code(response, ranges[i], entry_point[i], *verdicts[i]))
        return judgements

    @staticmethod
    def _no_code(response: str) -> Judgement:
        stripped = response.strip()
        spans: list[Span] = []
        if stripped:
            start = len(response) - len(response.lstrip())
            spans = [(start, len(response.rstrip()), -1.0)]
        text = "The response contains no code."
        return Judgement(spans, critique_from_spans(response, spans, text), 0.0, {"has_code": 0.0})

    @staticmethod
    def _judge_code(
        response: str, rng: tuple[int, int], entry_point: str, critique, critic_spans, result
    ) -> Judgement:
        c0, c1 = rng
        code = response[c0:c1]
        whole_code = (c0, c0 + len(code.rstrip()))
        lines = code.splitlines()
        def_pattern = re.compile(rf"\s*def\s+{re.escape(entry_point)}\b")
        def_line = next((i for i, line in enumerate(lines) if def_pattern.match(line)), None)
        passed = result is not None and bool(result.passed)
        if passed:
            start = c0 + (_line_start(code, def_line) if def_line is not None else 0)
            spans: list[Span] = [(start, whole_code[1], 1.0)] if whole_code[1] > start else []
            text = "The function passes all tests."
            return Judgement(spans, critique_from_spans(response, spans, text), 1.0, {"has_code": 1.0})
        timed_out = result is not None and bool(getattr(result, "timed_out", False))
        poor: list[tuple[int, int]]
        if timed_out:
            text = "The code does not finish (timeout)."
            poor = [whole_code]
        elif def_line is None:
            text = f"There is no function named `{entry_point}`."
            m = re.search(r"^[ \t]*def .*$", code, re.MULTILINE)
            poor = [(c0 + m.start() + len(m.group(0)) - len(m.group(0).lstrip()), c0 + m.end())] if m else [whole_code]
        else:
            text = critique.text
            poor = [(c0 + s, c0 + e) for s, e, score in critic_spans if score < 0]
        spans = [(s, e, -1.0) for s, e in poor if e > s]
        if not spans:  # a failure is always marked somewhere
            spans = [(whole_code[0], whole_code[1], -1.0)]
        # a logged detail only (the verdict never depends on it): the critic's error summary names a SyntaxError
        summary = str(getattr(result, "stderr", "") or "") + str(getattr(result, "exception", "") or "")
        syntax = float("SyntaxError" in summary or "IndentationError" in summary)
        details = {"has_code": 1.0, "syntax_error": syntax}
        return Judgement(spans, critique_from_spans(response, spans, text), 0.0, details)

    def __repr__(self) -> str:
        return f"SimpleCodeCritic(timeout={self.unit_tests.timeout}, memory_mb={self.unit_tests.memory_mb})"
