"""The evidence tasks and their programmatic critics (``trl_text2grad.tasks.constrained_text`` / ``.simple_code``),
and the run/plot plumbing of ``bench/learning_curves.py``, run as a script (tests never import ``bench/``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_text2grad.spans import locate_critique
from trl_text2grad.tasks import constrained_text, simple_code
from trl_text2grad.tasks.constrained_text import ConstrainedTextCritic
from trl_text2grad.tasks.programmatic import collapse_to_scalar, seeded_cycle, split_items
from trl_text2grad.tasks.registry import get_task
from trl_text2grad.tasks.simple_code import PROBLEMS, SimpleCodeCritic, code_range

REPO = Path(__file__).resolve().parents[1]
LEARNING_CURVES = REPO / "bench" / "learning_curves.py"


def _quoted(response, judgement):
    return [(response[s:e], score) for s, e, score in judgement.spans]


# ---------------------------------------------------------------------------------------------------------------
# shared parts: scalar collapse, seeded rows, splits, registry
# ---------------------------------------------------------------------------------------------------------------


def test_collapse_to_scalar():
    assert collapse_to_scalar([]) == 0.0
    assert collapse_to_scalar([(0, 1, 1.0), (2, 3, -1.0), (4, 5, -1.0)]) == pytest.approx(-1 / 3)


def test_seeded_cycle_covers_every_item_per_pass_and_depends_on_the_seed():
    items = list(range(5))
    rows = seeded_cycle(items, 12, seed=3)
    assert sorted(rows[:5]) == items and sorted(rows[5:10]) == items and len(rows) == 12
    assert rows == seeded_cycle(items, 12, seed=3) and rows != seeded_cycle(items, 12, seed=4)
    with pytest.raises(ValueError, match="no items"):
        seeded_cycle([], 1, 0)


def test_splits_partition_the_items():
    items = [f"item{i}" for i in range(16)]
    train, test = split_items(items, "train"), split_items(items, "test")
    assert len(test) == 4 and not set(train) & set(test) and sorted(train + test) == sorted(items)
    assert split_items(items, "all") == items
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        split_items(items, "validation")


@pytest.mark.parametrize("name, columns", [("constrained_text", ["prompt", "required", "forbidden"]),
                                           ("simple_code", ["prompt", "entry_point", "tests"])])  # fmt: skip
def test_registered_tasks_load_rows_and_build_their_critic(name, columns):
    task = get_task(name)
    train, test, every = task.load("train"), task.load("test"), task.load("all")
    assert train.column_names == columns
    assert len(train) + len(test) == len(every)
    key = "required" if name == "constrained_text" else "entry_point"
    prompts = lambda rows: {row["prompt"][0]["content"] for row in rows}  # noqa: E731
    assert not prompts(train) & prompts(test), "a held-out prompt is also a training prompt"
    assert len(task.load("train", num_rows=50)) == 50 and set(task.load("train", num_rows=50)[key]) == set(train[key])
    with pytest.raises(ValueError, match="takes no dataset_name"):
        task.load("train", "some/hub-dataset")
    critic = task.critic_factory()
    assert isinstance(critic, (ConstrainedTextCritic, SimpleCodeCritic))


def test_unknown_task_name_is_rejected():
    with pytest.raises(ValueError, match="(?i)unknown task 'nope'"):
        get_task("nope")


# ---------------------------------------------------------------------------------------------------------------
# text critic
# ---------------------------------------------------------------------------------------------------------------


def test_text_critic_marks_forbidden_required_and_extra_sentences():
    response = "The ocean is blue, full of Water and waves. It is big."
    j = ConstrainedTextCritic().judge_one(response, "waves", ["water", "blue"])
    assert _quoted(response, j) == [("waves", 1.0), ("blue", -1.0), ("Water", -1.0), ("It is big.", -1.0)]
    assert j.success == 0.0
    assert j.details == {"required": 1.0, "forbidden_free": 0.0, "one_sentence": 0.0}
    assert j.scalar == pytest.approx((1 - 3) / 4)
    # good spans come first, then poor ones (poor wins on overlap downstream)
    scores = [s for _, _, s in j.spans]
    assert scores == sorted(scores, reverse=True)


def test_text_critic_success_and_inflections():
    critic = ConstrainedTextCritic()
    ok = critic.judge_one("Rolling waves crash on the shore at dawn.", "waves", ["water", "blue"])
    assert ok.success == 1.0 and ok.scalar == 1.0
    inflected = critic.judge_one("Waves and watering cans.", "waves", ["water"])
    assert ("watering", -1.0) in _quoted("Waves and watering cans.", inflected)
    # a word that merely contains the forbidden word is not flagged
    assert critic.judge_one("Waves over the waterfront", "waves", ["water"]).details["forbidden_free"] == 1.0
    # the required word only counts inside the first sentence
    late = critic.judge_one("A calm sea. The waves came later.", "waves", ["water"])
    assert late.details["required"] == 0.0 and late.success == 0.0
    # nothing said, nothing marked: scalar 0, no success
    empty = critic.judge_one("", "waves", ["water"])
    assert empty.spans == [] and empty.scalar == 0.0 and empty.success == 0.0


def test_text_critique_quotes_locate_back_to_the_same_spans():
    response = "A cat with soft fur sits. The pet purrs and fur flies."
    j = ConstrainedTextCritic().judge_one(response, "whiskers", ["pet", "fur"])
    located = locate_critique(response, j.critique, fuzzy=False)
    assert located.num_unlocated == 0
    assert sorted(located.span_tuples()) == sorted(j.spans)


def test_text_critic_follows_the_critic_protocol_and_checks_its_context():
    critic = ConstrainedTextCritic()
    responses = ["Rolling waves at dawn.", "The blue water. More."]
    context = {"required": ["waves", "waves"], "forbidden": [["water", "blue"], ["water", "blue"]]}
    critiques = critic(["p", "p"], responses, **context)
    assert [c.poor for c in critiques] == [[], ["blue", "water", "More."]]
    assert [collapse_to_scalar(s) for s in critic.last_spans] == [1.0, -1.0]
    assert [j.success for j in critic.last_judgements] == [1.0, 0.0] and critic.last_errors == [None, None]
    with pytest.raises(ValueError, match="required=.*forbidden="):
        critic.judge(responses, required=["waves", "waves"])
    with pytest.raises(ValueError, match="context 'forbidden'"):
        critic(["p", "p"], responses, required=["waves", "waves"], forbidden=[["water"]])
    with pytest.raises(TypeError, match="list of words"):
        critic.judge_one("Waves.", "waves", "water")
    with pytest.raises(ValueError, match="non-empty strings, got ''"):
        critic.judge_one("Waves.", "", ["water"])


def test_text_prompts_are_seeded_and_carry_context():
    a, b, c = (constrained_text.prompt_rows(20, s) for s in (0, 0, 1))
    assert a == b and a != c
    assert len(a) == 20
    row = a[0]
    assert row["prompt"][0]["role"] == "user"
    assert row["required"] in row["prompt"][0]["content"]
    assert all(f"'{w}'" in row["prompt"][0]["content"] for w in row["forbidden"])


# ---------------------------------------------------------------------------------------------------------------
# code critic (programs run in the sandbox through UnitTestCritic)
# ---------------------------------------------------------------------------------------------------------------

ADD_THREE_TESTS = "def check(candidate):\n    assert candidate(1) == 4\n    assert candidate(-3) == 0\n"


def test_code_range_fenced_truncated_and_bare():
    fenced = "Here:\n```python\ndef f(x):\n    return x\n```\nDone."
    s, e = code_range(fenced)
    assert fenced[s:e] == "def f(x):\n    return x\n"
    truncated = "```python\ndef f(x):\n    return"
    s, e = code_range(truncated)
    assert truncated[s:e] == "def f(x):\n    return"
    bare = "def f(x):\n    return x\nThis returns x."
    s, e = code_range(bare)
    assert bare[s:e] == "def f(x):\n    return x\n"
    assert code_range("No code here.") is None


@pytest.mark.parametrize(
    "response, success, poor_quotes, good_quotes",
    [
        (
            "```python\ndef add_three(x):\n    return x + 3\n```\nEasy.",
            1.0,
            [],
            ["def add_three(x):\n    return x + 3"],
        ),
        ("def add_three(x):\n    return x + 4\n", 0.0, ["return x + 4"], []),
        ("def add_three(x):\n    return x +\n", 0.0, ["return x +"], []),
        ("def add_three(x):\n    return y + 3\n", 0.0, ["return y + 3"], []),
        ("def add_3(x):\n    return x + 3\n", 0.0, ["def add_3(x):"], []),
        ("I would add three.", 0.0, ["I would add three."], []),
        (
            "```python\ndef add_three(x):\n    while True:\n        pass\n```",
            0.0,
            ["def add_three(x):\n    while True:\n        pass"],
            [],
        ),
    ],
    ids=["pass", "wrong-value", "syntax", "name-error", "misnamed", "no-code", "timeout"],
)
def test_code_critic_spans(response, success, poor_quotes, good_quotes):
    j = SimpleCodeCritic(timeout=2.0).judge([response], entry_point=["add_three"], tests=[ADD_THREE_TESTS])[0]
    assert j.success == success
    quotes = _quoted(response, j)
    assert [q for q, s in quotes if s > 0] == good_quotes
    assert [q for q, s in quotes if s < 0] == poor_quotes
    assert j.scalar == (1.0 if success else -1.0)
    assert all(0 <= a <= b <= len(response) for a, b, _ in j.spans)
    assert j.critique.good == good_quotes and j.critique.poor == poor_quotes


@pytest.mark.parametrize(
    "response",
    [
        # the process ends with status 0 before the tests run
        "```python\ndef add_three(x):\n    return 0\nimport os\nos._exit(0)\n```",
        "```python\nimport sys\ndef add_three(x):\n    sys.exit(0)\n```",
        # a value that claims to equal anything
        "```python\nclass A:\n    def __eq__(self, other):\n        return True\ndef add_three(x):\n    return A()\n```",
    ],
    ids=["os-exit-0", "sys-exit-in-function", "always-equal"],
)
def test_code_critic_verdict_cannot_be_forged_by_the_response(response):
    j = SimpleCodeCritic(timeout=5.0).judge([response], entry_point=["add_three"], tests=[ADD_THREE_TESTS])[0]
    assert j.success == 0.0 and all(score < 0 for _, _, score in j.spans) and j.spans


def _reference_solution(entry: str) -> str:
    fixed = {
        "last": "def last(xs):\n    return xs[-1]",
        "reverse": "def reverse(s):\n    return s[::-1]",
        "square": "def square(x):\n    return x * x",
        "total": "def total(xs):\n    return sum(xs)",
        "larger": "def larger(a, b):\n    return max(a, b)",
        "shout": "def shout(s):\n    return s.upper()",
        "count_items": "def count_items(xs):\n    return len(xs)",
        "is_negative": "def is_negative(x):\n    return x < 0",
        "halve": "def halve(x):\n    return x / 2",
        "first_char": "def first_char(s):\n    return s[0]",
    }
    if entry in fixed:
        return fixed[entry]
    families = {
        "add_": "def {e}(x):\n    return x + {k}",
        "times_": "def {e}(x):\n    return x * {k}",
        "divisible_by_": "def {e}(n):\n    return n % {k} == 0",
        "first_": "def {e}(xs):\n    return xs[:{k}]",
    }
    words = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
    prefix = next(p for p in families if entry.startswith(p) and entry[len(p) :] in words)
    return families[prefix].format(e=entry, k=words[entry[len(prefix) :]])


def test_every_problem_passes_its_reference_solution_and_fails_a_wrong_one():
    assert len(PROBLEMS) == 42 and len({p.entry_point for p in PROBLEMS}) == 42
    responses, entries, tests = [], [], []
    for problem in PROBLEMS:
        wrong = f"def {problem.entry_point}({problem.params}):\n    return None"
        for code in (_reference_solution(problem.entry_point), wrong):
            responses.append(f"```python\n{code}\n```")
            entries.append(problem.entry_point)
            tests.append(problem.tests)
    judgements = SimpleCodeCritic(max_workers=2).judge(responses, entry_point=entries, tests=tests)
    assert [j.success for j in judgements] == [1.0, 0.0] * len(PROBLEMS)


def test_code_rows_are_seeded_and_carry_the_tests():
    rows = simple_code.prompt_rows(50, 0)
    assert rows == simple_code.prompt_rows(50, 0) and rows != simple_code.prompt_rows(50, 1)
    by_name = {p.entry_point: p for p in PROBLEMS}
    for row in rows:
        problem = by_name[row["entry_point"]]
        assert f"`{problem.entry_point}({problem.params})`" in row["prompt"][0]["content"]
        assert row["tests"].startswith("def check(candidate):\n") and row["tests"].count("assert ") >= 2
    with pytest.raises(ValueError, match="entry_point=.*tests="):
        SimpleCodeCritic().judge(["x"], entry_point=["f"])
    with pytest.raises(ValueError, match="entry_point 0 must be a function name, got ''"):
        SimpleCodeCritic().judge(["x"], entry_point=[""], tests=[ADD_THREE_TESTS])
    with pytest.raises(ValueError, match="tests 0 must be HumanEval-style"):
        SimpleCodeCritic().judge(["x"], entry_point=["f"], tests=["assert f(1) == 2"])


# ---------------------------------------------------------------------------------------------------------------
# bench/learning_curves.py, run as a script
# ---------------------------------------------------------------------------------------------------------------


def _run_learning_curves(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, str(LEARNING_CURVES), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _fake_runs(directory, task="text"):
    for arm, slope in (("span", 0.1), ("scalar", 0.02)):
        for seed in range(3):
            with open(os.path.join(directory, f"{task}_{arm}_seed{seed}.jsonl"), "w") as f:
                for u in range(1, 7):
                    row = {
                        "task": task,
                        "arm": arm,
                        "seed": seed,
                        "update": u,
                        "episodes": 8 * u,
                        "success": min(1.0, 0.3 + slope * u + 0.01 * seed),
                        "critic_reward": slope * u,
                        "kl": 0.1 * u,
                        "wall_s": 10.0 * u,
                    }
                    f.write(json.dumps(row) + "\n")


def test_plot_mode_writes_pngs_summary_and_table(tmp_path):
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    runs.mkdir()
    _fake_runs(str(runs))
    proc = _run_learning_curves("--plot", "--out", str(runs), "--plot-dir", str(tmp_path / "plots"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "plots" / "text_curves.png").stat().st_size > 1000
    summary = (tmp_path / "plots" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3  # header + 2 arms
    assert "| text | span | 3 | 6 |" in proc.stdout
    by_arm = {row.split(",")[1]: row for row in summary[1:]}
    # span: 0.4, 0.5, 0.6, 0.7 (+0.01 * seed) -> the 3-update moving average first reaches 0.6 at update 4
    assert ",4;4;4," in by_arm["span"]
    assert ",-;-;-," in by_arm["scalar"]
    # span minus scalar over updates 4-6, per seed: (0.3 + 0.1u) - (0.3 + 0.02u) averaged over u = 4, 5, 6 = 0.4
    paired = (tmp_path / "plots" / "paired.md").read_text()
    assert "span − scalar, success over updates 4-6: +0.400, +0.400, +0.400 (seeds [0, 1, 2]); mean +0.400" in paired


def test_plot_mode_without_runs_fails_clearly(tmp_path):
    proc = _run_learning_curves("--plot", "--out", str(tmp_path))
    assert proc.returncode != 0 and "No run files" in proc.stderr


@pytest.mark.parametrize("arm", ["span", "scalar", "scalar-vmodel"])
def test_one_run_with_a_tiny_policy_writes_per_update_metrics(tmp_path, tiny_llama, arm):
    pytest.importorskip("peft")
    model_dir = tmp_path / "tiny"
    tiny_llama(seed=0).save_pretrained(model_dir)
    out = tmp_path / "runs"
    proc = _run_learning_curves(
        "--task", "text", "--arm", arm, "--seed", "3", "--updates", "2", "--batch-size", "2",
        "--response-length", "6", "--ppo-epochs", "1", "--model", str(model_dir), "--out", str(out),
        "--work-dir", str(tmp_path / "work"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / f"text_{arm}_seed3.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["success"] <= 1.0 and -1.0 <= r["critic_reward"] <= 1.0
        assert r["arm"] == arm and r["episodes"] == 2 * r["update"]
    assert rows[1]["kl"] == rows[1]["kl"]  # the trainer's KL was captured (not NaN)
    assert (out / f"text_{arm}_seed3.csv").exists()
    meta = json.loads((out / f"text_{arm}_seed3.meta.json").read_text())
    assert meta["config"]["arm"] == arm and len(meta["samples"]) == 2
    # the recorded verdicts are the package critic's, on each response's own prompt constraints
    critic = ConstrainedTextCritic()
    for sample in meta["samples"]:
        context = sample["context"]
        j = critic.judge_one(sample["response"], context["required"], context["forbidden"])
        assert (sample["critique"], sample["success"]) == (j.critique.text, j.success)


@pytest.mark.slow
@pytest.mark.ci_real_model
def test_one_update_with_smollm2_and_the_code_critic(tmp_path):
    """The real setup of docs/evidence.md (SmolLM2-135M-Instruct + LoRA + sandboxed code critic), cut to one update."""
    pytest.importorskip("peft")
    out = tmp_path / "runs"
    proc = _run_learning_curves(
        "--task", "code", "--arm", "span", "--seed", "0", "--updates", "1", "--batch-size", "2",
        "--response-length", "12", "--ppo-epochs", "1", "--out", str(out), "--work-dir", str(tmp_path / "work"),
        timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "code_span_seed0.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["num_spans"] >= 1.0  # the code critic marks every response (good function or a poor line)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # first rollout: LoRA starts at zero, policy == reference
    sample = json.loads((out / "code_span_seed0.meta.json").read_text())["samples"][0]
    j = SimpleCodeCritic().judge(
        [sample["response"]], [sample["context"]["entry_point"]], [sample["context"]["tests"]]
    )
    assert (sample["critique"], sample["success"]) == (j[0].critique.text, j[0].success)
    assert rows[0]["success"] in (0.0, 0.5, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# the trl112 arm: trl 1.12's PPOTrainer with the critic in the shape of a sequence-classification reward model
# ---------------------------------------------------------------------------------------------------------------


def _trl112_python() -> str:
    venv = os.environ.get(
        "TRL112_VENV", os.path.join(os.path.expanduser("~"), ".cache", "trl_text2grad", "trl112-venv")
    )
    return os.path.join(venv, "bin", "python")


@pytest.mark.slow
@pytest.mark.trl112
def test_trl112_arm_trains_trl_ppo_on_the_critic_scores(tmp_path, tiny_llama):
    """trl 1.12's PPOTrainer (separate venv) on a tiny policy: the scores its PPO logged are the critic's, each
    response judged against its own prompt's constraints."""
    if not os.path.exists(_trl112_python()):
        pytest.skip("trl 1.12 venv missing; create it with `bash scripts/make_trl112_venv.sh`")
    model_dir = tmp_path / "tiny"
    tiny_llama(seed=0).save_pretrained(model_dir)
    from trl_text2grad.models import default_model_path

    out = tmp_path / "runs"
    proc = _run_learning_curves(
        "--task", "text", "--arm", "trl112", "--seed", "1", "--updates", "3", "--batch-size", "4",
        "--response-length", "8", "--ppo-epochs", "1", "--model", str(model_dir), "--tokenizer",
        str(default_model_path()), "--out", str(out), "--work-dir", str(tmp_path / "work"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "text_trl112_seed1.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3]
    meta = json.loads((out / "text_trl112_seed1.meta.json").read_text())
    trl_logs = [log for log in meta["trainer_logs"] if "objective/scores" in log]
    assert len(trl_logs) == 3
    for row, log in zip(rows, trl_logs):
        assert log["objective/scores"] == pytest.approx(row["critic_reward"], abs=1e-6)
        assert row["kl"] == pytest.approx(log["objective/kl"])
    critic = ConstrainedTextCritic()
    for sample in meta["samples"]:
        context = sample["context"]
        j = critic.judge_one(sample["response"], context["required"], context["forbidden"])
        assert (sample["critique"], sample["success"]) == (j.critique.text, j.success)
