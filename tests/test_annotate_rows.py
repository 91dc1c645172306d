"""annotate(): every input row yields exactly one record (a result or a structured row_error), never a run abort.

Damaged input files go through the CLI (`python -m trl_text2grad.cli.annotate`) as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from trl_text2grad.annotate import annotate, format_summary, read_annotations, summarize
from trl_text2grad.critics.base import BaseCritic
from trl_text2grad.rewards import CriticFailureError
from trl_text2grad.spans import CriticFailure, Critique

ROOT = Path(__file__).resolve().parents[1]


class EchoCritic(BaseCritic):
    """Quotes the response's first word as good; records what it was asked."""

    def __init__(self):
        super().__init__()
        self.asked: list[str] = []

    def critique(self, prompts, responses, **context):
        self.asked.extend(responses)
        return self._finish([Critique("ok", [r.split()[0]], []) for r in responses])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _damaged_file(path: Path) -> None:
    good = {"prompt": "Say hi", "response": "hello there"}
    lines = [
        json.dumps({"prompt": "first row, no response"}).encode(),  # line 1: missing response in the FIRST row
        json.dumps(good).encode(),  # line 2
        b'{"prompt": "broken", "response": ',  # line 3: malformed JSON
        b'{"prompt": "bad bytes \xff\xfe", "response": "x"}',  # line 4: invalid UTF-8
        b"[1, 2, 3]",  # line 5: not an object
        b"",  # line 6: blank, not a row
        json.dumps({"prompt": 42, "response": "a number as prompt"}).encode(),  # line 7
        json.dumps({"prompt": "p", "response": 7}).encode(),  # line 8: response not text
        json.dumps({"prompt": [{"role": "user", "content": "chat"}], "response": "chat answer"}).encode(),  # 9
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


EXPECTED_KINDS = [
    "missing_response",
    None,
    "invalid_json",
    "invalid_utf8",
    "not_an_object",
    "invalid_prompt",
    "invalid_response",
    None,
]
EXPECTED_LINES = [1, 2, 3, 4, 5, 7, 8, 9]


def test_damaged_rows_each_get_one_record(tmp_path):
    data, out = tmp_path / "damaged.jsonl", tmp_path / "out.jsonl"
    _damaged_file(data)
    critic = EchoCritic()
    records = annotate(data, critic, out, batch_size=3, progress=False, return_dataset=False)
    assert critic.asked == ["hello there", "chat answer"]  # only usable rows reach the critic
    assert [r["_row"] for r in records] == list(range(8))
    kinds = [r["row_error"]["kind"] if r["row_error"] else None for r in records]
    assert kinds == EXPECTED_KINDS
    for record, line in zip(records, EXPECTED_LINES):
        if record["row_error"]:
            assert record["row_error"]["line"] == line
            assert record["critic_error"].startswith("skipped:")
    assert "damaged.jsonl' line 4 is not valid UTF-8" in records[3]["row_error"]["message"]
    assert "line 3 is not valid JSON" in records[2]["row_error"]["message"]
    assert records[1]["good_spans"] == ["hello"] and records[1]["located_spans"] == [[0, 5, 1.0]]
    summary = summarize(records)
    assert summary["rows"] == 8 and summary["annotated"] == 2 and summary["input_errors"] == 6
    assert summary["errors"] == {k: 1 for k in EXPECTED_KINDS if k}
    assert "2 annotated, 6 row errors" in format_summary(summary)
    assert len(_lines(out)) == 8
    # a rerun finds everything done and asks nothing; fixing a bad line re-annotates just that row
    critic = EchoCritic()
    annotate(data, critic, out, progress=False)
    assert critic.asked == []
    raw = data.read_bytes().split(b"\n")
    raw[2] = json.dumps({"prompt": "fixed", "response": "now valid"}).encode()
    data.write_bytes(b"\n".join(raw))
    critic = EchoCritic()
    dataset = annotate(data, critic, out, progress=False)
    assert critic.asked == ["now valid"]
    assert dataset[2]["row_error"] is None and dataset[2]["good_spans"] == ["now"]
    assert [r["_row"] for r in _lines(out)] == list(range(8))


def test_damaged_file_through_the_cli_completes(tmp_path):
    """The unit-test critic through the CLI: damaged lines and rows without test/entry_point are row errors."""
    from trl_text2grad.tasks.humaneval import load_humaneval

    problem = load_humaneval()[0]
    good = dict(problem, response=problem["canonical_solution"])
    no_test = dict(good)
    no_test.pop("test")
    no_entry = dict(good, entry_point="")
    no_prompt = dict(good, prompt=None)
    lines = [json.dumps(no_test), json.dumps(good), "{not json", json.dumps(no_entry), json.dumps(no_prompt)]
    data, out = tmp_path / "he_damaged.jsonl", tmp_path / "he_out.jsonl"
    data.write_text("\n".join(lines) + "\n")
    command = [sys.executable, "-m", "trl_text2grad.cli.annotate", "--dataset_path", str(data)]
    command += ["--output_path", str(out), "--critic", "unit_tests", "--batch_size", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_annotations(out)
    kinds = [r["row_error"]["kind"] if r["row_error"] else None for r in records]
    assert kinds == ["missing_column", None, "invalid_json", "missing_column", "missing_prompt"]
    assert "'test'" in records[0]["row_error"]["message"] and "'entry_point'" in records[3]["row_error"]["message"]
    assert "passed" in records[1]["critique"]
    assert "annotated 5 rows" in done.stdout and "missing_column: 2" in done.stdout


def test_undecodable_file_is_a_clear_error_naming_file_and_line(tmp_path):
    binary = tmp_path / "weights.bin.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"weights\.bin\.jsonl' cannot be read as JSON lines.*line 1"):
        annotate(binary, EchoCritic(), tmp_path / "o.jsonl", progress=False)
    csv = tmp_path / "table.jsonl"
    csv.write_text("prompt,response\nhi,hello\n")
    with pytest.raises(ValueError, match=r"table\.jsonl' cannot be read.*line 1 is not valid JSON"):
        annotate(csv, EchoCritic(), tmp_path / "o.jsonl", progress=False)
    broken_json = tmp_path / "rows.json"
    broken_json.write_text('[{"prompt": "a", "response": "b"},\n {"prompt": ]')
    with pytest.raises(ValueError, match=r"rows\.json' is not valid JSON \(line 2 column"):
        annotate(broken_json, EchoCritic(), tmp_path / "o.jsonl", progress=False)
    command = [sys.executable, "-m", "trl_text2grad.cli.annotate", "--dataset_path", str(binary)]
    command += ["--output_path", str(tmp_path / "cli.jsonl"), "--critic", "unit_tests"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0 and "weights.bin.jsonl' cannot be read as JSON lines" in done.stderr


def test_non_object_items_and_dropped_quotes_are_counted(tmp_path):
    class Mixed(BaseCritic):
        def critique(self, prompts, responses, **context):
            return [Critique("c", ["alpha", " "], ["beta"], dropped_quotes=2) for _ in responses]

    rows = [{"prompt": "p", "response": "alpha beta"}, "not a row", None]
    records = annotate(rows, Mixed(), tmp_path / "o.jsonl", progress=False, return_dataset=False)
    assert records[0]["dropped_quotes"] == 3  # two from the answer, one empty quote
    assert [r["row_error"]["kind"] for r in records[1:]] == ["not_an_object", "not_an_object"]
    assert summarize(records)["dropped_quotes"] == 3


def test_a_critic_that_raises_on_one_row_fails_only_that_row(tmp_path):
    class Picky(EchoCritic):
        def critique(self, prompts, responses, **context):
            if "poison" in responses:
                raise RuntimeError("cannot handle poison")
            return super().critique(prompts, responses, **context)

    rows = [{"prompt": "p", "response": r} for r in ("one two", "poison", "three four")]
    dataset = annotate(rows, Picky(), tmp_path / "o.jsonl", batch_size=3, progress=False)
    assert dataset["good_spans"] == [["one"], [], ["three"]]
    assert dataset[1]["row_error"]["kind"] == "exception" and "cannot handle poison" in dataset[1]["critic_error"]


def test_dead_endpoint_failures_are_counted_and_retried_on_resume(tmp_path):
    pytest.importorskip("openai")
    from trl_text2grad.critics.openai_compatible import OpenAICompatibleCritic

    port = free_port()
    critic = OpenAICompatibleCritic(
        model="judge", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=None, max_retries=0, timeout=2
    )
    rows = [{"prompt": f"p{i}", "response": f"answer {i}"} for i in range(5)]
    out = tmp_path / "o.jsonl"
    dataset = annotate(rows, critic, out, batch_size=2, progress=False)
    assert [e["kind"] for e in dataset["row_error"]] == ["connection"] * 5
    assert summarize(dataset.to_list())["errors"] == {"connection": 5}
    assert all(f"127.0.0.1:{port}" in e for e in dataset["critic_error"])
    critic = EchoCritic()  # the endpoint is back: the failed rows are asked again, nothing is duplicated
    dataset = annotate(rows, critic, out, batch_size=2, progress=False)
    assert len(critic.asked) == 5 and dataset["row_error"] == [None] * 5
    assert [r["_row"] for r in _lines(out)] == list(range(5))


def test_dead_critic_stops_annotate_and_keeps_the_rows_done(tmp_path):
    class Dead(BaseCritic):
        def critique(self, prompts, responses, **context):
            failure = CriticFailure("auth", "request failed: AuthenticationError: 401 invalid key")
            return self._finish([Critique(error=failure) for _ in responses])

    rows = [{"prompt": "p", "response": f"answer {i}"} for i in range(20)]
    out = tmp_path / "o.jsonl"
    with pytest.raises(CriticFailureError, match=r"Dead.*failed on the last 6 rows.*auth: .*401") as raised:
        annotate(rows, Dead(), out, batch_size=3, progress=False, max_consecutive_failures=5)
    assert raised.value.failure.kind == "auth" and raised.value.counts == {"auth": 6}
    assert [r["_row"] for r in _lines(out)] == list(range(6))  # the batches done are on disk
    records = annotate(rows, EchoCritic(), out, batch_size=3, progress=False, return_dataset=False)
    assert [r["row_error"] for r in records] == [None] * 20


def test_cli_exits_non_zero_when_the_critic_is_dead(tmp_path):
    pytest.importorskip("openai")
    data, out = tmp_path / "rows.jsonl", tmp_path / "out.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "response": f"r {i}"}) + "\n" for i in range(3)))
    command = [sys.executable, "-m", "trl_text2grad.cli.annotate", "--dataset_path", str(data)]
    command += ["--output_path", str(out), "--critic", "openai", "--model", "judge", "--max_retries", "0"]
    command += ["--base_url", f"http://127.0.0.1:{free_port()}/v1", "--api_key_env", "none"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "connection: 3" in done.stdout and "failed on every row" in done.stderr
    assert len(_lines(out)) == 3  # every row accounted for
    # a missing key is refused before any request
    env.pop("T2G_NO_SUCH_KEY", None)
    command[-1] = "T2G_NO_SUCH_KEY"
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0 and "T2G_NO_SUCH_KEY" in done.stderr


def test_unavailable_critic_stops_the_run_and_keeps_rows(tmp_path):
    from trl_text2grad.spans import CriticUnavailableError

    class Breaks(EchoCritic):
        def critique(self, prompts, responses, **context):
            if len(self.asked) >= 2:
                raise CriticUnavailableError("the sandbox cannot run even a trivial program")
            return super().critique(prompts, responses, **context)

    rows = [{"prompt": "p", "response": f"answer {i}"} for i in range(6)]
    out = tmp_path / "o.jsonl"
    with pytest.raises(CriticUnavailableError, match="trivial program"):
        annotate(rows, Breaks(), out, batch_size=2, progress=False)
    assert [r["_row"] for r in _lines(out)] == [0, 1]  # not six rows of "exception" failures


def test_non_text_quotes_of_a_custom_critic_are_dropped_and_counted(tmp_path):
    class Sloppy(BaseCritic):
        def critique(self, prompts, responses, **context):
            return [Critique("c", ["alpha", 3, None], [{"q": 1}]) for _ in responses]

    rows = [{"prompt": "p", "response": "alpha beta"}, {"prompt": "p", "response": "alpha gamma"}]
    dataset = annotate(rows, Sloppy(), tmp_path / "o.jsonl", progress=False)
    assert dataset["good_spans"] == [["alpha"], ["alpha"]] and dataset["poor_spans"] == [[], []]
    assert dataset["dropped_quotes"] == [3, 3] and summarize(dataset.to_list())["dropped_quotes"] == 6
