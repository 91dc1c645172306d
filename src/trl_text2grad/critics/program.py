"""A programmatic critic: run the response against the task's unit tests and quote what failed.

For each sample the code is taken out of the response (``extract_code``, default :func:`extract_code_span`: the
```python fence of a chat answer, or the whole response) and turned into a :class:`~trl_text2grad.critics.harness.
TestProgram` by ``build_program`` (default :func:`build_test_program`: HumanEval ``check(candidate)`` tests or
pytest-style ``test_*`` functions). :func:`~trl_text2grad.critics.harness.run_tests` then runs the candidate code in
the sandbox and the tests in a separate trusted process, so the verdict cannot be forged by the code (exiting early,
printing, objects whose ``__eq__`` always answers ``True``, tampering with the test harness: see
``docs/annotation.md``, "Security model"). Line numbers of the candidate's tracebacks are mapped back to the
response.

Poor spans (what the tests blame):

* an exception raised inside the response's code (including ``SyntaxError``) → the response line that raised (the
  deepest traceback frame that lies in the response);
* a failing assertion of the tests, a timeout, a resource limit or a candidate process that died → the
  implementation lines of the entry-point function (its body without the signature and the docstring), quoted as
  one span;
* code without the entry point, or no code at all → no span (nothing in the response can be blamed precisely);
  the critique says what is missing.

Good spans (passing code), ``good_span`` option:

* ``"last_line"`` (default): the last line of the entry-point function's implementation. A fixed-size positive
  signal placed at the *end* of the code, so that GAE carries the credit back over every token that produced the
  solution, without paying more for longer code. (The reference implementation gave +1 to every unflagged word,
  which rewards length; we do not.)
* ``"body"``: the whole implementation as one span (denser signal, but proportional to code length).
* ``"none"``: no good span; the pass/fail signal is only in the critique text.

Prose around the code block is never quoted.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from ..spans import CriticFailure, Critique, strip_span
from .base import BaseCritic, check_batch
from .harness import TestProgram, TestResult, check_sandbox_health, run_tests
from .prompts import prompt_to_text

logger = logging.getLogger(__name__)

#: ``(prompt, code, tests, entry_point) -> TestProgram``: how a task turns a response's code into a test run.
ProgramBuilder = Callable[[str, str, str, str], TestProgram]
#: ``response -> (start, end)``: where the code is in a response.
CodeExtractor = Callable[[str], tuple[int, int]]

__all__ = [
    "UnitTestCritic",
    "function_line_range",
    "build_test_program",
    "extract_code_span",
    "is_pytest_style",
    "defines_function",
    "ProgramBuilder",
    "CodeExtractor",
]

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)', re.MULTILINE)


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


def extract_code_span(response: str) -> tuple[int, int]:
    """Character range of the code in a model answer.

    The first fenced block tagged ``python``/``py`` (or untagged) that contains a ``def``, else the first such
    block, else — when there is no fence — the whole answer. An unterminated fence runs to the end.
    """
    blocks = [m for m in _FENCE.finditer(response) if m.group(1).lower() in ("", "python", "py", "python3")]
    if not blocks:
        blocks = list(_FENCE.finditer(response))
    if not blocks:
        return 0, len(response)
    chosen = next((m for m in blocks if re.search(r"^\s*def ", m.group(2), re.MULTILINE)), blocks[0])
    return chosen.start(2), chosen.end(2)


def defines_function(code: str, entry_point: str) -> bool:
    """True when ``code`` defines ``entry_point`` at column 0 (a full function, not a body continuation)."""
    return re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def is_pytest_style(test: str) -> bool:
    """True for pytest-style tests (``def test_*`` functions, e.g. KodCode) rather than HumanEval's ``check``."""
    return "def check(" not in test and re.search(r"^(def test_\w*\(|class Test\w*)", test, re.MULTILINE) is not None


def build_test_program(prompt: str, code: str, test: str, entry_point: str) -> TestProgram:
    """The default :data:`ProgramBuilder`: HumanEval-style and pytest-style tests.

    HumanEval style (``def check(candidate)``): the candidate module is the prompt followed by the code (a body
    continuation completes the prompt's stub; a full ``def`` redefines it), so the prompt's imports and helpers
    exist for the code; the prompt is also run on the trusted side before the tests (some tests use its helpers),
    then ``check(<proxy of entry_point>)``. Pytest style (KodCode: ``from solution import f`` and ``test_*``
    functions or ``Test*`` classes): the candidate module is the code alone, importable as ``solution`` by the
    tests, and every test runs in order (pytest fixtures are not supported); the prompt, a natural-language question
    there, is not part of either side.
    """
    code = code.rstrip() + "\n" if code.strip() else "\n"
    if is_pytest_style(test):
        return TestProgram(code, test, entry_point, "pytest", "", 1, code.count("\n"))
    head = prompt if prompt.endswith("\n") else prompt + "\n"
    if defines_function(code, entry_point):
        head += "\n"  # the prompt's docstring-only stub is valid Python; the code redefines it
    first_line = head.count("\n") + 1
    return TestProgram(head + code, test, entry_point, "check", prompt, first_line, code.count("\n"))


def _line_ranges(text: str) -> list[tuple[int, int]]:
    """Character range of each line of ``text`` (without the newline)."""
    ranges, position = [], 0
    for line in text.split("\n"):
        ranges.append((position, position + len(line)))
        position += len(line) + 1
    return ranges


def function_line_range(code: str, name: str) -> tuple[int, int, int] | None:
    """``(def_line, body_first_line, last_line)`` (0-based, inclusive) of top-level ``def name`` in ``code``.

    ``body_first_line`` skips the signature (which may span lines) and a leading docstring. ``None`` if absent.
    """
    lines = code.split("\n")
    pattern = re.compile(rf"^(async\s+)?def\s+{re.escape(name)}\s*\(")
    def_line = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
    if def_line is None:
        return None
    # end of signature: first line from def_line whose stripped text ends with ':' (outside parentheses)
    depth, sig_end = 0, def_line
    for i in range(def_line, len(lines)):
        depth += lines[i].count("(") - lines[i].count(")")
        if depth <= 0 and lines[i].rstrip().endswith(":"):
            sig_end = i
            break
    last = sig_end
    for i in range(sig_end + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped:
            continue
        if not lines[i][:1].isspace() and not stripped.startswith("#"):
            break
        last = i
    body_first = sig_end + 1
    # skip blank lines and a docstring
    while body_first <= last and not lines[body_first].strip():
        body_first += 1
    if body_first <= last:
        stripped = lines[body_first].strip()
        for quote in ('"""', "'''"):
            if stripped.lstrip("rRbBuU").startswith(quote):
                rest = stripped.lstrip("rRbBuU")[3:]
                if quote in rest:
                    body_first += 1
                else:
                    body_first += 1
                    while body_first <= last and quote not in lines[body_first]:
                        body_first += 1
                    body_first += 1
                break
        while body_first <= last and not lines[body_first].strip():
            body_first += 1
    if body_first > last:  # no implementation beyond the docstring: the signature is all there is
        return def_line, sig_end, sig_end
    return def_line, body_first, last


class UnitTestCritic(BaseCritic):
    """Critic that runs the response against unit tests (HumanEval ``check(candidate)`` or pytest-style tests).

    Context per sample: ``tests`` (HumanEval ``check(candidate)`` code or pytest-style ``test_*`` functions),
    ``entry_point`` (the function name; needed for ``check`` tests) and optionally ``problem`` (the raw task prompt
    placed before the code, when ``prompts`` are chat messages). Without ``tests`` the critic raises a
    ``ValueError``.

    Args:
        timeout: Wall-clock seconds per response (loading the code and running every test).
        memory_mb: Memory limit per process of the judged code.
        max_workers: Responses judged in parallel.
        good_span: What passing code gets quoted as good: ``"last_line"``, ``"body"`` or ``"none"``.
        extract: Take the code out of Markdown fences first (chat answers).
        build_program: ``(prompt, code, tests, entry_point) -> TestProgram`` (default :func:`build_test_program`);
            tasks with other test formats hand in their own.
        extract_code: ``response -> (start, end)`` of the code (default :func:`extract_code_span`).
        call_timeout: Seconds one call of the code may take (default: what is left of ``timeout``).
    """

    def __init__(
        self,
        timeout: float = 10.0,
        memory_mb: int = 1024,
        max_workers: int = 2,
        good_span: Literal["last_line", "body", "none"] = "last_line",
        extract: bool = True,
        build_program: ProgramBuilder | None = None,
        extract_code: CodeExtractor | None = None,
        call_timeout: float | None = None,
    ) -> None:
        super().__init__()
        if good_span not in ("last_line", "body", "none"):
            raise ValueError(f"good_span must be 'last_line', 'body' or 'none', got {good_span!r}")
        if not timeout > 0 or not memory_mb > 0:
            raise ValueError(f"UnitTestCritic: timeout ({timeout}) and memory_mb ({memory_mb}) must be positive")
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.max_workers = max(1, int(max_workers))
        self.good_span = good_span
        self.extract = extract
        self.build_program = build_program or build_test_program
        self.extract_code = extract_code or extract_code_span
        self.call_timeout = call_timeout
        self.last_results: list[TestResult | None] = []
        self.last_spans: list[list[tuple[int, int, float]]] = []
        self._healthy_at = -math.inf

    def critique(self, prompts: list[str], responses: list[str], **context) -> list[Critique]:
        check_batch(prompts, responses, context)
        tests = context.get("tests", context.get("test"))
        if tests is None:
            tests = [None] * len(prompts)  # every row fails with "missing_context" below (never a failing response)
        entry_points = context.get("entry_point")
        if entry_points is None:
            entry_points = [""] * len(prompts)
        # ``problem``: the raw task prompt (e.g. HumanEval's code stub) when ``prompts`` are chat messages
        problems = context.get("problem") or [None] * len(prompts)
        jobs: list[dict | None] = []
        failures: list[CriticFailure | None] = []
        for prompt, problem, response, test, entry_point in zip(prompts, problems, responses, tests, entry_points):
            if not isinstance(test, str):  # an empty string is left to the program builder (it may embed tests)
                failures.append(
                    CriticFailure(
                        "missing_context",
                        "UnitTestCritic needs the row's unit tests (context 'tests' or 'test'); this row has none, "
                        "so it was not judged.",
                    )
                )
                jobs.append(None)
                continue
            try:
                head = problem if isinstance(problem, str) and problem else prompt_to_text(prompt)
            except (TypeError, ValueError) as error:
                failures.append(CriticFailure("invalid_input", f"the row's prompt cannot be used: {error}"))
                jobs.append(None)
                continue
            failures.append(None)
            jobs.append(self._prepare(head, response or "", test, entry_point or ""))
        runnable = [job for job in jobs if job is not None]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            ran = iter(list(pool.map(self._run, runnable)))
        results = [next(ran) if job is not None else None for job in jobs]
        critiques, spans = [], []
        for index, (job, result) in enumerate(zip(jobs, results)):
            if failures[index] is not None:
                logger.warning("UnitTestCritic: sample %d not judged, %s", index, failures[index].message)
                critiques.append(Critique(error=failures[index]))
                spans.append([])
                continue
            critique, sample_spans = self._judge(job, result)
            if result is not None and result.kind == "bad_tests":  # the tests, not the response, are broken
                critique.error = CriticFailure("invalid_input", f"unusable tests: {result.reason}")
                logger.warning("UnitTestCritic: sample %d not judged, %s", index, critique.error.message)
                sample_spans = []
            critiques.append(critique)
            spans.append(sample_spans)
        self.last_results = results
        self.last_spans = spans
        return self._finish(critiques)

    def span_rewards(self, prompts: list[str], responses: list[str], **context) -> list[list[tuple[int, int, float]]]:
        """Like :meth:`critique` but returns the exact character spans ``(start, end, score)`` per response."""
        self.critique(prompts, responses, **context)
        return self.last_spans

    # -- internals -----------------------------------------------------------------------------------------------

    def _prepare(self, prompt: str, response: str, test: str, entry_point: str) -> dict:
        start, end = self.extract_code(response) if self.extract else (0, len(response))
        code = response[start:end]
        program = self.build_program(prompt, code, test, entry_point)
        return {
            "response": response,
            "code": code,
            "code_start": start,
            "entry_point": entry_point,
            "program": program,
        }

    def _run(self, job: dict) -> TestResult | None:
        if not job["code"].strip():
            return None
        result = run_tests(job["program"], timeout=self.timeout, memory_mb=self.memory_mb,
                           call_timeout=self.call_timeout)  # fmt: skip
        if result.kind in ("candidate_died", "harness") and not result.candidate_lines:
            # a healthy sandbox is re-checked at most once a minute; a broken one raises SandboxUnavailableError
            if time.monotonic() - self._healthy_at > 60.0:
                check_sandbox_health()
                self._healthy_at = time.monotonic()
        if result.kind == "harness":
            logger.warning("UnitTestCritic: the test harness failed (scored as failing): %s", result.reason)
        return result

    def _span_of_code_lines(self, job: dict, first: int, last: int) -> tuple[int, int] | None:
        """Character span in the response of code lines ``first..last`` (0-based), whitespace-trimmed."""
        ranges = _line_ranges(job["code"])
        if not (0 <= first <= last < len(ranges)):
            return None
        start, end = ranges[first][0] + job["code_start"], ranges[last][1] + job["code_start"]
        start, end = strip_span(job["response"], start, end)
        return (start, end) if end > start else None

    def _raising_code_line(self, job: dict, result: TestResult) -> int | None:
        """0-based code line of the deepest candidate traceback frame inside the response's code."""
        program: TestProgram = job["program"]
        for line in reversed(result.candidate_lines):
            index = line - program.code_first_line
            if 0 <= index < program.code_num_lines:
                return index
        return None

    def _judge(self, job: dict, result: TestResult | None) -> tuple[Critique, list[tuple[int, int, float]]]:
        response, entry_point = job["response"], job["entry_point"]
        if result is None:
            return Critique("The response contains no code to test.", [], []), []
        function = function_line_range(job["code"], entry_point)
        if function is None and job["code"][:1].isspace():
            # a body continuation of the prompt (base-model style): all its non-blank lines are the body
            nonblank = [i for i, line in enumerate(job["code"].split("\n")) if line.strip()]
            if nonblank:
                function = (-1, nonblank[0], nonblank[-1])
        body = None
        if function is not None:
            body = self._span_of_code_lines(job, function[1], function[2])

        if result.passed:
            spans: list[tuple[int, int, float]] = []
            if function is not None and self.good_span != "none":
                if self.good_span == "body":
                    span = body
                else:
                    span = self._span_of_code_lines(job, function[2], function[2])
                if span is not None:
                    spans.append((span[0], span[1], 1.0))
            text = f"All unit tests passed for `{entry_point}`."
            return Critique(text, [response[s:e] for s, e, _ in spans], []), spans

        if result.kind == "bad_tests":
            return Critique(f"The unit tests of this sample cannot be run ({result.reason}); not judged.", [], []), []
        exception = result.exception
        raising = self._raising_code_line(job, result) if result.kind == "candidate_exception" else None
        poor: tuple[int, int] | None = None
        missing = result.kind == "missing" or (
            result.kind == "test_error" and exception.startswith("ImportError: cannot import name")
        )
        if raising is not None:
            poor = self._span_of_code_lines(job, raising, raising)
            where = f"`{response[poor[0] : poor[1]]}`" if poor else f"line {raising + 1} of the code"
            if exception.startswith("AssertionError"):
                text = f"An assertion inside the code failed at {where}: {exception}"
            else:
                text = f"The code raised an error at {where}: {exception or result.reason}"
        elif result.kind in ("timeout", "candidate_died", "protocol"):
            poor = body
            text = f"The tests of `{entry_point}` did not finish: {result.reason}."
        elif missing:
            text = f"The code does not define the function `{entry_point}` that the tests call."
        elif result.kind == "assertion":
            poor = body
            text = f"`{entry_point}` returns wrong results: a unit test {result.reason}."
        else:
            poor = body
            text = f"The unit tests of `{entry_point}` failed: {result.reason}."
        if function is None and "does not define" not in text:
            text = f"The response does not define `{entry_point}`; " + text[0].lower() + text[1:]
        spans = [(poor[0], poor[1], -1.0)] if poor else []
        return Critique(text, [], [response[s:e] for s, e, _ in spans]), spans

    def __repr__(self) -> str:
        return f"UnitTestCritic(timeout={self.timeout}, memory_mb={self.memory_mb}, good_span={self.good_span!r})"
