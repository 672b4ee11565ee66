"""Sandbox throughput: programs per second, for trivial programs and for the canonical HumanEval solutions,
with bubblewrap and with the rlimits-only fallback.

    .venv/bin/python bench/sandbox_speed.py [--n 200] [--workers 4] [--isolation bwrap rlimits]

Each program is a full sandbox run (start bubblewrap and Python, fork the worker, run the tests, tear the
namespaces down). Numbers depend on the machine and on what else runs on it: report them with the
command line and the core count this prints.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from aha.sandbox import SandboxJob, isolation, run_many


def trivial_jobs(n: int, kind: str) -> list[SandboxJob]:
    job = SandboxJob("def f(x):\n    return x + 1\n", ("assert f(1) == 2",), "f", isolation=kind)
    return [job] * n


def humaneval_jobs(kind: str) -> list[SandboxJob] | None:
    try:
        from aha.data.code import load_humaneval
        from aha.rewards.code import build_job
    except ImportError:
        return None
    try:
        examples = load_humaneval()
    except Exception as e:  # noqa: BLE001 -- a bench skips what it cannot load
        print(f"  (HumanEval skipped: {e})")
        return None
    jobs = []
    for ex in examples:
        job = build_job(f"<answer>\n```python\n{ex.answer}\n```\n</answer>", ex, isolation=kind)
        assert job is not None
        jobs.append(job)
    return jobs


def measure(jobs: list[SandboxJob], workers: int) -> tuple[float, int]:
    run_many(jobs[: min(len(jobs), workers)], workers=workers)  # warm up: probe and page cache
    t = time.perf_counter()
    results = run_many(jobs, workers=workers)
    dt = time.perf_counter() - t
    return len(jobs) / dt, sum(r.passed for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="trivial programs per measurement")
    ap.add_argument("--workers", type=int, default=4, help="threads driving sandbox processes")
    ap.add_argument("--isolation", nargs="+", default=["bwrap", "rlimits"])
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workers={args.workers}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for kind in args.isolation:
        try:
            resolved = isolation(kind)
        except Exception as e:  # noqa: BLE001
            print(f"{kind:8s} unavailable: {e}")
            continue
        rate, ok = measure(trivial_jobs(args.n, kind), args.workers)
        print(f"{resolved:8s} trivial programs:    {rate:6.1f} programs/s ({ok}/{args.n} passed)")
        jobs = humaneval_jobs(kind)
        if jobs:
            rate, ok = measure(jobs, args.workers)
            print(f"{resolved:8s} HumanEval canonical: {rate:6.1f} programs/s ({ok}/{len(jobs)} passed)")


if __name__ == "__main__":
    main()
