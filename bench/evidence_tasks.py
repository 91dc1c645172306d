"""Two offline tasks with programmatic critics for the span-vs-scalar evidence runs (``bench/learning_curves.py``).

Each task builds a prompt dataset (chat-message prompts plus per-row context columns) and judges responses with a
deterministic critic. A judgement carries

- the critic's character spans (``(start, end, score)``, +1 good / -1 poor) and the same judgement as a
  :class:`~trl_text2grad.spans.Critique` (quotes), which is what the **span** arm is rewarded with;
- ``scalar``: the same judgement collapsed to one number, the **normalised sum of span scores**
  ``sum(scores) / number of spans`` (in [-1, 1]; 0 when the critic marks nothing), which is what the **scalar**
  arm is rewarded with, at the last response token;
- ``success``: the task metric (1.0 / 0.0).

Tasks
-----
``text`` — constrained one-sentence descriptions. Prompt: *"Describe {topic} in one sentence. Use the word
'{required}' and do not use the words '{A}' or '{B}'."* The critic marks every forbidden word (and its plural/-ed/
-ing forms) as poor, every use of the required word as good, and everything after the end of the first sentence as
poor. Success: the required word is present, no forbidden word, nothing after the first sentence.

``code`` — easy generated Python problems (one-line functions such as "return x plus 3", "return the last element
of xs") checked by unit tests run in a separate Python process with a timeout and memory limit. HumanEval itself is
out of reach for SmolLM2-135M within a few dozen CPU updates (pass@1 ≈ 0), so these are easier problems of the same
kind. The critic marks the whole function good when the tests pass; otherwise it marks as poor the line the
traceback points at (syntax or runtime error in the solution), the ``def`` line when the function is missing or
misnamed, the ``return`` lines when an assertion failed (wrong value), or the whole response when it contains no
code. Success: the tests pass.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from trl_text2grad.spans import Critique

__all__ = [
    "Judgement",
    "TextConstraintTask",
    "CodeUnitTestTask",
    "TASKS",
    "get_task",
    "collapse_to_scalar",
]

Span = tuple[int, int, float]


@dataclass
class Judgement:
    """One critic verdict on one response.

    Args:
        spans: Character spans ``(start, end, score)`` into the response (good +1, poor -1).
        critique: The same judgement as a critique whose quotes are the span texts.
        success: Task metric (1.0 when the response satisfies the task, else 0.0).
        details: Per-criterion flags for logging (e.g. ``{"forbidden": 1}``).
    """

    spans: list[Span]
    critique: Critique
    success: float
    details: dict = field(default_factory=dict)

    @property
    def scalar(self) -> float:
        return collapse_to_scalar(self.spans)


def collapse_to_scalar(spans: Sequence[Span]) -> float:
    """The scalar arm's reward: the normalised sum of span scores, ``sum(score) / len(spans)``, 0 for no spans."""
    if not spans:
        return 0.0
    return float(sum(s for _, _, s in spans) / len(spans))


def _critique_from_spans(response: str, spans: Sequence[Span], text: str) -> Critique:
    good = [response[s:e] for s, e, score in spans if score > 0]
    poor = [response[s:e] for s, e, score in spans if score < 0]
    return Critique(text=text, good=good, poor=poor)


def _chat(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------------------------------------------
# text: constrained one-sentence descriptions
# --------------------------------------------------------------------------------------------------------------

# topic, required word, two forbidden words (the words SmolLM2 most likes to use for the topic)
_TEXT_TOPICS = [
    ("the ocean", "waves", "water", "blue"),
    ("a cat", "whiskers", "pet", "fur"),
    ("the sun", "morning", "hot", "star"),
    ("a tree", "roots", "green", "leaves"),
    ("rain", "clouds", "wet", "water"),
    ("coffee", "morning", "hot", "drink"),
    ("a city", "streets", "people", "buildings"),
    ("the moon", "night", "sky", "light"),
    ("a dog", "tail", "pet", "loyal"),
    ("a book", "pages", "read", "story"),
    ("a mountain", "snow", "tall", "high"),
    ("a river", "fish", "water", "flow"),
    ("winter", "snow", "cold", "ice"),
    ("bread", "oven", "food", "eat"),
    ("a guitar", "strings", "music", "play"),
    ("a bicycle", "wheels", "ride", "pedal"),
]

_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')\]]|$)")


def _word_pattern(word: str) -> re.Pattern:
    # the word and its simple inflections, case-insensitive, on word boundaries
    return re.compile(r"\b" + re.escape(word) + r"(?:s|es|ed|ing)?\b", re.IGNORECASE)


@dataclass
class TextConstraintTask:
    """Constrained one-sentence descriptions; see the module docstring."""

    name: str = "text"

    def prompts(self, num: int, seed: int) -> list[dict]:
        """``num`` prompt rows (cycling through the topics in a seeded order) with their context columns."""
        rng = random.Random(seed)
        order = list(range(len(_TEXT_TOPICS)))
        rows = []
        while len(rows) < num:
            rng.shuffle(order)
            for i in order:
                topic, required, a, b = _TEXT_TOPICS[i]
                content = (
                    f"Describe {topic} in one sentence. Use the word '{required}' and do not use the words "
                    f"'{a}' or '{b}'."
                )
                rows.append({"prompt": _chat(content), "required": required, "forbidden": [a, b]})
        return rows[:num]

    def judge_one(self, response: str, required: str, forbidden: Sequence[str]) -> Judgement:
        spans: list[Span] = []
        notes = []
        # first sentence = up to the first sentence terminator that is followed by whitespace/quote/end
        stripped_end = len(response.rstrip())
        match = _SENTENCE_END.search(response)
        first_end = match.end() if match else stripped_end
        tail_start = first_end
        while tail_start < len(response) and response[tail_start].isspace():
            tail_start += 1
        extra = tail_start < stripped_end
        n_required = 0
        for m in _word_pattern(required).finditer(response[:first_end]):
            spans.append((m.start(), m.end(), 1.0))
            n_required += 1
        n_forbidden = 0
        for word in forbidden:
            for m in _word_pattern(word).finditer(response):
                spans.append((m.start(), m.end(), -1.0))
                n_forbidden += 1
                notes.append(f"uses the forbidden word '{m.group(0)}'")
        if extra:
            spans.append((tail_start, stripped_end, -1.0))
            notes.append("continues after the first sentence")
        if n_required == 0:
            notes.append(f"does not use '{required}' in its sentence")
        else:
            notes.append(f"uses '{required}' as asked")
        success = float(n_required > 0 and n_forbidden == 0 and not extra and bool(response.strip()))
        spans.sort(key=lambda s: (s[2] < 0, s[0]))  # good first, then poor (poor wins on overlap)
        details = {
            "required": float(n_required > 0),
            "forbidden_free": float(n_forbidden == 0),
            "one_sentence": float(not extra),
        }
        return Judgement(spans, _critique_from_spans(response, spans, "; ".join(notes) + "."), success, details)

    def judge(
        self, responses: Sequence[str], required: Sequence[str], forbidden: Sequence[Sequence[str]], **_
    ) -> list[Judgement]:
        return [self.judge_one(r, q, f) for r, q, f in zip(responses, required, forbidden)]


# --------------------------------------------------------------------------------------------------------------
# code: easy generated Python problems with unit tests
# --------------------------------------------------------------------------------------------------------------


def _code_problems(k: int) -> list[tuple[str, str, str, list[str]]]:
    """(entry_point, signature, description, assert lines) for one constant ``k`` (2..9)."""
    words = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
    w = words[k]
    return [
        (
            f"add_{w}",
            "x",
            f"returns x plus {k}",
            [f"add_{w}(1) == {1 + k}", f"add_{w}(-{k}) == 0", f"add_{w}(10) == {10 + k}"],
        ),
        (
            f"times_{w}",
            "x",
            f"returns x multiplied by {k}",
            [f"times_{w}(1) == {k}", f"times_{w}(0) == 0", f"times_{w}(-2) == {-2 * k}"],
        ),
        (
            f"divisible_by_{w}",
            "n",
            f"returns True if n is divisible by {k} and False otherwise",
            [
                f"divisible_by_{w}({k}) is True",
                f"divisible_by_{w}({k * 3}) is True",
                f"divisible_by_{w}({k + 1}) is False",
            ],
        ),
        (
            f"first_{w}",
            "xs",
            f"returns the first {k} elements of the list xs",
            [f"first_{w}(list(range(20))) == list(range({k}))", f"first_{w}([]) == []"],
        ),
    ]


_FIXED_PROBLEMS = [
    ("last", "xs", "returns the last element of the list xs", ["last([1, 2, 3]) == 3", "last(['a']) == 'a'"]),
    ("reverse", "s", "returns the string s reversed", ["reverse('abc') == 'cba'", "reverse('') == ''"]),
    ("square", "x", "returns x squared", ["square(3) == 9", "square(-2) == 4", "square(0) == 0"]),
    ("total", "xs", "returns the sum of the numbers in the list xs", ["total([1, 2, 3]) == 6", "total([]) == 0"]),
    (
        "larger",
        "a, b",
        "returns the larger of a and b",
        ["larger(1, 2) == 2", "larger(5, -1) == 5", "larger(3, 3) == 3"],
    ),
    ("shout", "s", "returns the string s in upper case", ["shout('hi') == 'HI'", "shout('a b') == 'A B'"]),
    (
        "count_items",
        "xs",
        "returns the number of elements in the list xs",
        ["count_items([1, 2]) == 2", "count_items([]) == 0"],
    ),
    (
        "is_negative",
        "x",
        "returns True if x is less than zero",
        ["is_negative(-1) is True", "is_negative(0) is False", "is_negative(4) is False"],
    ),
    ("halve", "x", "returns x divided by 2", ["halve(4) == 2", "halve(3) == 1.5"]),
    (
        "first_char",
        "s",
        "returns the first character of the string s",
        ["first_char('hello') == 'h'", "first_char('z') == 'z'"],
    ),
]

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(?:def |import |from |class |@)", re.MULTILINE)
_TRACE_LINE = re.compile(r'File "([^"]+)", line (\d+)')


def extract_code(response: str) -> tuple[int, int] | None:
    """Character range of the code in ``response``: the first fenced block (closed or truncated), else the run of
    code-like lines starting at the first ``def``/``import`` line. ``None`` when there is no code."""
    m = _FENCE.search(response)
    if m and m.group(1).strip():
        return m.start(1), m.end(1)
    m = _CODE_START.search(response)
    if not m:
        return None
    start = m.start()
    lines_end = start
    for line in response[start:].splitlines(keepends=True):
        body = line.rstrip("\n")
        if body and not body[0].isspace() and not _CODE_START.match(body) and lines_end > start:
            break  # prose after the code
        lines_end += len(line)
    return start, lines_end


@dataclass
class SandboxOutcome:
    passed: bool
    stderr: str
    timed_out: bool


def _limit_resources(memory_mb: int):  # pragma: no cover - runs in the child
    def apply():
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.setsid()

    return apply


def run_tests(
    code: str, asserts: Sequence[str], timeout: float = 5.0, memory_mb: int = 512
) -> tuple[SandboxOutcome, int]:
    """Run ``code`` then the asserts in a fresh isolated Python process. Returns the outcome and the number of lines
    of ``code`` (assertion lines come after it)."""
    code = code.rstrip() + "\n"
    n_code_lines = code.count("\n")
    source = code + "\n" + "\n".join(f"assert {a}" for a in asserts) + "\n"
    with tempfile.TemporaryDirectory(prefix="t2g-evidence-") as tmp:
        path = os.path.join(tmp, "solution.py")
        with open(path, "w") as f:
            f.write(source)
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-S", path],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                preexec_fn=_limit_resources(memory_mb) if sys.platform.startswith("linux") else None,
            )
        except subprocess.TimeoutExpired:
            return SandboxOutcome(False, "timeout", True), n_code_lines
    return SandboxOutcome(proc.returncode == 0, proc.stderr[-4000:], False), n_code_lines


def _line_span(text: str, base: int, line_no: int) -> tuple[int, int] | None:
    """Character range (offset by ``base``) of 1-based line ``line_no`` of ``text``, stripped; None if blank."""
    lines = text.splitlines(keepends=True)
    if not 1 <= line_no <= len(lines):
        return None
    start = base + sum(len(x) for x in lines[: line_no - 1])
    line = lines[line_no - 1]
    lead = len(line) - len(line.lstrip())
    body = line.strip()
    if not body:
        return None
    return start + lead, start + lead + len(body)


@dataclass
class CodeUnitTestTask:
    """Easy generated Python problems judged by unit tests; see the module docstring."""

    name: str = "code"
    timeout: float = 5.0
    max_workers: int = 4

    def all_problems(self) -> list[tuple[str, str, str, list[str]]]:
        problems = list(_FIXED_PROBLEMS)
        for k in range(2, 10):
            problems.extend(_code_problems(k))
        return problems

    def prompts(self, num: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        problems = self.all_problems()
        order = list(range(len(problems)))
        rows = []
        while len(rows) < num:
            rng.shuffle(order)
            for i in order:
                entry, args, desc, asserts = problems[i]
                content = f"Write a Python function `{entry}({args})` that {desc}. Reply with only the code."
                rows.append({"prompt": _chat(content), "entry_point": entry, "tests": asserts})
        return rows[:num]

    def judge_one(self, response: str, entry_point: str, tests: Sequence[str]) -> Judgement:
        code_range = extract_code(response)
        stripped_end = len(response.rstrip())
        if code_range is None:
            spans = [(len(response) - len(response.lstrip()), stripped_end, -1.0)] if response.strip() else []
            return Judgement(
                spans, _critique_from_spans(response, spans, "The response contains no code."), 0.0, {"has_code": 0.0}
            )
        c0, c1 = code_range
        code = response[c0:c1]
        outcome, n_code_lines = run_tests(code, tests, timeout=self.timeout)
        code_lines = code.splitlines()
        def_line = next(
            (i + 1 for i, line in enumerate(code_lines) if re.match(rf"\s*def\s+{re.escape(entry_point)}\b", line)),
            None,
        )
        if outcome.passed:
            start = c0 + (sum(len(x) for x in code.splitlines(keepends=True)[: def_line - 1]) if def_line else 0)
            c_end = c0 + len(code.rstrip())
            spans = [(start, c_end, 1.0)] if c_end > start else []
            return Judgement(
                spans, _critique_from_spans(response, spans, "The function passes all tests."), 1.0, {"has_code": 1.0}
            )
        poor: list[tuple[int, int]] = []
        text = "The function fails the tests."
        solution_lines = [int(n) for f, n in _TRACE_LINE.findall(outcome.stderr) if f.endswith("solution.py")]
        error_line = solution_lines[-1] if solution_lines else None
        syntax = "SyntaxError" in outcome.stderr or "IndentationError" in outcome.stderr
        if outcome.timed_out:
            text = "The code does not finish (timeout)."
            poor = [(c0, c0 + len(code.rstrip()))]
        elif def_line is None:
            text = f"There is no function named `{entry_point}`."
            m = re.search(r"^\s*def .*$", code, re.MULTILINE)
            poor = (
                [(c0 + m.start() + (len(m.group(0)) - len(m.group(0).lstrip())), c0 + m.end())]
                if m
                else [(c0, c0 + len(code.rstrip()))]
            )
        elif error_line is not None and error_line <= n_code_lines:
            text = "The code raises an error on this line." if not syntax else "This line is not valid Python."
            span = _line_span(code, c0, error_line)
            poor = [span] if span else []
        else:
            text = "The function returns wrong values."
            base = sum(len(x) for x in code.splitlines(keepends=True)[: def_line - 1])
            for m in re.finditer(r"^[ \t]+return\b.*$", code[base:], re.MULTILINE):
                s = c0 + base + m.start() + (len(m.group(0)) - len(m.group(0).lstrip()))
                poor.append((s, c0 + base + m.end()))
            if not poor:
                span = _line_span(code, c0, def_line)
                poor = [span] if span else []
        spans = [(s, e, -1.0) for s, e in poor if e > s]
        if not spans:  # the critic must say something about a failure
            spans = [(c0, c0 + len(code.rstrip()), -1.0)]
        return Judgement(
            spans, _critique_from_spans(response, spans, text), 0.0, {"has_code": 1.0, "syntax_error": float(syntax)}
        )

    def judge(
        self, responses: Sequence[str], entry_point: Sequence[str], tests: Sequence[Sequence[str]], **_
    ) -> list[Judgement]:
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(self.judge_one, responses, entry_point, tests))


TASKS = {"text": TextConstraintTask, "code": CodeUnitTestTask}


def get_task(name: str):
    if name not in TASKS:
        raise ValueError(f"Unknown evidence task {name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[name]()
