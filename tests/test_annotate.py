"""annotate(): output schema, resumable cache (including kill -9 mid-run), bad rows, and the CLI entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trl_text2grad.annotate import annotate, read_annotations
from trl_text2grad.critics.base import BaseCritic
from trl_text2grad.spans import Critique

FIXTURES = Path(__file__).parent / "fixtures"


class RecordingCritic(BaseCritic):
    """A deterministic critic: quotes the response's first two words as good, its last word and an invented
    phrase as poor; records every response it was asked about."""

    def __init__(self, fail_on: set[str] | None = None):
        super().__init__()
        self.asked: list[str] = []
        self.fail_on = fail_on or set()

    def critique(self, prompts, responses, **context):
        self.asked.extend(responses)
        out, errors = [], []
        for response in responses:
            if response in self.fail_on:
                out.append(Critique())
                errors.append("request failed: APIConnectionError: server down")
                continue
            words = response.split()
            out.append(Critique(f"{len(words)} words", [" ".join(words[:2])], [words[-1], "an invented phrase"]))
            errors.append(None)
        self.last_errors = errors
        return out


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"prompt {i}", "response": f"answer number {i} is here", "task_id": i} for i in range(n)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_output_schema_on_slf5k_fixture(tmp_path):
    rows = [
        {"prompt": r["post"], "response": r["generated_summary_for_feedback"], "id": r["id"]}
        for r in map(json.loads, (FIXTURES / "slf5k.jsonl").read_text().splitlines())
    ]
    out = tmp_path / "slf5k_annotated.jsonl"
    dataset = annotate(rows, RecordingCritic(), out, batch_size=2, progress=False)
    assert len(dataset) == 3
    row = dataset[0]
    for key in (
        "prompt",
        "response",
        "critique",
        "good_spans",
        "poor_spans",
        "located_spans",
        "num_located",
        "num_unlocated",
        "unlocated_good",
        "unlocated_poor",
        "critic_error",
        "id",
        "_row",
        "_key",
    ):
        assert key in row, key
    response = rows[0]["response"]
    assert row["good_spans"] == ["My roommate"]
    assert row["unlocated_poor"] == ["an invented phrase"] and row["num_unlocated"] == 1
    # Arrow lists are homogeneous: in the Dataset the [start, end, score] triples are floats; the JSONL keeps ints
    (good, poor) = (tuple(map(int, span[:2])) + (span[2],) for span in row["located_spans"])
    assert response[good[0] : good[1]] == "My roommate" and good[2] == 1.0
    assert response[poor[0] : poor[1]] == "out." and poor[2] == -1.0
    first = _lines(out)[0]
    assert first["located_spans"] == [[0, 11, 1.0], [len(response) - 4, len(response), -1.0]]
    assert [r["_row"] for r in _lines(out)] == [0, 1, 2]


def test_chat_prompts_and_json_input(tmp_path):
    source = [json.loads(line) for line in (FIXTURES / "ultrafeedback_binarized.jsonl").read_text().splitlines()]
    rows = [{"prompt": r["chosen"][:-1], "response": r["rejected"][-1]["content"]} for r in source]
    path = tmp_path / "uf.json"
    path.write_text(json.dumps(rows))
    records = annotate(path, RecordingCritic(), tmp_path / "out.jsonl", progress=False, return_dataset=False)
    assert records[1]["prompt"] == [{"role": "user", "content": "Name the capital of Australia."}]
    assert records[1]["good_spans"] == ["The capital"]


def test_resume_skips_finished_rows(tmp_path):
    rows, out = _rows(10), tmp_path / "out.jsonl"

    class Crashing(RecordingCritic):
        def critique(self, prompts, responses, **context):
            if len(self.asked) >= 4:
                raise KeyboardInterrupt  # simulated crash after two batches
            return super().critique(prompts, responses, **context)

    with pytest.raises(KeyboardInterrupt):
        annotate(rows, Crashing(), out, batch_size=2, progress=False)
    assert [r["_row"] for r in _lines(out)] == [0, 1, 2, 3]
    critic = RecordingCritic()
    dataset = annotate(rows, critic, out, batch_size=2, progress=False)
    assert critic.asked == [r["response"] for r in rows[4:]]
    assert dataset["_row"] == list(range(10))
    assert [r["_row"] for r in _lines(out)] == list(range(10))


def test_truncated_last_line_is_repaired(tmp_path):
    rows, out = _rows(4), tmp_path / "out.jsonl"
    annotate(rows[:2], RecordingCritic(), out, progress=False)
    with open(out, "a") as handle:
        handle.write('{"prompt": "prompt 2", "response": "answer num')  # a write cut by kill -9
    critic = RecordingCritic()
    annotate(rows, critic, out, progress=False)
    assert critic.asked == [rows[2]["response"], rows[3]["response"]]
    assert [r["_row"] for r in _lines(out)] == [0, 1, 2, 3]


def test_cache_for_other_data_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    annotate(_rows(3), RecordingCritic(), out, progress=False)
    changed = _rows(3)
    changed[1]["response"] = "something else entirely"
    with pytest.raises(ValueError, match="written for other data"):
        annotate(changed, RecordingCritic(), out, progress=False)
    fresh = annotate(changed, RecordingCritic(), out, progress=False, resume=False)
    assert fresh[1]["response"] == "something else entirely"


def test_failed_requests_are_retried_without_duplicates(tmp_path):
    rows, out = _rows(5), tmp_path / "out.jsonl"
    first = annotate(rows, RecordingCritic(fail_on={rows[1]["response"], rows[3]["response"]}), out, progress=False)
    assert [bool(e) for e in first["critic_error"]] == [False, True, False, True, False]
    critic = RecordingCritic()
    second = annotate(rows, critic, out, progress=False)
    assert critic.asked == [rows[1]["response"], rows[3]["response"]]
    assert second["critic_error"] == [None] * 5
    assert [r["_row"] for r in _lines(out)] == list(range(5))


def test_unusable_rows_are_counted_and_skipped(tmp_path, caplog):
    rows = _rows(3)
    rows[1]["response"] = None
    rows[2]["response"] = "   "
    critic = RecordingCritic()
    records = annotate(rows, critic, tmp_path / "out.jsonl", progress=False, return_dataset=False)
    assert critic.asked == [rows[0]["response"]]
    assert records[1]["critic_error"].startswith("skipped:") and records[2]["critic_error"].startswith("skipped:")
    with pytest.raises(ValueError, match="no .answer. column"):
        annotate(_rows(2), critic, tmp_path / "x.jsonl", response_column="answer", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        annotate(tmp_path / "missing.jsonl", critic, tmp_path / "y.jsonl", progress=False)


def test_unit_test_critic_through_annotate(tmp_path):
    from trl_text2grad.critics import UnitTestCritic
    from trl_text2grad.tasks.humaneval import load_humaneval

    problems = load_humaneval().select(range(3))
    rows = [dict(p, response=p["canonical_solution"]) for p in problems]
    rows[1]["response"] = "    return []\n"
    dataset = annotate(rows, UnitTestCritic(), tmp_path / "he.jsonl", progress=False)
    assert dataset["task_id"] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert "passed" in dataset[0]["critique"] and dataset[0]["located_spans"][0][2] == 1.0
    assert "assertion failed" in dataset[1]["critique"]
    assert dataset[1]["located_spans"] == [[4.0, 13.0, -1.0]]  # "return []", exact span from the critic


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from trl_text2grad.annotate import annotate
    from trl_text2grad.critics.base import BaseCritic
    from trl_text2grad.spans import Critique

    class Slow(BaseCritic):
        def critique(self, prompts, responses, **context):
            time.sleep(0.15)
            return [Critique("ok", [r.split()[0]], []) for r in responses]

    rows = [{"prompt": f"p{i}", "response": f"answer {i} text"} for i in range(60)]
    annotate(rows, Slow(), sys.argv[1], batch_size=3, progress=False)
    """
)


def test_kill_9_midway_then_resume_loses_and_duplicates_nothing(tmp_path):
    script, out = tmp_path / "run.py", tmp_path / "killed.jsonl"
    script.write_text(_KILL_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), str(out)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().count("\n") >= 9:
            break
        if process.poll() is not None:
            pytest.fail(f"annotate exited early: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {json.loads(line)["_row"] for line in out.read_text().splitlines() if line.endswith("}")}
    assert 9 <= len(done_before) < 60
    with open(out, "a") as handle:  # and a record torn mid-write on top of that
        handle.write('{"prompt": "p59", "resp')
    rows = [{"prompt": f"p{i}", "response": f"answer {i} text"} for i in range(60)]
    critic = RecordingCritic()
    dataset = annotate(rows, critic, out, batch_size=7, progress=False)
    asked = {int(r.split()[1]) for r in critic.asked}
    assert asked == set(range(60)) - done_before  # finished rows were not asked again
    lines = _lines(out)
    assert [r["_row"] for r in lines] == list(range(60))  # every row once, in order
    assert dataset["_row"] == list(range(60))
    assert read_annotations(out)[5]["response"] == "answer 5 text"


def test_cli_main_with_yaml_config(tmp_path, capsys):
    from trl_text2grad.cli.annotate import main
    from trl_text2grad.tasks.humaneval import load_humaneval

    rows = [dict(p, response=p["canonical_solution"]) for p in load_humaneval().select(range(2))]
    data = tmp_path / "he.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "annotate.yaml"
    out = tmp_path / "he_annotated.jsonl"
    config.write_text(
        f"dataset_path: {data}\noutput_path: {out}\ncritic: unit_tests\nbatch_size: 2\nsandbox_timeout: 10\n"
    )
    dataset = main(["--config", str(config), "--good_span", "body"])
    assert len(dataset) == 2 and "annotated 2 rows" in capsys.readouterr().out
    assert all("passed" in c for c in dataset["critique"])
    assert len(_lines(out)) == 2
    with pytest.raises(ValueError, match="critic must be"):
        main(["--dataset_path", str(data), "--critic", "gpt"])
