#!/usr/bin/env bash
# Hostile programs against the sandbox (tests/test_sandbox_adversarial.py) as the unprivileged uid 65534 (a laptop /
# cluster account), from a world-readable copy of the sources. Run by tests/test_sandbox_unprivileged.py when the
# test suite runs as root (as CI does); the main pytest run already covers the current user.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
[ "$(id -u)" = 0 ] || { echo "adversarial_unprivileged.sh: run as root (it drops to uid 65534)" >&2; exit 2; }

as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
work=$(mktemp -d /tmp/t2g-ci-unprivileged.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -r src tests pyproject.toml "$work/"
mkdir "$work/home"
chmod -R a+rX "$work"
chown 65534:65534 "$work/home"
py="$(pwd)/$PY"
if ! as_nobody env -i PATH=/usr/bin:/bin "$py" -c "import pytest, rapidfuzz" 2>/dev/null; then
    # the project's interpreter is not usable by uid 65534 (e.g. it lives under /root): a small venv for the suite
    base=""
    for candidate in /usr/bin/python3 /usr/local/bin/python3 "$(command -v python3)"; do
        if [ -x "$candidate" ] && as_nobody env -i PATH=/usr/bin:/bin "$candidate" -c "import venv" 2>/dev/null; then base=$candidate; break; fi
    done
    [ -n "$base" ] || { echo "ci: no python3 that uid 65534 can run" >&2; exit 1; }
    "$base" -m venv "$work/venv"
    "$work/venv/bin/python" -m pip install -q pytest rapidfuzz 2> >(grep -v "^WARNING: Location" >&2)
    chmod -R a+rX "$work/venv"
    py="$work/venv/bin/python"
fi
cd "$work"
as_nobody env -i PATH=/usr/bin:/bin HOME="$work/home" PYTHONPATH="$work/src" OMP_NUM_THREADS=1 \
    "$py" -m pytest -q -p no:cacheprovider -m adversarial tests/test_sandbox_adversarial.py
