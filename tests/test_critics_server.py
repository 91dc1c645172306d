"""A real OpenAI-compatible server: ``transformers serve`` with the default SmolLM2 checkpoint on 127.0.0.1.

Needs the ``serving`` extra (FastAPI, Uvicorn); skipped with a message otherwise. No network: the model is the
locally converted checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("openai")
from trl_text2grad.critics.local_server import TransformersServer, serving_available  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.skipif(
    not serving_available(), reason="transformers serve needs FastAPI/Uvicorn: pip install 'trl-text2grad[serving]'"
)


@pytest.fixture(scope="module")
def server():
    from trl_text2grad.models import default_model_path

    with TransformersServer(default_model_path(), threads=1, startup_timeout=400) as running:
        yield running


@pytest.mark.slow
@pytest.mark.ci_real_model
def test_annotate_ultrafeedback_rows_through_transformers_serve(server, tmp_path):
    from trl_text2grad.annotate import annotate
    from trl_text2grad.critics.openai_compatible import OpenAICompatibleCritic

    source = [json.loads(line) for line in (FIXTURES / "ultrafeedback_binarized.jsonl").read_text().splitlines()]
    rows = [
        {"prompt": r["prompt"], "response": r["rejected"][-1]["content"], "prompt_id": r["prompt_id"]} for r in source
    ]
    critic = OpenAICompatibleCritic(
        model=server.model,
        base_url=server.base_url,
        api_key_env=None,
        template="qa",
        max_tokens=48,
        max_concurrency=2,
        timeout=300,
        max_retries=1,
    )
    out = tmp_path / "uf_annotated.jsonl"
    dataset = annotate(rows, critic, out, batch_size=3, progress=False)
    assert len(dataset) == 3 and dataset["prompt_id"] == ["uf0001", "uf0002", "uf0003"]
    # every request reached the server and got an answer; parse problems (a 135M model's JSON) are reported
    errors = dataset["critic_error"]
    assert not any(e and e.startswith("request failed") for e in errors), errors
    assert all(isinstance(a, str) and a.strip() for a in critic.last_answers), critic.last_answers
    for row in dataset:
        assert row["critique"] or row["critic_error"]
        for start, end, _ in row["located_spans"]:
            assert 0 <= int(start) < int(end) <= len(row["response"])
        assert row["num_unlocated"] == len(row["unlocated_good"]) + len(row["unlocated_poor"])
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.slow
def test_server_json_mode_request_and_concurrency(server):
    from trl_text2grad.critics.openai_compatible import OpenAICompatibleCritic

    critic = OpenAICompatibleCritic(
        model=server.model,
        base_url=server.base_url,
        api_key_env=None,
        template="summarization",
        max_tokens=24,
        max_concurrency=4,
        timeout=300,
    )
    prompts = ["My cat knocked a glass off the table and then looked at me."] * 4
    responses = ["The cat broke a glass.", "A dog ate homework.", "The cat looked at me.", "Nothing happened."]
    critiques = critic.critique(prompts, responses)
    assert len(critiques) == 4
    assert not any(e and e.startswith("request failed") for e in critic.last_errors), critic.last_errors
