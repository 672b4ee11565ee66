"""Sandbox throughput: programs per second, for trivial programs and for the canonical HumanEval solutions,
with bubblewrap and with the rlimits-only fallback.

    .venv/bin/python bench/sandbox_speed.py [--n 200] [--workers 4] [--isolation bwrap rlimits]

Modes: `bwrap` keeps sandboxes between programs (the default, `reuse=True`), `bwrap-fresh` starts new
namespaces and a new interpreter for every program, `rlimits` is the fallback without bubblewrap.
Throughput depends on what else runs on the machine, so the line above the table gives the load
average; as root with cgroup v1's cpuacct mounted, the CPU time each program costs (the sandbox
processes and this process together) is measured too, which other load does not change.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from aha.sandbox import SandboxJob, isolation, run_many
from aha.sandbox.core import _pool

CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class CpuMeter:
    """CPU time of this process and all its descendants, from a cgroup v1 cpuacct group of our own."""

    def __init__(self) -> None:
        self.group: Path | None = None
        if os.geteuid() == 0 and (CPUACCT / "cpuacct.usage").exists():
            try:
                group = CPUACCT / f"aha-bench-{os.getpid()}"
                group.mkdir()
                (group / "cgroup.procs").write_text(str(os.getpid()))
                self.group = group
            except OSError:
                self.group = None

    def ns(self) -> int | None:
        return int((self.group / "cpuacct.usage").read_text()) if self.group else None

    def close(self) -> None:
        if self.group:
            _pool.close()  # kept sandboxes live in the group too
            (CPUACCT / "cgroup.procs").write_text(str(os.getpid()))
            for _ in range(50):
                try:
                    self.group.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


def trivial_jobs(n: int, kind: str, reuse: bool) -> list[SandboxJob]:
    job = SandboxJob("def f(x):\n    return x + 1\n", ("assert f(1) == 2",), "f", isolation=kind, reuse=reuse)
    return [job] * n


def humaneval_jobs(kind: str, reuse: bool) -> list[SandboxJob] | None:
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
        jobs.append(dataclasses.replace(job, reuse=reuse))
    return jobs


def measure(jobs: list[SandboxJob], workers: int, meter: CpuMeter) -> str:
    run_many(jobs[: min(len(jobs), workers)], workers=workers)  # warm up: probe, kept sandboxes, page cache
    cpu0 = meter.ns()
    t = time.perf_counter()
    results = run_many(jobs, workers=workers)
    dt = time.perf_counter() - t
    cpu1 = meter.ns()
    line = f"{len(jobs) / dt:6.1f} programs/s ({sum(r.passed for r in results)}/{len(jobs)} passed)"
    if cpu0 is not None and cpu1 is not None:
        line += f", {(cpu1 - cpu0) / len(jobs) / 1e6:5.1f} ms CPU per program"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="trivial programs per measurement")
    ap.add_argument("--workers", type=int, default=4, help="threads driving sandbox processes")
    ap.add_argument("--isolation", nargs="+", default=["bwrap", "bwrap-fresh", "rlimits"])
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workers={args.workers}, "
          f"load average {os.getloadavg()[0]:.2f} (before)")
    meter = CpuMeter()
    try:
        for mode in args.isolation:
            kind, reuse = mode.removesuffix("-fresh"), not mode.endswith("-fresh")
            try:
                resolved = isolation(kind)
            except Exception as e:  # noqa: BLE001
                print(f"{mode:12s} unavailable: {e}")
                continue
            label = resolved + ("-fresh" if resolved == "bwrap" and not reuse else "")
            print(f"{label:12s} trivial programs:    {measure(trivial_jobs(args.n, kind, reuse), args.workers, meter)}")
            jobs = humaneval_jobs(kind, reuse)
            if jobs:
                print(f"{label:12s} HumanEval canonical: {measure(jobs, args.workers, meter)}")
    finally:
        meter.close()
    print(f"load average {os.getloadavg()[0]:.2f} (after)")


if __name__ == "__main__":
    main()
