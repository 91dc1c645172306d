"""Critics: turn (prompt, response) pairs into critiques with quoted good/poor spans.

* :class:`OpenAICompatibleCritic` — any OpenAI-compatible chat endpoint (OpenAI, vLLM, TGI, ``transformers serve``).
* :class:`TransformersCritic` — a local causal LM.
* :class:`UnitTestCritic` — runs code responses against unit tests in a sandbox (:func:`run_python`).

All follow the :class:`Critic` protocol: ``critique(prompts, responses, **context) -> list[Critique]``.
Names are imported lazily so that ``import trl_text2grad.critics`` does not import torch or openai.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Critic": "trl_text2grad.critics.base",
    "BaseCritic": "trl_text2grad.critics.base",
    "LLMCritic": "trl_text2grad.critics.base",
    "OpenAICompatibleCritic": "trl_text2grad.critics.openai_compatible",
    "TransformersCritic": "trl_text2grad.critics.local_model",
    "UnitTestCritic": "trl_text2grad.critics.unit_tests",
    "run_python": "trl_text2grad.critics.sandbox",
    "SandboxResult": "trl_text2grad.critics.sandbox",
    "SandboxUnavailableError": "trl_text2grad.critics.sandbox",
    "sandbox_capabilities": "trl_text2grad.critics.sandbox",
    "parse_critique": "trl_text2grad.critics.parsing",
    "ParsedCritique": "trl_text2grad.critics.parsing",
    "CritiqueTemplate": "trl_text2grad.critics.prompts",
    "TEMPLATES": "trl_text2grad.critics.prompts",
    "get_template": "trl_text2grad.critics.prompts",
}

__all__ = [
    "TEMPLATES",
    "BaseCritic",
    "Critic",
    "CritiqueTemplate",
    "LLMCritic",
    "OpenAICompatibleCritic",
    "ParsedCritique",
    "SandboxResult",
    "SandboxUnavailableError",
    "TransformersCritic",
    "UnitTestCritic",
    "get_template",
    "parse_critique",
    "run_python",
    "sandbox_capabilities",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trl_text2grad.critics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .base import BaseCritic, Critic, LLMCritic
    from .local_model import TransformersCritic
    from .openai_compatible import OpenAICompatibleCritic
    from .parsing import ParsedCritique, parse_critique
    from .prompts import TEMPLATES, CritiqueTemplate, get_template
    from .sandbox import SandboxResult, SandboxUnavailableError, run_python, sandbox_capabilities
    from .unit_tests import UnitTestCritic
