#!/usr/bin/env bash
# Fresh-machine check: clone this repository into a temporary directory, create a new virtual environment there and
# run the two README quickstart commands exactly as a user would (they are read from README.md, not retyped here).
#
# Usage: bash scripts/fresh_machine_check.sh [--with-uncommitted] [--only demo|tests] [--keep]
#   --with-uncommitted  also copy tracked changes and untracked (not ignored) files of the working tree into the
#                       clone (to check work before it is committed)
#   --only demo|tests   run only README command 1 (demo) or 2 (tests)
#   --keep              keep the temporary directory (default: removed on success)
# The model cache is fresh too (TRL_TEXT2GRAD_CACHE inside the temporary directory), so the GGUF conversion of the
# default model runs as on a new machine. Needs network access to PyPI for the install.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
WITH_UNCOMMITTED=0; ONLY=""; KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --with-uncommitted) WITH_UNCOMMITTED=1 ;;
    --only) ONLY="$2"; shift ;;
    --keep) KEEP=1 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/t2g-fresh.XXXXXX")
echo "fresh-machine check in $WORK"
git clone -q "$SRC" "$WORK/repo"
if [ "$WITH_UNCOMMITTED" = 1 ]; then
  (cd "$SRC" && git ls-files -co --exclude-standard -z) | \
    (cd "$SRC" && xargs -0 -I{} sh -c 'if [ -f "{}" ]; then mkdir -p "$0/$(dirname "{}")" && cp -p "{}" "$0/{}"; fi' "$WORK/repo")
  echo "copied the working tree's uncommitted files into the clone"
fi
cd "$WORK/repo"
export TRL_TEXT2GRAD_CACHE="$WORK/cache"
unset VIRTUAL_ENV || true

mapfile -t COMMANDS < <(grep -E '^bash scripts/install\.sh && ' README.md)
if [ "${#COMMANDS[@]}" -ne 2 ]; then
  echo "README.md must contain exactly two quickstart commands starting with 'bash scripts/install.sh && '; found ${#COMMANDS[@]}" >&2
  exit 1
fi

status=0
run() {  # run <label> <command>
  local label=$1 cmd=$2 start end rc
  echo; echo "=== README command ($label): $cmd"
  start=$(date +%s)
  set +e
  bash -c "$cmd" > "$WORK/$label.log" 2>&1
  rc=$?
  set -e
  end=$(date +%s)
  tail -n 25 "$WORK/$label.log"
  echo "=== ($label) exit code $rc after $((end - start)) s; full log: $WORK/$label.log"
  [ "$rc" -eq 0 ] || status=1
}
[ "$ONLY" = "tests" ] || run demo "${COMMANDS[0]}"
[ "$ONLY" = "demo" ] || run tests "${COMMANDS[1]}"

if [ "$ONLY" != "tests" ]; then
  if [ -s demo_out/report.html ]; then
    echo "demo report: $WORK/repo/demo_out/report.html ($(wc -c < demo_out/report.html) bytes)"
    .venv/bin/python - <<'PY'
import json
m = json.load(open("demo_out/metrics.json"))
print("demo metrics:", json.dumps(m["metrics"]))
print("skipped stages:", m["skipped"] or "none")
PY
  else
    echo "demo_out/report.html is missing" >&2; status=1
  fi
fi
if [ "$status" -eq 0 ] && [ "$KEEP" = 0 ]; then rm -rf "$WORK"; echo "fresh-machine check passed (temporary directory removed)";
else echo "fresh-machine check finished with status $status; files kept in $WORK"; fi
exit $status
