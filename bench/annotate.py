"""Annotation throughput: an LLM critic through a real local server, and the sandboxed unit-test critic.

1. ``transformers serve`` with the default SmolLM2-135M checkpoint on 127.0.0.1; ``OpenAICompatibleCritic`` annotates
   the same rows at ``max_concurrency`` 1, 4 and 16 (rows/s, wall clock, after one warm-up request).
2. ``UnitTestCritic`` on HumanEval: every problem's canonical solution plus a copy with an injected bug (the last
   ``return`` line replaced by ``return None``), at 1 and 2 sandbox workers (rows/s), and the fraction judged as
   expected (canonical → pass, bugged → fail).
3. Per-program overhead of the sandbox: a bare ``python -c pass`` subprocess, ``run_python("pass")`` in the
   sandbox, and one ``run_tests`` round (candidate in the sandbox + trusted test process, one call), on every
   sandbox backend available (median of ``--repeats`` runs, milliseconds).

Usage::

    .venv/bin/python bench/annotate.py                       # both parts
    .venv/bin/python bench/annotate.py --skip-server --problems 164
    .venv/bin/python bench/annotate.py --skip-server --skip-unit-tests --overhead   # only the sandbox overhead
    .venv/bin/python bench/annotate.py --rows 16 --max-tokens 32 --concurrency 1 4 16

Prints one JSON object per measurement and a Markdown table at the end. The machine's load average is printed
too: throughput on a shared machine depends on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def bench_server(
    rows: int, max_tokens: int, concurrencies: list[int], threads: int | None, continuous: bool
) -> list[dict]:
    from trl_text2grad.annotate import annotate
    from trl_text2grad.critics.local_server import TransformersServer
    from trl_text2grad.critics.openai_compatible import OpenAICompatibleCritic
    from trl_text2grad.models import default_model_path

    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ultrafeedback_binarized.jsonl"
    source = [json.loads(line) for line in fixture.read_text().splitlines()]
    data = []
    for i in range(rows):
        r = source[i % len(source)]
        data.append(
            {"prompt": r["prompt"], "response": r["rejected" if i % 2 else "chosen"][-1]["content"] + f" ({i})"}
        )
    results = []
    start = time.monotonic()
    with TransformersServer(default_model_path(), threads=threads, continuous_batching=continuous) as server:
        startup = time.monotonic() - start
        print(json.dumps({"server_startup_s": round(startup, 1), "load": _load()}), flush=True)
        for concurrency in concurrencies:
            critic = OpenAICompatibleCritic(
                model=server.model,
                base_url=server.base_url,
                api_key_env=None,  # the local server needs no key
                template="qa",
                max_tokens=max_tokens,
                max_concurrency=concurrency,
                timeout=600,
                max_retries=0,
            )
            critic.critique([data[0]["prompt"]], [data[0]["response"]])  # warm-up
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.monotonic()
                out = annotate(data, critic, Path(tmp) / "out.jsonl", batch_size=max(concurrency, 4), progress=False)
                elapsed = time.monotonic() - t0
            failed = sum(1 for e in out["critic_error"] if e and e.startswith("request failed"))
            parse_errors = sum(1 for e in out["critic_error"] if e and not e.startswith("request failed"))
            result = {
                "critic": "openai_compatible/transformers_serve",
                "continuous_batching": continuous,
                "concurrency": concurrency,
                "rows": rows,
                "max_tokens": max_tokens,
                "seconds": round(elapsed, 2),
                "rows_per_s": round(rows / elapsed, 3),
                "request_failures": failed,
                "parse_errors": parse_errors,
                "unlocated_quotes": int(sum(out["num_unlocated"])),
                "error_examples": sorted({str(e)[:160] for e in out["critic_error"] if e})[:3],
                "load": _load(),
            }
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def _inject_bug(solution: str) -> str:
    lines = solution.rstrip("\n").split("\n")
    for i in range(len(lines) - 1, -1, -1):
        match = re.match(r"^(\s*)return\b", lines[i])
        if match:
            lines[i] = f"{match.group(1)}return None"
            return "\n".join(lines) + "\n"
    return solution + "\n    raise RuntimeError('bug')\n"


def bench_overhead(repeats: int) -> list[dict]:
    """Median wall-clock ms per program: bare interpreter, sandboxed program, sandboxed test round, per backend."""
    import statistics
    import subprocess
    import sys

    from trl_text2grad.critics import sandbox
    from trl_text2grad.critics.harness import TestProgram, run_tests

    def median_ms(fn) -> float:
        fn()  # warm-up (and capability probe)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times) * 1000, 1)

    program = TestProgram(
        "def f(x):\n    return x + 1\n", "def check(candidate):\n    assert candidate(1) == 2\n", "f"
    )
    bare = median_ms(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
    results = [{"critic": "overhead", "setting": "bare `python -c pass`", "ms": bare, "load": _load()}]
    print(json.dumps(results[0]), flush=True)
    previous = os.environ.get(sandbox.BACKEND_ENV)
    try:
        for backend in ("bwrap", "unshare"):
            if sandbox._capabilities(None, backend)["backend"] != backend:
                continue
            os.environ[sandbox.BACKEND_ENV] = backend
            for setting, fn in (
                (f"{backend}: run_python('pass')", lambda: sandbox.run_python("pass", timeout=30)),
                (f"{backend}: run_tests (1 call)", lambda: run_tests(program, timeout=30)),
            ):
                ms = median_ms(fn)
                result = {"critic": "overhead", "setting": setting, "ms": ms, "x_bare": round(ms / bare, 1),
                          "load": _load()}  # fmt: skip
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        if previous is None:
            os.environ.pop(sandbox.BACKEND_ENV, None)
        else:
            os.environ[sandbox.BACKEND_ENV] = previous
    return results


def bench_unit_tests(problems: int, workers_list: list[int]) -> list[dict]:
    from trl_text2grad.critics import UnitTestCritic
    from trl_text2grad.tasks.humaneval import load_humaneval

    dataset = load_humaneval().select(range(problems))
    prompts, responses, tests, entries, expected = [], [], [], [], []
    for row in dataset:
        for bugged in (False, True):
            code = _inject_bug(row["canonical_solution"]) if bugged else row["canonical_solution"]
            prompts.append(row["prompt"])
            responses.append(f"```python\n{row['prompt']}{code}```")
            tests.append(row["test"])
            entries.append(row["entry_point"])
            expected.append(not bugged)
    results = []
    for workers in workers_list:
        critic = UnitTestCritic(timeout=10, max_workers=workers)
        t0 = time.monotonic()
        critiques = critic.critique(prompts, responses, tests=tests, entry_point=entries)
        elapsed = time.monotonic() - t0
        passed = [r is not None and r.passed for r in critic.last_results]
        agree = sum(p == e for p, e in zip(passed, expected)) / len(expected)
        with_poor = sum(1 for c, e in zip(critiques, expected) if not e and c.poor)
        result = {
            "critic": "unit_tests/humaneval",
            "workers": workers,
            "rows": len(responses),
            "seconds": round(elapsed, 2),
            "rows_per_s": round(len(responses) / elapsed, 2),
            "judged_as_expected": round(agree, 4),
            "bugged_rows_with_poor_span": f"{with_poor}/{len(expected) - sum(expected)}",
            "load": _load(),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16, help="rows annotated per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32, help="critique tokens per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    parser.add_argument("--continuous-batching", action="store_true", help="transformers serve --continuous-batching")
    parser.add_argument("--problems", type=int, default=164, help="HumanEval problems (x2 rows: canonical + bugged)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-unit-tests", action="store_true")
    parser.add_argument("--overhead", action="store_true", help="also measure the per-program sandbox overhead")
    parser.add_argument("--repeats", type=int, default=20, help="runs per overhead measurement")
    args = parser.parse_args()

    print(json.dumps({"cpus": os.cpu_count(), "load_at_start": _load()}), flush=True)
    results = []
    if not args.skip_unit_tests:
        results += bench_unit_tests(args.problems, args.workers)
    if args.overhead:
        results += bench_overhead(args.repeats)
    if not args.skip_server:
        results += bench_server(args.rows, args.max_tokens, args.concurrency, args.threads, args.continuous_batching)
    print("\n| critic | setting | rows | seconds | rows/s | notes |\n|---|---|---|---|---|---|")
    for r in results:
        if r["critic"] == "overhead":
            print(f"| sandbox overhead | {r['setting']} | 1 | {r['ms'] / 1000:.4f} | {1000 / r['ms']:.1f} | "
                  f"{r.get('x_bare', 1.0)}x bare python; load {r['load']} |")  # fmt: skip
            continue
        if r["critic"].startswith("unit_tests"):
            setting, notes = f"workers={r['workers']}", f"judged as expected {r['judged_as_expected']:.1%}"
        else:
            setting = f"concurrency={r['concurrency']}" + (" cb" if r["continuous_batching"] else "")
            notes = f"{r['request_failures']} failed, {r['parse_errors']} parse errors, max_tokens={r['max_tokens']}"
        print(
            f"| {r['critic']} | {setting} | {r['rows']} | {r['seconds']} | {r['rows_per_s']} | {notes}; load {r['load']} |"
        )


if __name__ == "__main__":
    main()
