"""Tests of the evidence benchmark: the programmatic critics (bench/evidence_tasks.py) and the run/plot plumbing of
bench/learning_curves.py (with a tiny random policy, so no real model is needed)."""

from __future__ import annotations

import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import evidence_tasks  # noqa: E402
import learning_curves  # noqa: E402
from evidence_tasks import CodeUnitTestTask, TextConstraintTask, collapse_to_scalar, extract_code  # noqa: E402

from trl_text2grad.spans import locate_critique  # noqa: E402


def _quoted(response, judgement):
    return [(response[s:e], score) for s, e, score in judgement.spans]


# ---------------------------------------------------------------------------------------------------------------
# text critic
# ---------------------------------------------------------------------------------------------------------------


def test_text_critic_marks_forbidden_required_and_extra_sentences():
    task = TextConstraintTask()
    response = "The ocean is blue, full of Water and waves. It is big."
    j = task.judge_one(response, "waves", ["water", "blue"])
    assert _quoted(response, j) == [("waves", 1.0), ("blue", -1.0), ("Water", -1.0), ("It is big.", -1.0)]
    assert j.success == 0.0
    assert j.details == {"required": 1.0, "forbidden_free": 0.0, "one_sentence": 0.0}
    assert j.scalar == pytest.approx((1 - 3) / 4)
    # good spans come first, then poor ones (poor wins on overlap downstream)
    scores = [s for _, _, s in j.spans]
    assert scores == sorted(scores, reverse=True)


def test_text_critic_success_and_inflections():
    task = TextConstraintTask()
    ok = task.judge_one("Rolling waves crash on the shore at dawn.", "waves", ["water", "blue"])
    assert ok.success == 1.0 and ok.scalar == 1.0
    inflected = task.judge_one("Waves and watering cans.", "waves", ["water"])
    assert ("watering", -1.0) in _quoted("Waves and watering cans.", inflected)
    # a word that merely contains the forbidden word is not flagged
    assert task.judge_one("Waves over the waterfront", "waves", ["water"]).details["forbidden_free"] == 1.0
    # the required word only counts inside the first sentence
    late = task.judge_one("A calm sea. The waves came later.", "waves", ["water"])
    assert late.details["required"] == 0.0 and late.success == 0.0
    # nothing said, nothing marked: scalar 0, no success
    empty = task.judge_one("", "waves", ["water"])
    assert empty.spans == [] and empty.scalar == 0.0 and empty.success == 0.0


def test_text_critique_quotes_locate_back_to_the_same_spans():
    task = TextConstraintTask()
    response = "A cat with soft fur sits. The pet purrs and fur flies."
    j = task.judge_one(response, "whiskers", ["pet", "fur"])
    located = locate_critique(response, j.critique, fuzzy=False)
    assert located.num_unlocated == 0
    assert sorted(located.span_tuples()) == sorted(j.spans)


def test_text_prompts_are_seeded_and_carry_context():
    task = TextConstraintTask()
    a, b, c = task.prompts(20, 0), task.prompts(20, 0), task.prompts(20, 1)
    assert a == b and a != c
    assert len(a) == 20
    row = a[0]
    assert row["prompt"][0]["role"] == "user"
    assert row["required"] in row["prompt"][0]["content"]
    assert all(w in row["prompt"][0]["content"] for w in row["forbidden"])


# ---------------------------------------------------------------------------------------------------------------
# code critic
# ---------------------------------------------------------------------------------------------------------------


def test_extract_code_fenced_truncated_and_bare():
    fenced = "Here:\n```python\ndef f(x):\n    return x\n```\nDone."
    s, e = extract_code(fenced)
    assert fenced[s:e] == "def f(x):\n    return x\n"
    truncated = "```python\ndef f(x):\n    return"
    s, e = extract_code(truncated)
    assert truncated[s:e] == "def f(x):\n    return"
    bare = "def f(x):\n    return x\nThis returns x."
    s, e = extract_code(bare)
    assert bare[s:e] == "def f(x):\n    return x\n"
    assert extract_code("No code here.") is None


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
        ("```python\ndef add_three(x):\n    while True:\n        pass\n```", 0.0, None, []),
    ],
    ids=["pass", "wrong-value", "syntax", "name-error", "misnamed", "no-code", "timeout"],
)
def test_code_critic_spans(response, success, poor_quotes, good_quotes):
    task = CodeUnitTestTask(timeout=2.0)
    j = task.judge_one(response, "add_three", ["add_three(1) == 4", "add_three(-3) == 0"])
    assert j.success == success
    quotes = _quoted(response, j)
    assert [q for q, s in quotes if s > 0] == good_quotes
    if poor_quotes is not None:
        assert [q for q, s in quotes if s < 0] == poor_quotes
    else:
        assert any(s < 0 for _, s in quotes)
    assert j.scalar == (1.0 if success else -1.0)
    assert all(0 <= a <= b <= len(response) for a, b, _ in j.spans)


def test_code_problems_have_correct_reference_solutions():
    # every generated problem's tests are satisfiable (checked with hand-written reference solutions)
    refs = {
        "add_": "def {e}(x):\n    return x + {k}",
        "times_": "def {e}(x):\n    return x * {k}",
        "divisible_by_": "def {e}(n):\n    return n % {k} == 0",
        "first_": "def {e}(xs):\n    return xs[:{k}]",
    }
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
    words = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
    task = CodeUnitTestTask()
    responses, entries, tests = [], [], []
    for entry, _, _, asserts in task.all_problems():
        if entry in fixed:
            code = fixed[entry]
        else:
            prefix = next(p for p in refs if entry.startswith(p) and entry[len(p) :] in words)
            code = refs[prefix].format(e=entry, k=words[entry[len(prefix) :]])
        responses.append(f"```python\n{code}\n```")
        entries.append(entry)
        tests.append(asserts)
    judgements = task.judge(responses, entry_point=entries, tests=tests)
    assert [j.success for j in judgements] == [1.0] * len(responses)


def test_collapse_to_scalar():
    assert collapse_to_scalar([]) == 0.0
    assert collapse_to_scalar([(0, 1, 1.0), (2, 3, -1.0), (4, 5, -1.0)]) == pytest.approx(-1 / 3)


def test_get_task_rejects_unknown_name():
    with pytest.raises(ValueError, match="Unknown evidence task 'nope'"):
        evidence_tasks.get_task("nope")


# ---------------------------------------------------------------------------------------------------------------
# learning_curves: recorder, threshold, aggregation, plotting
# ---------------------------------------------------------------------------------------------------------------


def test_reward_recorder_returns_spans_or_scalars_from_the_same_judgement():
    task = TextConstraintTask()
    responses = ["Rolling waves at dawn.", "The blue water. More."]
    ctx = {"required": ["waves", "waves"], "forbidden": [["water", "blue"], ["water", "blue"]]}
    span_rec = learning_curves.RewardRecorder(task, "span")
    scalar_rec = learning_curves.RewardRecorder(task, "scalar")
    spans = span_rec(["p", "p"], responses, **ctx)
    scalars = scalar_rec(["p", "p"], responses, **ctx)
    assert scalars == [collapse_to_scalar(s) for s in spans] == [1.0, -1.0]
    assert span_rec.records[0]["success"] == 0.5
    assert span_rec.records[0]["rate_forbidden_free"] == 0.5


def test_updates_to_threshold_uses_a_moving_average():
    assert learning_curves.updates_to_threshold([0.0, 1.0, 1.0, 1.0], 0.6) == 3
    assert learning_curves.updates_to_threshold([1.0, 0.0, 0.0, 0.0], 0.3) == 3  # first full window counts
    assert learning_curves.updates_to_threshold([0.0, 0.0, 0.0, 0.0], 0.1) is None


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


def test_plot_mode_writes_pngs_summary_and_table(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    runs.mkdir()
    _fake_runs(str(runs))
    learning_curves.main(["--plot", "--out", str(runs), "--plot-dir", str(tmp_path / "plots")])
    assert (tmp_path / "plots" / "text_curves.png").stat().st_size > 1000
    summary = (tmp_path / "plots" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3  # header + 2 arms
    out = capsys.readouterr().out
    assert "| text | span | 3 | 6 |" in out
    by_arm = {row.split(",")[1]: row for row in summary[1:]}
    # span: 0.4, 0.5, 0.6, 0.7 (+0.01 * seed) -> the 3-update moving average first reaches 0.6 at update 4
    assert ",4;4;4," in by_arm["span"]
    assert ",-;-;-," in by_arm["scalar"]


def test_plot_mode_without_runs_fails_clearly(tmp_path):
    with pytest.raises(SystemExit, match="No run files"):
        learning_curves.main(["--plot", "--out", str(tmp_path)])


@pytest.mark.parametrize("arm", ["span", "scalar", "scalar-vmodel"])
def test_one_run_with_a_tiny_policy_writes_per_update_metrics(tmp_path, tiny_llama, smollm2_tokenizer, arm):
    pytest.importorskip("peft")
    model = tiny_llama(seed=0)
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    out = tmp_path / "runs"
    learning_curves.main(
        [
            "--task",
            "text",
            "--arm",
            arm,
            "--seed",
            "3",
            "--updates",
            "2",
            "--batch-size",
            "2",
            "--response-length",
            "6",
            "--ppo-epochs",
            "1",
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    rows = [json.loads(line) for line in (out / f"text_{arm}_seed3.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["success"] <= 1.0 and -1.0 <= r["critic_reward"] <= 1.0
        assert r["arm"] == arm and r["episodes"] == 2 * r["update"]
    assert rows[1]["kl"] == rows[1]["kl"]  # the trainer's KL was captured (not NaN)
    assert (out / f"text_{arm}_seed3.csv").exists()
    meta = json.loads((out / f"text_{arm}_seed3.meta.json").read_text())
    assert meta["config"]["arm"] == arm and meta["samples"]


@pytest.mark.slow
@pytest.mark.ci_real_model
def test_one_update_with_smollm2_and_the_code_critic(tmp_path):
    """The real setup of docs/evidence.md (SmolLM2-135M-Instruct + LoRA + sandboxed code critic), cut to one update."""
    pytest.importorskip("peft")
    out = tmp_path / "runs"
    learning_curves.main(
        [
            "--task",
            "code",
            "--arm",
            "span",
            "--seed",
            "0",
            "--updates",
            "1",
            "--batch-size",
            "2",
            "--response-length",
            "12",
            "--ppo-epochs",
            "1",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    rows = [json.loads(line) for line in (out / "code_span_seed0.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert 0.0 <= rows[0]["success"] <= 1.0
    assert rows[0]["num_spans"] >= 1.0  # the code critic marks every response (good function or a poor line)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # first rollout: LoRA starts at zero, policy == reference


# ---------------------------------------------------------------------------------------------------------------
# the trl112 arm: the critic in the shape of a sequence-classification reward model
# ---------------------------------------------------------------------------------------------------------------


def _load_trl112_runner():
    sys.path.insert(0, os.path.join(BENCH, "trl112"))
    try:
        import run_evidence_trl112
    finally:
        sys.path.pop(0)
    return run_evidence_trl112


def test_critic_as_sequence_classifier_scores_each_row_with_its_own_prompt_context(smollm2_tokenizer):
    import torch

    runner = _load_trl112_runner()
    tok = smollm2_tokenizer
    pad = tok.convert_tokens_to_ids(runner.PAD_TOKEN)
    task = TextConstraintTask()
    rows = [
        {"prompt": [{"role": "user", "content": "Describe the sea. Use 'waves', avoid 'water'."}], "required": "waves",
         "forbidden": ["water"]},
        {"prompt": [{"role": "user", "content": "Describe a city at night."}], "required": "lights",
         "forbidden": ["dark"]},
    ]  # fmt: skip
    context, prompts = {}, []
    for row in rows:
        text = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        prompts.append(ids)
        context[tuple(ids)] = {"required": row["required"], "forbidden": row["forbidden"]}
    responses = ["Rolling waves at dawn.", "The dark streets at midnight."]
    width_q, width_r = max(map(len, prompts)), 16
    batch = []
    for ids, response in zip(prompts, responses):
        r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        batch.append([pad] * (width_q - len(ids)) + ids + r_ids + [pad] * (width_r - len(r_ids)))
    query_responses = torch.tensor(batch)
    recorder = learning_curves.RewardRecorder(task, "scalar")
    model = runner.CriticAsSequenceClassifier(tok, context, recorder, pad)
    # what trl 1.12's get_reward does: mask pads to id 0, run the backbone, read `score` of the last hidden state
    masked = torch.masked_fill(query_responses, query_responses == pad, 0)
    logits = model.score(getattr(model, model.base_model_prefix)(input_ids=masked).hidden_states[-1])
    expected = [task.judge_one(r, c["required"], c["forbidden"]).scalar for r, c in zip(responses, context.values())]
    assert expected == [1.0, -1.0]  # each row is judged against its own prompt's constraints
    assert logits.shape == (2, query_responses.shape[1], 1)
    assert torch.equal(logits[:, :, 0], torch.tensor(expected)[:, None].expand(2, query_responses.shape[1]))
    assert recorder.records[0]["success"] == 0.5 and recorder.samples[0]["response"] == responses[0]
    unknown = torch.tensor([[pad] * 3 + tok("hello there", add_special_tokens=False)["input_ids"]])
    with pytest.raises(ValueError, match="does not start with any prompt"):
        model.score(model.backbone(input_ids=unknown).hidden_states[-1])


@pytest.mark.slow
@pytest.mark.trl112
def test_trl112_arm_trains_trl_ppo_on_the_critic_scores(tmp_path, tiny_llama):
    """trl 1.12's PPOTrainer (separate venv) on a tiny policy: the scores its PPO logged are the critic's."""
    if not os.path.exists(learning_curves.trl112_python()):
        pytest.skip("trl 1.12 venv missing; create it with `bash scripts/make_trl112_venv.sh`")
    model_dir = tmp_path / "tiny"
    tiny_llama(seed=0).save_pretrained(model_dir)
    from trl_text2grad.models import default_model_path

    out = tmp_path / "runs"
    learning_curves.main(
        ["--task", "text", "--arm", "trl112", "--seed", "1", "--updates", "3", "--batch-size", "4",
         "--response-length", "8", "--ppo-epochs", "1", "--model", str(model_dir), "--tokenizer",
         default_model_path(), "--out", str(out), "--work-dir", str(tmp_path / "work")]
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "text_trl112_seed1.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3]
    meta = json.loads((out / "text_trl112_seed1.meta.json").read_text())
    trl_logs = [log for log in meta["trainer_logs"] if "objective/scores" in log]
    assert len(trl_logs) == 3
    for row, log in zip(rows, trl_logs):
        assert log["objective/scores"] == pytest.approx(row["critic_reward"], abs=1e-6)
        assert row["kl"] == pytest.approx(log["objective/kl"])
