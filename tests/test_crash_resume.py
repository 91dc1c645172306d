"""Crash-safe, reproducible training: kill -9 at any moment (also inside a checkpoint write), resume, compare bit for bit.

The training runs happen in subprocesses (``tests/scripts/crash_resume_run.py``: tiny random Llama models on CPU, a
checkpoint after every optimizer step). A run is killed with SIGKILL while it is blocked inside the write of a
checkpoint (after the weights; before the PPO rollout state; before the completion marker) or at a random moment;
``train(resume_from_checkpoint=True)`` must then continue from the newest complete checkpoint and end with exactly
the parameters, KL coefficient and RNG states of an uninterrupted run. Cases: PPO with full fine-tuning + value head,
PPO with LoRA, PPO with a separate value model, and the span reward trainer.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trl_text2grad.checkpoints import (
    COMPLETE_MARKER,
    IncompleteCheckpointError,
    checkpoint_problem,
    parse_resume_argument,
    resolve_resume_checkpoint,
    write_completion_marker,
)

SCRIPT = Path(__file__).parent / "scripts" / "crash_resume_run.py"
SRC = Path(__file__).resolve().parents[1] / "src"
RUNS = ("ppo-full", "ppo-lora", "ppo-vmodel", "reward")
# (run, pause stage, checkpoint step whose write is interrupted); PPO has 4 steps per rollout, 12 in all
KILL_CASES = [
    ("ppo-full", "before_extra", 5),  # mid-rollout: the rollout buffer must come back from checkpoint-4
    ("ppo-lora", "before_marker", 6),
    ("ppo-vmodel", "after_weights", 9),  # second data epoch
    ("reward", "before_marker", 4),
]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")


def _run(out: Path, runs: str, *extra: str, timeout: int = 900) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--runs", runs, *extra],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{runs} {extra} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def _start(out: Path, runs: str, *extra: str) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"{runs}.log", "w")
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--out", str(out), "--runs", runs, *extra],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended (rc={proc.returncode}) before pausing"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def _load(out: Path, run: str) -> dict:
    return torch.load(out / f"{run}.result.pt", weights_only=False)


def _assert_identical(got: dict, expected: dict, what: str) -> None:
    assert got["global_step"] == expected["global_step"], what
    assert got["params"].keys() == expected["params"].keys(), what
    for name, value in expected["params"].items():
        assert torch.equal(got["params"][name], value), f"{what}: parameter {name} differs"
    assert got["kl_coef"] == expected["kl_coef"], f"{what}: KL coefficient"
    assert got["python_random"] == expected["python_random"], f"{what}: Python random state"
    assert got["numpy_random"] == expected["numpy_random"], f"{what}: NumPy random state"
    assert torch.equal(got["torch_random"], expected["torch_random"]), f"{what}: torch random state"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Uninterrupted runs of every case (one process)."""
    out = tmp_path_factory.mktemp("reference")
    _run(out, ",".join(RUNS))
    return out


# ----------------------------------------------------------------------------------------------------------------
# kill -9 inside a checkpoint write, then resume with True
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("run,stage,step", KILL_CASES, ids=[f"{r}-{s}" for r, s, _ in KILL_CASES])
def test_kill_inside_checkpoint_write_then_resume_is_bit_identical(tmp_path, reference, run, stage, step):
    proc = _start(tmp_path, run, "--pause", f"{stage}:{step}")
    try:
        _wait_for(tmp_path / "PAUSED", proc)
    finally:
        _kill(proc)
    run_dir = tmp_path / run
    # the interrupted checkpoint is not visible; the previous one is complete
    assert not (run_dir / f"checkpoint-{step}").exists()
    assert (run_dir / f".tmp-checkpoint-{step}" / f"checkpoint-{step}").is_dir()
    assert checkpoint_problem(run_dir / f"checkpoint-{step - 1}") is None
    staged = run_dir / f".tmp-checkpoint-{step}" / f"checkpoint-{step}"
    with pytest.raises(IncompleteCheckpointError, match=COMPLETE_MARKER):
        resolve_resume_checkpoint(staged, run_dir)

    _run(tmp_path, run, "--resume")
    _assert_identical(_load(tmp_path, run), _load(reference, run), f"{run} killed {stage} of checkpoint-{step}")
    assert not (run_dir / f".tmp-checkpoint-{step}").exists()  # the next save of that step cleaned it up


def test_kill_at_random_moments_then_resume_is_bit_identical(tmp_path, reference):
    """Two kills at random moments (anywhere: start-up, training, saving), then resume; seed printed on failure."""
    seed = int(os.environ.get("CRASH_TEST_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    run = "ppo-full"
    for _ in range(2):
        proc = _start(tmp_path, run, "--resume") if (tmp_path / run).exists() else _start(tmp_path, run)
        # wait until training writes checkpoints, then kill after a random delay
        deadline = time.monotonic() + 600
        while not list((tmp_path / run).glob("*checkpoint-*")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))
        if proc.poll() is None:
            _kill(proc)
    resumable = any(checkpoint_problem(p) is None for p in (tmp_path / run).glob("checkpoint-*"))
    if resumable:
        _run(tmp_path, run, "--resume")
    else:  # killed before the first checkpoint was complete: resuming must refuse, a fresh run starts over
        _run(tmp_path, run)
    _assert_identical(_load(tmp_path, run), _load(reference, run), f"random kills (CRASH_TEST_SEED={seed})")


@pytest.mark.multiproc
def test_two_process_checkpoints_are_complete_and_resume_exactly(tmp_path):
    """DDP on 2 CPU processes: every checkpoint holds both ranks' rollout state and its marker; resuming from
    checkpoint-1 (checkpoint-2 removed) ends with the parameters of the uninterrupted run."""
    import shutil

    from conftest import accelerate_launch, free_port

    script = Path(__file__).parent / "scripts" / "multiproc_span_ppo.py"
    config = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "multi_cpu.yaml"
    shared = tmp_path / "ckpt"

    def launch(out: Path, *extra: str) -> list[dict]:
        cmd = [*accelerate_launch(), "--config_file", str(config), "--num_processes",
               "2", "--main_process_port", str(free_port()), str(script), "--out", str(out), "--updates", "2",
               "--checkpoint-dir", str(shared), *extra]  # fmt: skip
        env = dict(_env(), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        env.pop("ACCELERATE_USE_CPU", None)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, f"launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]

    full = launch(tmp_path / "full")
    required = ["trainer_state.json", "span_ppo_state_rank0.pt", "span_ppo_state_rank1.pt", "rng_state_1.pth"]
    for step in (1, 2):
        assert checkpoint_problem(shared / f"checkpoint-{step}", required) is None
    assert not list(shared.glob(".tmp-*"))
    shutil.rmtree(shared / "checkpoint-2")
    resumed = launch(tmp_path / "resumed", "--resume")
    assert [r["global_step"] for r in resumed] == [2, 2]
    for a, b in zip(full, resumed):
        assert a["params_after"] == b["params_after"]


# ----------------------------------------------------------------------------------------------------------------
# the same seed gives the same run
# ----------------------------------------------------------------------------------------------------------------
def test_two_fresh_runs_with_one_seed_are_bit_identical(tmp_path, reference):
    """Different global RNG states before the models, adapters and value head are built: the config seed decides."""
    _run(tmp_path, "ppo-lora,ppo-full,reward", "--pre-seed", "99")
    for run in ("ppo-lora", "ppo-full", "reward"):
        _assert_identical(_load(tmp_path, run), _load(reference, run), f"{run} with another pre-seed")


# ----------------------------------------------------------------------------------------------------------------
# completeness rules and resume selection (no training)
# ----------------------------------------------------------------------------------------------------------------
def _fake_checkpoint(root: Path, step: int, files: dict[str, bytes], complete: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    if complete:
        write_completion_marker(path, step)
    return path


def test_resume_true_takes_the_newest_complete_checkpoint_and_logs_the_skipped(tmp_path, caplog):
    state = {"trainer_state.json": b"{}", "span_ppo_state_rank0.pt": b"state"}
    _fake_checkpoint(tmp_path, 2, state)
    good = _fake_checkpoint(tmp_path, 4, state)
    _fake_checkpoint(tmp_path, 10, {"trainer_state.json": b"{}"}, complete=False)  # killed before the marker
    truncated = _fake_checkpoint(tmp_path, 6, state)
    (truncated / "span_ppo_state_rank0.pt").write_bytes(b"st")  # damaged after completion
    lacking = _fake_checkpoint(tmp_path, 8, {"trainer_state.json": b"{}"})  # complete, but no rollout state
    (tmp_path / ".tmp-checkpoint-12").mkdir()
    required = ["trainer_state.json", "span_ppo_state_rank0.pt"]
    with caplog.at_level("WARNING", logger="trl_text2grad.checkpoints"):
        assert resolve_resume_checkpoint(True, tmp_path, required) == str(good)
    log = caplog.text
    assert "checkpoint-10" in log and COMPLETE_MARKER in log
    assert "checkpoint-8" in log and "span_ppo_state_rank0.pt is missing" in log
    assert "checkpoint-6" in log and "span_ppo_state_rank0.pt has 2 bytes" in log
    assert "checkpoint-2" not in log
    # named explicitly: an error naming the missing file
    with pytest.raises(IncompleteCheckpointError, match="span_ppo_state_rank0.pt"):
        resolve_resume_checkpoint(lacking, tmp_path, required)
    with pytest.raises(IncompleteCheckpointError, match=COMPLETE_MARKER):
        resolve_resume_checkpoint(tmp_path / "checkpoint-10", tmp_path, required)
    with pytest.raises(FileNotFoundError, match="checkpoint-99"):
        resolve_resume_checkpoint(tmp_path / "checkpoint-99", tmp_path, required)
    # nothing complete at all
    empty = tmp_path / "empty"
    _fake_checkpoint(empty, 3, {"trainer_state.json": b"{}"}, complete=False)
    with pytest.raises(ValueError, match="no complete checkpoint.*checkpoint-3"):
        resolve_resume_checkpoint(True, empty, required)
    assert resolve_resume_checkpoint(None, tmp_path) is None and resolve_resume_checkpoint(False, tmp_path) is None


def test_marker_lists_every_file_with_its_size(tmp_path):
    path = _fake_checkpoint(tmp_path, 1, {"a.bin": b"12345", "trainer_state.json": b"{}"})
    (path / "sub").mkdir()
    manifest = json.loads((path / COMPLETE_MARKER).read_text())
    assert manifest == {"global_step": 1, "files": {"a.bin": 5, "trainer_state.json": 2}}
    (path / COMPLETE_MARKER).write_text("{not json")
    assert checkpoint_problem(path)[0] == COMPLETE_MARKER


@pytest.mark.parametrize(
    "value,expected",
    [("true", True), ("True", True), ("latest", True), (" LATEST ", True), (True, True), ("false", None),
     ("None", None), ("", None), (None, None), (False, None), ("runs/x/checkpoint-4", "runs/x/checkpoint-4")],
)  # fmt: skip
def test_parse_resume_argument(value, expected):
    assert parse_resume_argument(value) == expected


@pytest.mark.parametrize("script", ["ppo", "reward"])
def test_cli_resume_flag_reaches_train_as_true_or_path(script):
    """`--resume_from_checkpoint true|latest|<path>` through the scripts' own parsers and `train_and_save`."""
    import importlib

    from trl_text2grad.cli.common import train_and_save

    module = importlib.import_module(f"trl_text2grad.cli.{script}")

    class RecordingTrainer:
        class accelerator:  # noqa: N801 - mimics Trainer.accelerator
            is_main_process = False

        def train(self, resume_from_checkpoint=None):
            self.resumed = resume_from_checkpoint

        def save_model(self, output_dir):
            pass

    for flag, expected in (("true", True), ("latest", True), ("out/checkpoint-3", "out/checkpoint-3"), (None, None)):
        argv = ["--output_dir", "out", "--report_to", "none", "--use_cpu", "true"]
        if flag is not None:
            argv += ["--resume_from_checkpoint", flag]
        _, training_args, _ = module.make_parser().parse_args_and_config(args=argv)
        trainer = RecordingTrainer()
        train_and_save(trainer, training_args, evaluate=False, done_message="")
        assert trainer.resumed == expected, flag
