#!/usr/bin/env bash
# Create (or reuse) a separate virtual environment with trl==1.12.0, the last TRL release that ships the classic
# `PPOTrainer` (as `trl.experimental.ppo.PPOTrainer`). The parity test (tests/test_trl112_parity.py), the PPO
# benchmark (bench/ppo_step.py) and the trl112 arm of the evidence runs (bench/learning_curves.py --arm trl112) run
# the reference trainer in it, in a subprocess.
#
# Usage: bash scripts/make_trl112_venv.sh [DIR]        (default: ~/.cache/trl_text2grad/trl112-venv)
# Env:   PYTHON=python3.11   TORCH_SPEC="torch==2.13.0"
#
# Idempotent: when DIR/bin/python already imports trl 1.12.0 it does nothing. trl 1.12.0 requires
# transformers>=4.56.2 and accelerate>=1.4.0, so the same transformers/accelerate/datasets as the main venv are
# pinned (both sides then share tokenizer, generation and attention code; differences come from TRL only).
set -euo pipefail
DIR=${1:-${TRL112_VENV:-$HOME/.cache/trl_text2grad/trl112-venv}}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}
PINS=(
  "trl==1.12.0"
  "transformers==5.24.0"
  "accelerate==1.15.0"
  "datasets==5.2.0"
  "pandas"
  "safetensors"
  "peft==0.21.2"        # LoRA for the trl112 arm of bench/learning_curves.py
  "rapidfuzz==3.14.6"   # trl_text2grad.spans, imported by the evidence tasks (bench/learning_curves.py)
  "json-repair==0.64.6" # critics (trl_text2grad.tasks.constrained_text / simple_code)
)
check() {
  "$DIR/bin/python" - <<'PY' 2>/dev/null
import trl, transformers, torch, peft, rapidfuzz, json_repair  # noqa: F401
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401
assert trl.__version__ == "1.12.0", trl.__version__
PY
}
if [ -x "$DIR/bin/python" ] && check; then
  echo "trl 1.12.0 venv already present: $DIR"
  exit 0
fi
start=$(date +%s)
mkdir -p "$(dirname "$DIR")"
[ -x "$DIR/bin/python" ] || "$PYTHON" -m venv "$DIR"
pip() { "$DIR/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip install -q --upgrade pip
if [ -n "$TORCH_SPEC" ]; then pip install -q "$TORCH_SPEC"; fi
pip install -q "${PINS[@]}"
if ! check; then
  echo "error: $DIR was created but 'from trl.experimental.ppo import PPOTrainer' fails in it;" >&2
  echo "       delete $DIR and rerun, or look at '$DIR/bin/python -m pip list'." >&2
  exit 1
fi
echo "trl 1.12.0 venv ready in $DIR ($(( $(date +%s) - start )) s)"
