"""Two-process CPU training (gloo) of SpanPPOTrainer under ``accelerate launch`` with the shipped multi_cpu config."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from conftest import accelerate_launch, free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "multiproc_span_ppo.py"
CONFIG = REPO / "recipes" / "accelerate" / "multi_cpu.yaml"


@pytest.mark.multiproc
def test_two_cpu_processes_train_with_gloo(tmp_path):
    out = tmp_path / "out"
    cmd = [*accelerate_launch(), "--config_file", str(CONFIG), "--num_processes", "2",
           "--main_process_port", str(free_port()), str(SCRIPT), "--out", str(out), "--updates", "2"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    # both ranks ran, in one 2-process gloo group
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in ranks)
    assert all("MULTI_CPU" in r["distributed_type"] for r in ranks)
    # 2 updates x 1 PPO epoch x 1 mini-batch = 2 optimizer steps on each rank
    assert all(r["max_steps"] == 2 and r["global_step"] == 2 and len(r["prompts"]) == 2 for r in ranks)
    # the ranks rolled out different prompts (the rollout batch is sharded), 2 per rank per update
    for update in range(2):
        p0, p1 = ranks[0]["prompts"][update], ranks[1]["prompts"][update]
        assert len(p0) == len(p1) == 2 and not set(p0) & set(p1)
    # finite losses, logged on every rank
    for r in ranks:
        logs = [entry for entry in r["log_history"] if "loss/policy_avg" in entry]
        assert len(logs) == 2
        for entry in logs:
            assert math.isfinite(entry["loss/policy_avg"]) and math.isfinite(entry["loss/value_avg"])
    # parameters changed, and DDP kept them identical across ranks (gradients were all-reduced)
    for r in ranks:
        assert sum(abs(a - b) > 0 for a, b in zip(r["params_before"], r["params_after"])) == len(r["params_after"])
    assert ranks[0]["params_before"] == pytest.approx(ranks[1]["params_before"], rel=1e-12, abs=1e-12)
    assert ranks[0]["params_after"] == pytest.approx(ranks[1]["params_after"], rel=1e-6, abs=1e-6)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("recipe", ["zero2", "zero3"])
def test_deepspeed_recipes_on_two_cpu_processes(tmp_path, recipe):
    """The shipped ZeRO-2/3 recipes end to end on DeepSpeed's CPU accelerator (gloo), 2 processes.

    Checks what used to go wrong there: one 2-process group (not two processes that both believe they are process 0)
    and DeepSpeed's batch sizes computed for 2 processes from the PPO batch vocabulary.
    """
    pytest.importorskip("deepspeed")
    out = tmp_path / "out"
    config = REPO / "recipes" / "accelerate" / f"{recipe}.yaml"
    # bf16 (the recipes' GPU default) is switched off on the CPU; everything else is the recipe's
    cmd = [*accelerate_launch(), "--config_file", str(config), "--num_processes", "2", "--mixed_precision", "no",
           "--main_process_port", str(free_port()), str(SCRIPT), "--out", str(out), "--updates", "2",
           "--gradient_accumulation_steps", "2"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" and "DEEPSPEED" in r["distributed_type"] for r in ranks)
    # per rank and update: 2 x 2 prompts (per_device_train_batch_size x gradient_accumulation_steps), one optimizer
    # step made of 2 micro-batches; DeepSpeed sees 2 processes: 2 x 2 x 2 = 8 per optimizer step
    for r in ranks:
        assert r["deepspeed"] == {
            "zero_stage": int(recipe[-1]), "train_batch_size": 8, "train_micro_batch_size_per_gpu": 2,
            "gradient_accumulation_steps": 2, "gradient_clipping": 0.0, "engine_world_size": 2,
            "engine_train_batch_size": 8,
        }  # fmt: skip
        assert r["max_steps"] == 2 and r["global_step"] == 2
        assert [len(p) for p in r["prompts"]] == [4, 4]
        logs = [entry for entry in r["log_history"] if "episode" in entry]
        assert [entry["episode"] for entry in logs] == [8, 16]
        assert all(math.isfinite(entry["loss/policy_avg"]) for entry in logs)
        assert abs(logs[1]["objective/kl"]) > 1e-6  # the first update moved the policy away from the reference
    for update in range(2):  # the ranks rolled out different prompts
        assert not set(ranks[0]["prompts"][update]) & set(ranks[1]["prompts"][update])
    assert ranks[0]["params_after"] == pytest.approx(ranks[1]["params_after"], rel=1e-6, abs=1e-6)
