"""A critic served by any OpenAI-compatible chat-completions endpoint.

Works with OpenAI itself, vLLM, TGI, llama.cpp's server and ``transformers serve``. Requests go through the
official ``openai`` SDK (install the ``critics`` extra), which supplies the retries with exponential backoff on
429, 5xx, timeouts and connection errors (``max_retries``) and honours ``Retry-After``; every request carries a
timeout. Up to ``max_concurrency`` requests run at once (a thread pool; the SDK client is thread-safe).

JSON mode: with ``json_mode="auto"`` (default) requests ask for ``response_format={"type": "json_object"}``; if
the server rejects that parameter (HTTP 400/422), the critic logs it once, stops sending it and retries the
request without it. The answer is parsed by :func:`~trl_text2grad.critics.parsing.parse_critique` either way.

The API key is read from the environment variable named by ``api_key_env`` at construction; it is handed to the
SDK client only, never logged, printed (``repr``) or saved. A missing key is an error at construction, not a
placeholder that fails every request later; a local server that needs no key is declared explicitly with
``api_key_env=None`` (command line: ``--api_key_env none``).

Failures follow the contract of :mod:`trl_text2grad.critics.base`: a request that fails after the SDK's retries
gives that row ``Critique(error=CriticFailure(kind, message))`` with kind ``"auth"`` (401/403), ``"connection"``
(endpoint unreachable), ``"timeout"``, ``"rate_limit"`` (429), ``"server"`` (5xx), ``"empty_answer"`` (no choices
or an empty message) or ``"request"`` (anything else, e.g. 400/404); never an empty critique.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from ..spans import CriticFailure
from .base import LLMCritic
from .prompts import CritiqueTemplate

logger = logging.getLogger(__name__)

__all__ = ["OpenAICompatibleCritic", "NO_API_KEY"]

#: Values of ``api_key_env`` that declare an endpoint without authentication (besides ``None``).
NO_API_KEY = frozenset({"", "none", "no", "empty"})


class _EmptyAnswer(ValueError):
    """The server answered, but without a usable message."""


class OpenAICompatibleCritic(LLMCritic):
    """LLM critic behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        model: Model name as the server knows it (e.g. ``"gpt-4o"`` or the checkpoint path served locally).
        base_url: Endpoint root including ``/v1`` (``None``: the SDK default, i.e. OpenAI).
        api_key_env: Name of the environment variable holding the API key; the critic refuses to start when it is
            unset or empty. ``None`` (or ``"none"``): the endpoint needs no key (a local vLLM / TGI /
            ``transformers serve``); the placeholder ``"EMPTY"`` is then sent.
        template: Task name (``"summarization"``, ``"code"``, ``"qa"``) or a :class:`CritiqueTemplate`.
        system_prompt: Override the template's system message.
        user_template: Override the template's user message (needs ``{prompt}`` and ``{response}``).
        max_concurrency: Maximum simultaneous requests.
        max_retries: SDK retries (exponential backoff) on 429/5xx/timeouts/connection errors.
        timeout: Per-request timeout in seconds.
        temperature: Sampling temperature.
        max_tokens: Maximum tokens of the critique answer.
        json_mode: ``"auto"`` (ask for JSON output, fall back when rejected), ``True`` (always) or ``False``.
        extra_body: Extra JSON fields for every request (server-specific options).
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        template: str | CritiqueTemplate | None = "qa",
        system_prompt: str | None = None,
        user_template: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 3,
        timeout: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int = 512,
        json_mode: bool | Literal["auto"] = "auto",
        extra_body: dict | None = None,
    ) -> None:
        super().__init__(template, system_prompt=system_prompt, user_template=user_template)
        try:
            import openai
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "OpenAICompatibleCritic needs the 'openai' package: pip install 'trl-text2grad[critics]'"
            ) from error
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if json_mode not in (True, False, "auto"):
            raise ValueError(f"json_mode must be True, False or 'auto', got {json_mode!r}")
        self._openai = openai
        if api_key_env is None or str(api_key_env).strip().lower() in NO_API_KEY:
            api_key_env, api_key = None, "EMPTY"
        else:
            api_key = os.environ.get(api_key_env, "").strip()
            if not api_key:
                raise ValueError(
                    f"OpenAICompatibleCritic: the environment variable {api_key_env} that should hold the API key of "
                    f"{base_url or 'the OpenAI API'} is not set (or empty). Set it (export {api_key_env}=...), name "
                    "another variable with api_key_env=..., or, for a local server that needs no key, pass "
                    "api_key_env=None (command line: --api_key_env none)."
                )
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_mode = json_mode
        self.extra_body = dict(extra_body or {})
        self._send_json_mode = json_mode is not False
        self._lock = threading.Lock()
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=self.timeout)

    def __repr__(self) -> str:  # never include the key
        return (
            f"{type(self).__name__}(model={getattr(self, 'model', None)!r}, base_url={getattr(self, 'base_url', None)!r}, "
            f"api_key_env={getattr(self, 'api_key_env', None)!r}, max_concurrency={getattr(self, 'max_concurrency', None)})"
        )

    def _request(self, messages: list[dict]) -> str | Exception:
        openai = self._openai
        kwargs = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        try:
            if self._send_json_mode:
                try:
                    response = self.client.chat.completions.create(**kwargs, response_format={"type": "json_object"})
                except (openai.BadRequestError, openai.UnprocessableEntityError) as error:
                    if self.json_mode is True:
                        raise
                    with self._lock:
                        if self._send_json_mode:
                            logger.warning(
                                "Server at %s rejected response_format=json_object (%s); continuing without JSON mode.",
                                self.base_url,
                                getattr(error, "status_code", "error"),
                            )
                        self._send_json_mode = False
                    response = self.client.chat.completions.create(**kwargs)
            else:
                response = self.client.chat.completions.create(**kwargs)
            choices = getattr(response, "choices", None)
            if not choices:
                return _EmptyAnswer(f"server answered without choices: {str(response)[:200]}")
            content = choices[0].message.content
            if content is None or not str(content).strip():
                return _EmptyAnswer("server answered with an empty message")
            return content
        except Exception as error:  # one failed sample must not crash a data-set run
            return error

    def classify_error(self, error: BaseException) -> CriticFailure:
        """Map an SDK exception to a failure kind (see the module docstring)."""
        openai = self._openai
        where = self.base_url or "the OpenAI API"
        message = f"request failed: {type(error).__name__}: {error}"
        if isinstance(error, _EmptyAnswer):
            return CriticFailure("empty_answer", f"{error} (model {self.model!r} at {where})")
        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            hint = f"check the key in ${self.api_key_env}" if self.api_key_env else "the server wants an API key"
            return CriticFailure("auth", f"{message} ({where}: {hint})")
        if isinstance(error, openai.APITimeoutError):
            return CriticFailure("timeout", f"{message} ({where}, timeout {self.timeout:g} s)")
        if isinstance(error, openai.APIConnectionError):
            return CriticFailure("connection", f"{message} (is the server at {where} running?)")
        if isinstance(error, openai.RateLimitError):
            return CriticFailure("rate_limit", message)
        if isinstance(error, openai.InternalServerError):
            return CriticFailure("server", message)
        return CriticFailure("request", message)

    def generate(self, conversations: list[list[dict]]) -> list[str | Exception]:
        if len(conversations) == 1 or self.max_concurrency == 1:
            return [self._request(messages) for messages in conversations]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations))) as pool:
            return list(pool.map(self._request, conversations))

    def close(self) -> None:
        self.client.close()
