"""UnitTestCritic: sandboxed execution of responses against unit tests, failures quoted as poor spans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trl_text2grad.critics.program import UnitTestCritic, function_line_range
from trl_text2grad.spans import locate_critique
from trl_text2grad.tasks.humaneval import load_humaneval

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def problem():
    return load_humaneval()[2]  # truncate_number


def _run(critic, problem, responses):
    return critic.critique(
        [problem["prompt"]] * len(responses),
        responses,
        tests=[problem["test"]] * len(responses),
        entry_point=[problem["entry_point"]] * len(responses),
    )


def _fence(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nIt handles all cases."


def test_passing_chat_answer_gets_last_line_as_good(problem):
    critic = UnitTestCritic(timeout=10)
    response = _fence(
        'def truncate_number(number: float) -> float:\n    """Decimal part."""\n    whole = int(number)\n    return number - whole'
    )
    (critique,) = _run(critic, problem, [response])
    assert "passed" in critique.text
    assert critique.good == ["return number - whole"] and critique.poor == []
    ((start, end, score),) = critic.last_spans[0]
    assert response[start:end] == "return number - whole" and score == 1.0
    assert critic.last_results[0].passed


def test_good_span_modes(problem):
    response = _fence(
        "def truncate_number(number: float) -> float:\n    whole = int(number)\n    return number - whole"
    )
    (body,) = _run(UnitTestCritic(good_span="body"), problem, [response])
    assert body.good == ["whole = int(number)\n    return number - whole"]
    (none,) = _run(UnitTestCritic(good_span="none"), problem, [response])
    assert none.good == [] and "passed" in none.text
    with pytest.raises(ValueError, match="good_span"):
        UnitTestCritic(good_span="all")


def test_failing_assertion_blames_the_function_body(problem):
    critic = UnitTestCritic()
    response = _fence(
        "def truncate_number(number: float) -> float:\n    whole = round(number)\n    return number - whole"
    )
    (critique,) = _run(critic, problem, [response])
    assert "assertion failed" in critique.text
    assert critique.poor == ["whole = round(number)\n    return number - whole"]
    assert critique.good == []
    located = locate_critique(response, critique)
    assert located.num_unlocated == 0
    assert located.span_tuples() == critic.last_spans[0]


def test_exception_blames_the_raising_line(problem):
    critic = UnitTestCritic()
    response = _fence(
        "def truncate_number(number: float) -> float:\n    parts = str(number).split('.')\n"
        "    digits = parts[3]\n    return float('0.' + digits)"
    )
    (critique,) = _run(critic, problem, [response])
    assert critique.poor == ["digits = parts[3]"]
    assert "IndexError" in critique.text
    ((start, end, score),) = critic.last_spans[0]
    assert response[start:end] == "digits = parts[3]" and score == -1.0


def test_syntax_error_blames_its_line(problem):
    critic = UnitTestCritic()
    response = _fence("def truncate_number(number: float) -> float\n    return number % 1.0")
    (critique,) = _run(critic, problem, [response])
    assert critique.poor == ["def truncate_number(number: float) -> float"]
    assert "SyntaxError" in critique.text


def test_timeout_and_hostile_code_are_contained(problem):
    critic = UnitTestCritic(timeout=1.5)
    looping = _fence("def truncate_number(number: float) -> float:\n    while True:\n        pass")
    hostile = _fence(
        "def truncate_number(number: float) -> float:\n    secret = open('/etc/passwd').read()\n    return number % 1.0"
    )
    loop_critique, hostile_critique = _run(critic, problem, [looping, hostile])
    assert "did not finish" in loop_critique.text and "timeout" in loop_critique.text
    assert loop_critique.poor == ["while True:\n        pass"]
    assert hostile_critique.poor == ["secret = open('/etc/passwd').read()"]  # the host's /etc is not there
    assert "FileNotFoundError" in hostile_critique.text


def test_early_exit_and_always_equal_results_fail(problem):
    """What used to pass by exit status or by an object equal to everything fails, blaming the function body."""
    critic = UnitTestCritic(timeout=5)
    exits = _fence("import os\n\ndef truncate_number(number: float) -> float:\n    os._exit(0)")
    equal = _fence(
        "class Anything:\n    def __eq__(self, other):\n        return True\n\n"
        "def truncate_number(number: float) -> float:\n    return Anything()"
    )
    exit_critique, equal_critique = _run(critic, problem, [exits, equal])
    assert "passed" not in exit_critique.text and exit_critique.poor == ["os._exit(0)"]
    assert "passed" not in equal_critique.text and equal_critique.poor == ["return Anything()"]
    assert [r.passed for r in critic.last_results] == [False, False]


def test_missing_function_and_missing_code(problem):
    critic = UnitTestCritic()
    wrong_name, no_code = _run(critic, problem, [_fence("def other(x):\n    return 0.5"), ""])
    assert "does not define `truncate_number`" in wrong_name.text and wrong_name.poor == []
    assert "no code" in no_code.text and critic.last_results[1] is None


def test_base_model_continuation(problem):
    critic = UnitTestCritic()
    (critique,) = _run(critic, problem, ["    return number % 1.0\n"])
    assert critique.good == ["return number % 1.0"]


def test_kodcode_fixture_rows():
    rows = [json.loads(line) for line in (FIXTURES / "kodcode_light_rl.jsonl").read_text().splitlines()]
    critic = UnitTestCritic()
    critiques = critic.critique(
        [r["question"] for r in rows],
        [r["response"] for r in rows],
        tests=[r["test"] for r in rows],
        entry_point=[r["test_info"][0]["function_name"] for r in rows],
    )
    wrong_parity, correct, zero_division = critiques
    assert "assertion failed" in wrong_parity.text and "if n % 2 == 1:" in wrong_parity.poor[0]
    assert "passed" in correct.text and correct.good == ["return ' '.join(reversed(words))"]
    assert zero_division.poor == ["result = a / b"] and "ZeroDivisionError" in zero_division.text


def test_context_is_required(problem):
    critic = UnitTestCritic()
    code = "```python\ndef f():\n    return 1\n```"
    missing, empty = critic.critique(["", ""], [code, code], tests=[None, " "], entry_point=["f", "f"])
    # a row without tests, or with tests that define nothing, is a counted failure, never a failing response
    assert missing.failed and missing.error.kind == "missing_context" and missing.poor == []
    assert empty.failed and empty.error.kind == "invalid_input" and empty.poor == []
    assert critic.last_spans == [[], []] and critic.last_results[0] is None
    assert critic.last_failures[0].kind == "missing_context" and "tests" in critic.last_errors[0]
    (no_column,) = critic.critique(["p"], ["r"])
    assert no_column.error.kind == "missing_context"
    with pytest.raises(ValueError, match="one entry per sample"):
        UnitTestCritic().critique(["p"], ["r"], tests=["a", "b"])


def test_function_line_range():
    code = 'x = 1\n\ndef f(a,\n      b):\n    """Doc\n    more."""\n\n    y = a\n    return y\n\nprint(f(1, 2))'
    assert function_line_range(code, "f") == (2, 7, 8)
    assert function_line_range(code, "g") is None
    assert function_line_range("def f():\n    '''only doc'''\n", "f") == (0, 0, 0)


@pytest.mark.slow
def test_unit_test_critic_on_smollm2_humaneval_completions():
    """The default SmolLM2 answers a few HumanEval problems in chat form; the critic judges each one."""
    from trl_text2grad.models import load_default_model, load_default_tokenizer

    tokenizer, model = load_default_tokenizer(), load_default_model()
    problems = load_humaneval().select([0, 2, 12])
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Complete this Python function:\n```python\n" + p["prompt"] + "```"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in problems
    ]
    encoded = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    output = model.generate(**encoded, max_new_tokens=96, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    responses = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    critic = UnitTestCritic(timeout=10)
    critiques = critic.critique(
        problems["prompt"], responses, tests=problems["test"], entry_point=problems["entry_point"]
    )
    assert len(critiques) == 3
    for response, critique, spans, result in zip(responses, critiques, critic.last_spans, critic.last_results):
        assert critique.text
        for start, end, _ in spans:  # every span indexes the response
            assert 0 <= start < end <= len(response)
        if result is not None and result.passed:
            assert critique.poor == []
        elif spans:
            assert all(score == -1.0 for _, _, score in spans)


def test_problem_context_replaces_chat_prompt(problem):
    """With chat-message prompts, the raw problem (context ``problem``) heads the program."""
    critic = UnitTestCritic()
    chat_prompt = [{"role": "user", "content": "Complete the function truncate_number."}]
    (critique,) = critic.critique(
        [chat_prompt],
        [_fence("def truncate_number(number: float) -> float:\n    return number % 1.0")],
        tests=[problem["test"]],
        entry_point=[problem["entry_point"]],
        problem=[problem["prompt"]],
    )
    assert "passed" in critique.text


def test_broken_sandbox_is_a_critic_error_not_a_poor_span(problem, monkeypatch):
    from trl_text2grad.critics import harness, sandbox

    real_launch = harness.launch
    monkeypatch.setattr(harness, "launch", lambda *a, **k: real_launch(*a, **{**k, "python": "/nonexistent/python"}))
    critic = UnitTestCritic(timeout=10)
    response = _fence("def truncate_number(number: float) -> float:\n    return number % 1.0")
    with pytest.raises(sandbox.SandboxUnavailableError):
        _run(critic, problem, [response])


def test_deprecated_module_still_imports():
    import importlib
    import sys

    sys.modules.pop("trl_text2grad.critics.unit_tests", None)
    with pytest.warns(DeprecationWarning, match="critics.program"):
        module = importlib.import_module("trl_text2grad.critics.unit_tests")
    from trl_text2grad.critics import UnitTestCritic as Exported

    assert module.UnitTestCritic is UnitTestCritic is Exported


def test_program_critic_does_not_import_tasks():
    import ast

    source = (Path(__file__).parents[1] / "src/trl_text2grad/critics/program.py").read_text()
    imported = [n.module or "" for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if "tasks" in m]


def test_custom_program_builder_is_used(problem):
    from trl_text2grad.critics.harness import TestProgram

    def builder(prompt, code, tests, entry_point):
        return TestProgram(code, "def check(f):\n    assert f(2) == 4\n", "double", "check", "", 1, code.count("\n"))

    critic = UnitTestCritic(build_program=builder, extract_code=lambda r: (0, len(r)))
    good, bad = critic.critique(
        ["p", "p"], ["def double(x):\n    return 2 * x\n", "def double(x):\n    return x\n"], tests=["", ""],
        entry_point=["double", "double"],
    )  # fmt: skip
    assert "passed" in good.text and "wrong results" in bad.text


# --- the trusted harness: what crosses the process boundary ---------------------------------------------------------


def _pytest_run(candidate: str, tests: str, **kwargs):
    from trl_text2grad.critics.harness import TestProgram, run_tests

    return run_tests(TestProgram(candidate, tests, "", "pytest"), timeout=kwargs.pop("timeout", 15), **kwargs)


def test_harness_pytest_style_features():
    candidate = (
        "import os\nLIMIT = 3\n\ndef rotate(items):\n    items.reverse()\n\ndef parse(text):\n"
        "    if not text:\n        raise ValueError('empty')\n    return {'n': int(text), 'pair': (1, 2.5), 's': {1}}\n\n"
        "class Counter:\n    def __init__(self):\n        self.count = 0\n    def add(self, k=1):\n"
        "        self.count += k\n        return self.count\n\ndef evens(n):\n    return (i for i in range(n) if i % 2 == 0)\n"
    )
    tests = (
        "import pytest\nfrom solution import *\nimport solution\n\n"
        "def test_in_place():\n    data = [1, 2, 3]\n    assert rotate(data) is None\n    assert data == [3, 2, 1]\n\n"
        "def test_values_and_exceptions():\n    assert parse('7') == {'n': 7, 'pair': (1, 2.5), 's': {1}}\n"
        "    with pytest.raises(ValueError, match='empty'):\n        parse('')\n\n"
        "class TestCounter:\n    def test_instance(self):\n        c = Counter()\n        c.add()\n"
        "        assert c.add(k=2) == 3 and c.count == 3 and solution.LIMIT == LIMIT == 3\n\n"
        "def test_generator():\n    assert list(evens(7)) == [0, 2, 4, 6]\n"
    )
    result = _pytest_run(candidate, tests)
    assert result.passed, result
    wrong = _pytest_run(candidate.replace("items.reverse()", "items.sort()"), tests)
    assert not wrong.passed and wrong.kind == "assertion" and "test_in_place" in wrong.reason


def test_harness_candidate_exceptions_and_limits():
    custom = _pytest_run(
        "class Oops(Exception):\n    pass\n\ndef f():\n    raise Oops('bad')\n",
        "from solution import f\n\ndef test_f():\n    try:\n        f()\n    except ValueError:\n        pass\n",
    )
    assert not custom.passed and custom.kind == "candidate_exception" and custom.exception == "Oops: bad"
    assert custom.candidate_lines == [5]
    callback = _pytest_run("def apply(fn, x):\n    return fn(x)\n", "from solution import apply\n\ndef test_a():\n"
                           "    assert apply(lambda v: v + 1, 1) == 2\n")  # fmt: skip
    assert not callback.passed and "cannot pass a function" in callback.reason  # the documented limitation
    slow = _pytest_run(
        "import time\n\ndef f():\n    time.sleep(30)\n", "from solution import f\n\ndef test_f():\n    f()\n",
        call_timeout=1.0,
    )  # fmt: skip
    assert not slow.passed and slow.kind == "timeout" and slow.duration_s < 10
    swallowed = _pytest_run(
        "import os\n\ndef f():\n    os._exit(0)\n",
        "from solution import f\n\ndef test_f():\n    try:\n        f()\n    except BaseException:\n        pass\n",
    )
    assert not swallowed.passed and swallowed.kind == "candidate_died"  # a test cannot swallow a dead candidate


def _bugged(solution: str) -> str:
    """The last ``return`` line replaced by ``return None`` (as bench/annotate.py does)."""
    lines = solution.rstrip("\n").split("\n")
    for i in range(len(lines) - 1, -1, -1):
        stripped = lines[i].lstrip()
        if stripped.startswith("return"):
            lines[i] = lines[i][: len(lines[i]) - len(stripped)] + "return None"
            return "\n".join(lines) + "\n"
    return solution + "\n    raise RuntimeError('bug')\n"


def test_humaneval_canonical_solutions_all_pass_and_bugged_ones_fail_with_a_poor_span():
    rows = list(load_humaneval())
    bugged_rows = rows[::4]
    responses = [f"```python\n{r['prompt']}{r['canonical_solution']}```" for r in rows]
    responses += [f"```python\n{r['prompt']}{_bugged(r['canonical_solution'])}```" for r in bugged_rows]
    every = rows + bugged_rows
    critic = UnitTestCritic(timeout=20, max_workers=2)
    critiques = critic.critique(
        [r["prompt"] for r in every], responses, tests=[r["test"] for r in every],
        entry_point=[r["entry_point"] for r in every],
    )  # fmt: skip
    passed = [r is not None and r.passed for r in critic.last_results]
    failing = [r["task_id"] for r, ok in zip(rows, passed) if not ok]
    assert not failing, f"canonical solutions judged failing: {failing}"
    assert not any(passed[len(rows) :]), "a bugged solution passed"
    assert all(c.poor and not c.good for c in critiques[len(rows) :])


def test_pass_at_1_cannot_be_faked_by_exit_status():
    from trl_text2grad.tasks.humaneval import pass_at_1

    rows = load_humaneval().select([2])
    assert pass_at_1(rows, ["    import os\n    os._exit(0)\n"]) == 0.0
    assert pass_at_1(rows, ["import sys\nsys.exit(0)\n"]) == 0.0
    assert pass_at_1(rows, ["    return number % 1.0\n"]) == 1.0


def test_broken_tests_are_reported_not_blamed_on_the_response(problem, caplog):
    critic = UnitTestCritic(timeout=10)
    response = _fence("def truncate_number(number: float) -> float:\n    return number % 1.0")
    with caplog.at_level("WARNING"):
        critiques = critic.critique(
            [problem["prompt"]] * 3, [response] * 3,
            tests=["def check(candidate:\n", "x = 1\n", "def test_x():\n    assert False\n"],
            entry_point=["truncate_number"] * 3,
        )  # fmt: skip
    syntax, no_check, failing = critiques
    assert "cannot be run" in syntax.text and syntax.poor == [] and "not valid Python" in critic.last_errors[0]
    assert "cannot be run" in no_check.text and "no check" in critic.last_errors[1]
    assert syntax.error.kind == no_check.error.kind == "invalid_input" and critic.last_spans[:2] == [[], []]
    assert critic.last_errors[2] is None and "assertion failed" in failing.text and failing.error is None
    assert sum("not judged" in r.getMessage() for r in caplog.records) == 2


def test_verdict_stays_unforgeable_without_a_sandbox(monkeypatch):
    """The unsafe opt-in drops the isolation, not the trusted test process."""
    from trl_text2grad.critics import sandbox
    from trl_text2grad.critics.harness import TestProgram, run_tests

    monkeypatch.setenv(sandbox.BACKEND_ENV, "none")
    monkeypatch.setenv(sandbox.ALLOW_UNSANDBOXED_ENV, "1")
    tests = "def check(candidate):\n    assert candidate(2) == 4\n"
    assert not run_tests(TestProgram("import os\ndef f(x):\n    os._exit(0)\n", tests, "f"), timeout=10).passed
    assert run_tests(TestProgram("def f(x):\n    return 2 * x\n", tests, "f"), timeout=10).passed
