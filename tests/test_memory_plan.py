"""bench/memory_plan.py (the memory table of docs/benchmarks.md), run as a script: its figures against
hand-computed ones. (Tests never import bench/; running a script is fine.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "memory_plan.py"

PARAMS = 8_030_261_248  # Llama-3.1-8B's published parameter count
LORA_16 = 32 * 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)  # q,k,v,o,gate,up,down


def _table(*args: str) -> tuple[str, dict[str, dict[str, float]]]:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        rows[cells[0]] = {name: float(value) for name, value in zip(header[1:], cells[1:])}
    return out.stdout, rows


def test_counts_in_the_heading():
    text, _ = _table()
    assert f"{PARAMS / 1e9:.2f}B parameters" in text
    assert f"{LORA_16 / 1e6:.1f}M" in text


def test_zero_arithmetic():
    _, rows = _table("--gpus", "8")
    full, zero2, zero3 = (
        rows[k] for k in ("full fine-tuning, 1 GPU", "full fine-tuning, ZeRO-2", "full fine-tuning, ZeRO-3")
    )
    trainable = PARAMS + 4097  # + value head
    assert full["optimizer"] == pytest.approx(trainable * 12 / 1e9, abs=0.06)
    assert full["weights"] == full["reference"] == pytest.approx(PARAMS * 2 / 1e9, abs=0.06)
    assert zero2["optimizer"] == pytest.approx(trainable * 12 / 8 / 1e9, abs=0.06)
    assert zero2["weights"] == full["weights"]  # ZeRO-2 does not shard weights
    assert zero3["weights"] == pytest.approx(PARAMS * 2 / 8 / 1e9, abs=0.06)
    assert zero3["rollout_peak"] == pytest.approx(zero3["total"] + PARAMS * 2 * 7 / 8 / 1e9, abs=0.15)
    lora = rows["LoRA r=16, 1 GPU"]
    assert lora["reference"] == 0.0
    assert lora["optimizer"] == pytest.approx((LORA_16 + 4097) * 12 / 1e9, abs=0.06)
    _, rows4 = _table("--gpus", "4")
    assert rows4["full fine-tuning, ZeRO-2"]["optimizer"] == pytest.approx(trainable * 12 / 4 / 1e9, abs=0.06)
