"""HumanEval adapter: bundled data, problem-level split, code extraction, program assembly, pass@1."""

from __future__ import annotations

import pytest

from trl_text2grad.tasks.humaneval import (
    assemble_program,
    build_program,
    extract_code,
    extract_code_span,
    is_pytest_style,
    load_humaneval,
    pass_at_1,
    split_by_problem,
)


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def test_load_humaneval(humaneval):
    assert len(humaneval) == 164
    assert humaneval.column_names == ["task_id", "prompt", "canonical_solution", "test", "entry_point"]
    assert humaneval[0]["task_id"] == "HumanEval/0"


def test_split_by_problem_is_disjoint_and_deterministic(humaneval):
    from datasets import concatenate_datasets

    doubled = concatenate_datasets([humaneval, humaneval])  # two rows per problem
    split = split_by_problem(doubled, test_fraction=0.25, seed=3)
    train_ids, test_ids = set(split["train"]["task_id"]), set(split["test"]["task_id"])
    assert not train_ids & test_ids
    assert len(split["train"]) + len(split["test"]) == 328
    assert len(test_ids) == 41
    again = split_by_problem(doubled, test_fraction=0.25, seed=3)
    assert again["test"]["task_id"] == split["test"]["task_id"]
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_problem(humaneval, test_fraction=1.5)
    with pytest.raises(ValueError, match="no column"):
        split_by_problem(humaneval, key="problem")


def test_extract_code_variants():
    chat = "Here you go:\n```python\ndef f(x):\n    return x\n```\nExplanation: it returns x."
    assert extract_code(chat) == "def f(x):\n    return x"
    start, end = extract_code_span(chat)
    assert chat[start:end] == "def f(x):\n    return x"
    two = "```text\noutput 1\n```\n```py\nimport os\n```\n```python\ndef g():\n    pass\n```"
    assert extract_code(two) == "def g():\n    pass"
    assert extract_code("def h():\n    return 1\n") == "def h():\n    return 1\n"
    assert extract_code("```python\ndef k():\n    return 2") == "def k():\n    return 2"  # unterminated fence


def test_build_program_runs_canonical_and_chat_style(humaneval):
    from trl_text2grad.critics.sandbox import run_python

    row = humaneval[2]
    program = build_program(row["prompt"], row["canonical_solution"], row["test"], row["entry_point"])
    assert program.rstrip().endswith("check(truncate_number)")
    assert run_python(program, timeout=10).passed
    chat = "```python\ndef truncate_number(number: float) -> float:\n    return number - int(number)\n```"
    assert run_python(build_program(row["prompt"], extract_code(chat), row["test"], row["entry_point"])).passed
    asm = assemble_program(row["prompt"], extract_code(chat), row["test"], row["entry_point"])
    lines = asm.program.split("\n")
    assert lines[asm.code_first_line - 1].startswith("def truncate_number")
    assert asm.code_num_lines == 2


def test_prompt_helpers_are_available_to_chat_completions(humaneval):
    """HumanEval/38's prompt defines encode_cyclic, which decode_cyclic solutions call."""
    from trl_text2grad.critics.sandbox import run_python

    row = humaneval[38]
    chat = "```python\ndef decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n```"
    assert run_python(build_program(row["prompt"], extract_code(chat), row["test"], row["entry_point"])).passed


def test_pytest_style_tests():
    test = "from solution import add\n\ndef test_a():\n    assert add(1, 2) == 3\n\ndef test_b():\n    assert add(0, 0) == 0\n"
    assert is_pytest_style(test)
    from trl_text2grad.critics.sandbox import run_python

    assert run_python(build_program("Write add.", "def add(a, b):\n    return a + b", test, "add")).passed
    assert not run_python(build_program("Write add.", "def add(a, b):\n    return a - b", test, "add")).passed


def test_pass_at_1(humaneval):
    rows = humaneval.select(range(6))
    good = [r["canonical_solution"] for r in rows]
    assert pass_at_1(rows, good) == 1.0
    broken = list(good)
    broken[0] = "    return None\n"
    broken[1] = "    raise ValueError('nope')\n"
    assert pass_at_1(rows, broken) == pytest.approx(4 / 6)
    # several samples per problem: mean fraction correct per problem
    samples = [[g, "    return None\n"] for g in good]
    assert pass_at_1(rows, samples) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="6 problems but 2"):
        pass_at_1(rows, good[:2])
