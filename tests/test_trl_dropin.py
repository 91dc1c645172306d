"""A TRL 1.12 user's PPO script and settings run on SpanPPOTrainer with one import changed.

* In-process (fast): pad ids outside the embedding, one log line per update with TRL 1.12's metric set, the reward
  mode chosen from the reward model, no gradient clipping by default, CPU mode without an accelerator, a printed
  sample of the final completions.
* Subprocess: ``tests/scripts/trl112_style_ppo.py`` (the shape of TRL 1.12's ``examples/scripts/ppo/ppo.py``) on a
  tiny Llama whose embedding has no spare row for the ``[PAD]`` token the script adds, in 1 process and in 2
  processes under ``accelerate launch`` with ``recipes/accelerate/multi_cpu.yaml``.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from conftest import accelerate_launch, free_port
from trl_text2grad import SpanPPOConfig, SpanPPOTrainer
from trl_text2grad.ppo.span_ppo_trainer import substitute_pad_token_id

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "trl112_style_ppo.py"
MULTI_CPU = REPO / "recipes" / "accelerate" / "multi_cpu.yaml"

#: Every metric TRL 1.12's PPOTrainer logged once per update.
TRL112_METRICS = {
    "eps", "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
    "objective/scores", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg",
    "val/clipfrac_avg", "policy/entropy_avg", "val/ratio", "val/ratio_var", "val/num_eos_tokens", "lr", "episode",
}  # fmt: skip


def _args(tmp_path, **overrides) -> SpanPPOConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        num_ppo_epochs=2, num_mini_batches=2, response_length=6, total_episodes=8, learning_rate=1e-3, report_to=[],
        gradient_checkpointing=False, save_strategy="no", stop_token="eos", disable_tqdm=True, seed=0,
    )  # fmt: skip
    settings.update(overrides)
    return SpanPPOConfig(**settings)


def _prompts(n: int = 8) -> Dataset:
    return Dataset.from_dict({"prompt": [f"Write a short answer number {i}:" for i in range(n)]})


def _classifier(vocab_size: int, pad_token_id: int, seed: int = 1):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config)


def first_half_good(prompts, responses, **context):
    return [[(0, max(1, len(text) // 2), 1.0)] if text else [] for text in responses]


def _train_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "objective/kl" in entry]


# ----------------------------------------------------------------------------------------------------------------
# pad ids outside the embedding
# ----------------------------------------------------------------------------------------------------------------
def test_substitute_pad_token_id():
    assert substitute_pad_token_id(5, 2, 10) == 5  # a valid row stays
    assert substitute_pad_token_id(10, 2, 10) == 2  # == vocab size: eos instead
    assert substitute_pad_token_id(12, 11, 10) == 0  # eos not a row either: 0
    assert substitute_pad_token_id(12, None, 10) == 0
    assert substitute_pad_token_id(12, 2, None) == 12  # no embedding found: unchanged


def test_new_pad_token_without_resize_trains(tmp_path, smollm2_tokenizer, tiny_llama):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    rows = len(tokenizer)
    policy = tiny_llama(tokenizer, tie_word_embeddings=False)  # embedding built before the pad token is added
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    assert tokenizer.pad_token_id == rows == policy.get_input_embeddings().num_embeddings
    value_model = _classifier(rows, tokenizer.eos_token_id, seed=2)
    prompts = Dataset.from_dict({"prompt": ["Hi", "Write a much longer prompt than the first one:"] * 4})
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=4), tokenizer, policy, None, _classifier(rows, tokenizer.eos_token_id),
        prompts, value_model,
    )  # fmt: skip
    assert trainer.model_pad_token_id == tokenizer.eos_token_id
    trainer.train()
    assert trainer.state.global_step == 4
    rollout = trainer.last_rollout["rollout"]
    assert int(rollout["prompt_ids"].max()) < rows and int(rollout["responses"].max()) < rows
    assert bool((rollout["prompt_mask"] == 0).any())  # prompts of different lengths: padding was there
    # the masked positions hold the substitute, the masks are unchanged
    assert bool((rollout["prompt_ids"][rollout["prompt_mask"] == 0] == tokenizer.eos_token_id).all())


def test_prompt_token_outside_the_embedding_is_a_clear_error(tmp_path, smollm2_tokenizer, tiny_llama):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    policy = tiny_llama(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<new>"]})
    dataset = Dataset.from_dict({"prompt": ["plain prompt", "a prompt with <new> in it"]})
    trainer = SpanPPOTrainer(
        _args(tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=2, num_mini_batches=1,
              total_episodes=2),
        tokenizer, policy, None, first_half_good, dataset, None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        trainer.train()


# ----------------------------------------------------------------------------------------------------------------
# logging cadence, reward mode, clipping, device
# ----------------------------------------------------------------------------------------------------------------
def test_one_log_line_per_update_with_exact_episode(tmp_path, smollm2_tokenizer, tiny_llama):
    # 3 updates x (2 PPO epochs x 2 mini-batches) = 12 optimizer steps, default logging_steps (10)
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=12), smollm2_tokenizer, tiny_llama(), None, first_half_good, _prompts(12),
        None,
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 12
    logs = _train_logs(trainer)
    assert [entry["step"] for entry in logs] == [4, 8, 12]
    assert [entry["episode"] for entry in logs] == [4, 8, 12]  # exact, not averaged over updates
    for entry in logs:
        assert TRL112_METRICS <= set(entry), TRL112_METRICS - set(entry)
        assert isinstance(entry["eps"], int) and entry["eps"] >= 0

    # the Trainer's cadence on request: every optimizer step
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=8, log_every_update=False, logging_steps=1), smollm2_tokenizer, tiny_llama(),
        None, first_half_good, _prompts(), None,
    )  # fmt: skip
    trainer.train()
    steps = [entry["step"] for entry in trainer.state.log_history if "loss/policy_avg" in entry]
    assert steps == list(range(1, 9))


def test_gradient_clipping_is_off_by_default_and_on_when_asked(tmp_path, smollm2_tokenizer, tiny_llama):
    assert _args(tmp_path).max_grad_norm == 0.0
    assert SpanPPOConfig(output_dir=str(tmp_path), max_grad_norm=None, report_to=[]).max_grad_norm == 0.0
    with pytest.raises(ValueError, match="max_grad_norm"):
        _args(tmp_path, max_grad_norm=-1.0)
    for norm, clipped in ((0.0, False), (1.0, True)):
        trainer = SpanPPOTrainer(
            _args(tmp_path, total_episodes=4, max_grad_norm=norm), smollm2_tokenizer, tiny_llama(), None,
            first_half_good, _prompts(), None,
        )  # fmt: skip
        max_norms = []  # the Trainer also calls clip_grad_norm_(..., inf) just to measure grad_norm
        original = trainer.accelerator.clip_grad_norm_

        def recording(parameters, max_norm, *args, _seen=max_norms, _clip=original, **kwargs):
            _seen.append(max_norm)
            return _clip(parameters, max_norm, *args, **kwargs)

        trainer.accelerator.clip_grad_norm_ = recording
        trainer.train()
        assert any(n != float("inf") for n in max_norms) is clipped


def test_reward_mode_follows_the_reward_model(tmp_path, smollm2_tokenizer, tiny_llama, caplog):
    tok = smollm2_tokenizer
    with caplog.at_level("INFO", logger="trl_text2grad.ppo.span_ppo_trainer"):
        trainer = SpanPPOTrainer(
            _args(tmp_path, total_episodes=4), tok, tiny_llama(), None, _classifier(len(tok), tok.pad_token_id),
            _prompts(), None,
        )  # fmt: skip
    assert trainer.reward_mode == "scalar"
    said = [r.message for r in caplog.records if "reward_mode" in r.message]
    assert len(said) == 1 and "'scalar'" in said[0]
    trainer.train()
    assert not any(key.startswith("span/") and "failures" not in key for key in _train_logs(trainer)[0])

    caplog.clear()
    with caplog.at_level("INFO", logger="trl_text2grad.ppo.span_ppo_trainer"):
        trainer = SpanPPOTrainer(_args(tmp_path), tok, tiny_llama(), None, first_half_good, _prompts(), None)
    assert trainer.reward_mode == "span"
    assert sum("reward_mode" in r.message for r in caplog.records) == 1
    assert SpanPPOTrainer(
        _args(tmp_path, reward_mode="hybrid"), tok, tiny_llama(), None, first_half_good, _prompts(), None
    ).reward_mode == "hybrid"  # fmt: skip

    for mode in ("span", "hybrid"):
        with pytest.raises(ValueError, match="sequence classifier"):
            SpanPPOTrainer(
                _args(tmp_path, reward_mode=mode), tok, tiny_llama(), None, _classifier(len(tok), tok.pad_token_id),
                _prompts(), None,
            )  # fmt: skip


def test_cpu_mode_is_automatic_without_an_accelerator(tmp_path, monkeypatch):
    from trl_text2grad.ppo import span_ppo_config

    monkeypatch.setattr(span_ppo_config, "_no_accelerator", lambda: True)
    assert SpanPPOConfig(output_dir=str(tmp_path), report_to=[]).use_cpu is True
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # DeepSpeed picks its own accelerator
    assert span_ppo_config._deepspeed_requested(SpanPPOConfig.__new__(SpanPPOConfig)) is True
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setattr(span_ppo_config, "_no_accelerator", lambda: False)
    assert span_ppo_config._deepspeed_requested(SpanPPOConfig.__new__(SpanPPOConfig)) is False


def test_final_completions_print_a_sample_and_save_all(tmp_path, smollm2_tokenizer, tiny_llama, capsys):
    trainer = SpanPPOTrainer(
        _args(tmp_path, total_episodes=4, per_device_eval_batch_size=4), smollm2_tokenizer, tiny_llama(), None,
        first_half_good, _prompts(), None, eval_dataset=_prompts(9),
    )  # fmt: skip
    capsys.readouterr()
    table = trainer.generate_completions()
    printed = capsys.readouterr().out
    assert len(table) == 9
    assert "5 of 9" in printed
    assert sum(f"number {i}:" in printed for i in range(9)) == 5
    saved = (tmp_path / "out" / "completions" / "update_0.jsonl").read_text().splitlines()
    assert len(saved) == 9


# ----------------------------------------------------------------------------------------------------------------
# TRL 1.12's example script, one import changed
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trl_style_assets(tmp_path_factory, smollm2_tokenizer):
    """A tokenizer folder, a tiny causal LM whose embedding has exactly len(tokenizer) rows, and prompt data."""
    from conftest import build_tiny_llama

    root = tmp_path_factory.mktemp("trl_style")
    smollm2_tokenizer.save_pretrained(root / "tokenizer")
    model = build_tiny_llama(smollm2_tokenizer, tie_word_embeddings=False)
    assert model.get_input_embeddings().num_embeddings == len(smollm2_tokenizer)  # no spare row for [PAD]
    model.save_pretrained(root / "model")
    (root / "data").mkdir()
    with open(root / "data" / "train.jsonl", "w") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": f"Describe the number {i} in one word:" + " really" * (i % 3)}) + "\n")
    return root


def _script_args(assets: Path, out: Path, episodes: int) -> list[str]:
    return [
        "--dataset_name", str(assets / "data"), "--dataset_train_split", "train", "--output_dir", str(out),
        "--model_name_or_path", str(assets / "tokenizer"), "--sft_model_path", str(assets / "model"),
        "--reward_model_path", str(assets / "model"), "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--num_ppo_epochs", "2", "--num_mini_batches", "1",
        "--total_episodes", str(episodes), "--response_length", "8", "--stop_token", "eos",
        "--missing_eos_penalty", "1.0", "--local_rollout_forward_batch_size", "4", "--learning_rate", "1e-3",
        "--per_device_eval_batch_size", "4", "--disable_tqdm", "true", "--report_to", "none", "--seed", "0",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")  # fmt: skip
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    for key in ("ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def _logged(stdout: str) -> list[dict]:
    """The dicts the Trainer printed (``disable_tqdm=True``: one ``print(logs)`` per log call, main process)."""
    entries = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{") and "'episode'" in line:
            entries.append(ast.literal_eval(re.sub(r"\bnan\b", "None", line)))
    return entries


def _check_run(proc: subprocess.CompletedProcess, out: Path, per_update: int) -> None:
    assert proc.returncode == 0, f"script failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    logs = _logged(proc.stdout)
    # 3 updates x 2 PPO epochs = 6 optimizer steps: one line per update, exact episode counts
    assert [entry["episode"] for entry in logs] == [per_update, 2 * per_update, 3 * per_update], proc.stdout[-3000:]
    for entry in logs:
        assert TRL112_METRICS <= set(entry), TRL112_METRICS - set(entry)
        assert not any(key.startswith("span/frac") for key in entry)  # classifier reward: scalar mode
    assert (out / "config.json").exists() and (out / "value_model" / "config.json").exists()
    assert "5 of 8" in proc.stdout  # the final generate_completions() printed a sample of the 8 eval prompts
    assert (proc.stdout + proc.stderr).count("reward_mode not set: using reward_mode='scalar'") == 1  # said once


def test_trl112_example_script_one_process(tmp_path, trl_style_assets):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), *_script_args(trl_style_assets, out, episodes=6)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900, cwd=tmp_path)
    _check_run(proc, out, per_update=2)


@pytest.mark.multiproc
def test_trl112_example_script_two_cpu_processes(tmp_path, trl_style_assets):
    out = tmp_path / "out"
    # the documented command: no --use_cpu needed, SpanPPOConfig selects the CPU when there is no accelerator
    cmd = [*accelerate_launch(), "--config_file", str(MULTI_CPU), "--num_processes", "2", "--main_process_port",
           str(free_port()), str(SCRIPT), *_script_args(trl_style_assets, out, episodes=12)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900, cwd=tmp_path)
    _check_run(proc, out, per_update=4)
    assert proc.stdout.count("'episode'") == 3  # logged once, by the main process
