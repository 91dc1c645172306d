"""OpenAICompatibleCritic against a real local HTTP server (stdlib http.server on 127.0.0.1; no client mocks).

The server's behaviour is chosen by the first path segment of the base URL: ``/ok/v1``, ``/flaky/v1`` (429
twice, then OK), ``/error500/v1``, ``/malformed/v1`` (200 with a broken JSON body), ``/hang/v1`` (never answers
in time), ``/nojsonmode/v1`` (rejects ``response_format`` with HTTP 400), ``/slow/v1`` (answers after 0.3 s, to
measure concurrency) and ``/prose/v1`` (answers with JSON wrapped in prose and fences, with a trailing comma).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from trl_text2grad.critics.openai_compatible import OpenAICompatibleCritic  # noqa: E402

TEMPLATE = "P: {prompt}\nR: {response}"


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified when a request starts
        self.reset()

    def reset(self):
        self.counts: dict[str, int] = {}
        self.auth: list[str] = []
        self.bodies: list[dict] = []
        self.active = 0
        self.max_active = 0


STATE = _State()
SLOW_GROUP = 3


def _answer_for(body: dict) -> str:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    response = user.split("\nR: ", 1)[1]
    words = response.split()
    return json.dumps(
        {
            "critique": f"The response has {len(words)} words.",
            "good_spans": [" ".join(words[:2])],
            "poor_spans": ["this phrase is not in the response"],
        }
    )


def _completion(content: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, payload: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        mode = self.path.strip("/").split("/")[0]
        with STATE.lock:
            STATE.counts[mode] = STATE.counts.get(mode, 0) + 1
            count = STATE.counts[mode]
            STATE.auth.append(self.headers.get("Authorization", ""))
            STATE.bodies.append(body)
            STATE.active += 1
            STATE.max_active = max(STATE.max_active, STATE.active)
        try:
            if mode == "ok":
                self._send(200, _completion(_answer_for(body)))
            elif mode == "flaky":
                if count <= 2:
                    self._send(429, b'{"error": {"message": "rate limited"}}', {"retry-after-ms": "10"})
                else:
                    self._send(200, _completion(_answer_for(body)))
            elif mode == "error500":
                self._send(500, b'{"error": {"message": "boom"}}', {"retry-after-ms": "10"})
            elif mode == "malformed":
                self._send(200, b'{"id": "x", "choices": [ {"message": ')
            elif mode == "hang":
                time.sleep(3)
                self._send(200, _completion(_answer_for(body)))
            elif mode == "nojsonmode":
                if "response_format" in body:
                    self._send(400, b'{"error": {"message": "response_format is not supported"}}')
                else:
                    self._send(200, _completion(_answer_for(body)))
            elif mode == "slow":  # hold each request until SLOW_GROUP are in flight (at most 2 s), then 0.3 s more
                with STATE.changed:
                    STATE.changed.notify_all()
                    STATE.changed.wait_for(lambda: STATE.active >= SLOW_GROUP, timeout=2.0)
                time.sleep(0.3)  # then stay in flight a while: requests beyond the limit would pile up here
                self._send(200, _completion(_answer_for(body)))
            elif mode == "prose":
                self._send(
                    200,
                    _completion(
                        "Sure! Here is my review:\n```json\n{'critique': 'ok', 'good_spans': ['hello world',], "
                        "'poor_spans': [],}\n```\nHope this helps."
                    ),
                )
            elif mode == "unauthorized":
                self._send(401, b'{"error": {"message": "Incorrect API key provided"}}')
            elif mode == "garbage":
                self._send(200, _completion("I am sorry, I cannot review this."))
            elif mode == "empty":
                self._send(200, _completion(""))
            elif mode == "badquotes":
                answer = {"critique": "mixed", "good_spans": [3, None, "hello world"], "poor_spans": [{"x": 1}]}
                self._send(200, _completion(json.dumps(answer)))
            else:
                self._send(404, b'{"error": {"message": "unknown mode"}}')
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with STATE.lock:
                STATE.active -= 1


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _reset_state():
    STATE.reset()


def _critic(server, mode, **kwargs):
    kwargs.setdefault("api_key_env", None)  # the test server needs no key
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 5)
    return OpenAICompatibleCritic(model="test-model", base_url=f"{server}/{mode}/v1", user_template=TEMPLATE, **kwargs)


def test_ok_parses_and_sends_json_mode_and_key(server, monkeypatch):
    monkeypatch.setenv("T2G_TEST_KEY", "sk-local-secret")
    critic = _critic(server, "ok", api_key_env="T2G_TEST_KEY")
    assert "sk-local-secret" not in repr(critic)
    out = critic.critique(["q1", "q2"], ["hello world again", "another answer here"])
    assert [c.good for c in out] == [["hello world"], ["another answer"]]
    assert out[0].poor == ["this phrase is not in the response"]
    assert out[0].text == "The response has 3 words."
    assert critic.last_errors == [None, None]
    assert all(a == "Bearer sk-local-secret" for a in STATE.auth)
    assert all(b.get("response_format") == {"type": "json_object"} for b in STATE.bodies)
    assert STATE.bodies[0]["model"] == "test-model"


def test_retries_on_429_then_succeeds(server):
    critic = _critic(server, "flaky", max_retries=3)
    out = critic.critique(["q"], ["hello world"])
    assert out[0].good == ["hello world"]
    assert critic.last_errors == [None]
    assert STATE.counts["flaky"] == 3


def test_500_exhausts_retries_and_reports_error(server):
    critic = _critic(server, "error500", max_retries=2)
    out = critic.critique(["q"], ["hello world"])
    assert out[0].good == [] and out[0].poor == []
    assert critic.last_errors[0].startswith("request failed: InternalServerError")
    assert STATE.counts["error500"] == 3  # first try + 2 retries


def test_malformed_json_body_is_reported_not_raised(server):
    critic = _critic(server, "malformed")
    out = critic.critique(["q", "q"], ["a b", "c d"])
    assert len(out) == 2
    assert all(e and e.startswith("request failed") for e in critic.last_errors)


def test_hanging_server_hits_timeout(server):
    critic = _critic(server, "hang", timeout=0.5)
    start = time.monotonic()
    critic.critique(["q"], ["hello world"])
    assert time.monotonic() - start < 2.5
    assert "Timeout" in critic.last_errors[0]


def test_json_mode_fallback_when_rejected(server):
    critic = _critic(server, "nojsonmode")
    out = critic.critique(["q"], ["hello world"])
    assert out[0].good == ["hello world"] and critic.last_errors == [None]
    out = critic.critique(["q"], ["second call"])
    assert out[0].good == ["second call"]
    # first call: rejected with response_format, retried without; second call: no response_format at all
    assert ["response_format" in b for b in STATE.bodies] == [True, False, False]


def test_json_mode_true_does_not_fall_back(server):
    critic = _critic(server, "nojsonmode", json_mode=True)
    critic.critique(["q"], ["hello world"])
    assert critic.last_errors[0].startswith("request failed: BadRequestError")


def test_concurrency_limit_is_respected_and_used(server):
    # the server holds each request until three are in flight: a critic that sent them one at a time would see
    # max_active 1 (and wait 2 s a request), one that ignored the limit would reach more than 3
    critic = _critic(server, "slow", max_concurrency=SLOW_GROUP)
    start = time.monotonic()
    out = critic.critique(["q"] * 6, [f"answer number {i}" for i in range(6)])
    elapsed = time.monotonic() - start
    assert [c.good for c in out] == [["answer number"]] * 6
    assert STATE.max_active == SLOW_GROUP
    assert elapsed < 4.0  # two groups of 0.3 s; never waited out the 2 s hold twice


def test_prose_wrapped_answer_is_repaired(server):
    out = _critic(server, "prose").critique(["q"], ["hello world"])
    assert out[0].text == "ok" and out[0].good == ["hello world"]


def test_connection_refused_is_reported():
    critic = OpenAICompatibleCritic(
        model="m", base_url="http://127.0.0.1:9/v1", api_key_env=None, max_retries=0, timeout=2
    )
    critic.critique(["q"], ["r"])
    assert critic.last_errors[0].startswith("request failed: APIConnectionError")


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAICompatibleCritic(model="m", base_url="http://127.0.0.1:9/v1", api_key_env=None, max_concurrency=0)
    critic = OpenAICompatibleCritic(model="m", base_url="http://127.0.0.1:9/v1", api_key_env=None)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        critic.critique(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="placeholders"):
        OpenAICompatibleCritic(
            model="m", base_url="http://127.0.0.1:9/v1", api_key_env=None, user_template="only {prompt}"
        )


# -- the failure contract: start-up errors raise, row failures are per-row CriticFailures, never empty critiques ----
def test_missing_api_key_is_an_error_at_construction(monkeypatch):
    monkeypatch.delenv("T2G_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match="T2G_UNSET_KEY.*api_key_env=None"):
        OpenAICompatibleCritic(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="T2G_UNSET_KEY")
    monkeypatch.setenv("T2G_UNSET_KEY", "  ")
    with pytest.raises(ValueError, match="not set"):
        OpenAICompatibleCritic(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="T2G_UNSET_KEY")
    # a keyless local endpoint is declared explicitly
    for declared in (None, "none", "NONE", ""):
        assert OpenAICompatibleCritic(model="m", base_url="http://127.0.0.1:9/v1", api_key_env=declared)


def test_401_is_a_per_row_auth_failure(server):
    critic = _critic(server, "unauthorized")
    out = critic.critique(["q", "q"], ["a", "b"])
    assert all(c.failed and c.error.kind == "auth" for c in out)
    assert "401" in out[0].error.message or "Incorrect API key" in out[0].error.message
    assert [f.kind for f in critic.last_failures] == ["auth", "auth"]
    assert out[0].error.retryable


def test_request_failures_have_their_kind(server):
    assert _critic(server, "error500", max_retries=0).critique(["q"], ["a"])[0].error.kind == "server"
    assert _critic(server, "hang", timeout=0.5).critique(["q"], ["a"])[0].error.kind == "timeout"
    assert _critic(server, "empty").critique(["q"], ["a"])[0].error.kind == "empty_answer"
    garbage = _critic(server, "garbage").critique(["q"], ["a"])[0]
    assert garbage.error.kind == "parse" and not garbage.error.retryable
    assert garbage.text == "I am sorry, I cannot review this."  # the raw answer is kept for inspection


def test_dead_endpoint_rows_fail_and_never_become_zero_reward():
    from conftest import free_port
    from trl_text2grad.rewards import normalize_reward_output

    port = free_port()  # nothing listens there
    critic = OpenAICompatibleCritic(
        model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=None, max_retries=0, timeout=2
    )
    out = critic(["q1", "q2", "q3"], ["r1", "r2", "r3"])
    assert [c.error.kind for c in out] == ["connection"] * 3
    assert f"127.0.0.1:{port}" in out[0].error.message
    for critique in out:
        result = normalize_reward_output(critique, "r1")
        assert not result.ok and result.failure.kind == "connection"


def test_non_text_quotes_are_dropped_and_counted(server):
    out = _critic(server, "badquotes").critique(["q"], ["hello world"])[0]
    assert not out.failed and out.good == ["hello world"] and out.poor == []
    assert out.dropped_quotes == 3  # 3, null and an object without a quote


def test_invalid_prompt_fails_its_row_only(server):
    out = _critic(server, "ok").critique([5, "q", None], ["a b", "hello world", "c d"])
    assert [c.error.kind if c.failed else None for c in out] == ["invalid_input", None, "invalid_input"]
    assert out[1].good == ["hello world"]
    assert STATE.counts["ok"] == 1  # only the usable row was sent
