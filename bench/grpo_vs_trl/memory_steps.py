"""Resident memory over many steps of the work of `work.py`: one process per setting, run one after the other
(alternating when a setting is given twice), each step's wall time and phases, its peak RSS so far, and glibc's
heap in use and free (`mallinfo2`) after it. Whether memory stays flat over a run or keeps growing.

    .venv/bin/python bench/grpo_vs_trl/memory_steps.py --steps 20 --out bench/results/memory_steps.json \
        default runtime.kernel_cache=1024 default runtime.kernel_cache=1024

Each setting is `default` (aha's own) or space-free `key=value[,key=value]` overrides (as `aha_worker.py` takes them).
Run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import work  # noqa: E402
from run import cpu_flags, cpu_name, head_commit  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_gib() -> tuple[float, float]:
    """glibc's heap: bytes in use and bytes free but kept (GiB); zeros where the C library is not glibc."""
    from aha import runtime

    libc = runtime._glibc()  # looked up once, None off glibc
    if libc is None or not hasattr(libc, "mallinfo2"):
        return 0.0, 0.0
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks / 2**30, info.fordblks / 2**30


def worker(steps: int, overrides: list[str]) -> None:
    """One run in this process: prints one JSON line."""
    from aha_worker import make_config

    from aha import runtime
    from aha.training.grpo_loop import GRPOTrainer

    overrides = [*work.AHA_SETTINGS, *overrides]
    runtime.apply(runtime.load(None, overrides))
    trainer = GRPOTrainer(make_config(steps, overrides))
    rows = []
    for _ in range(steps):
        t = time.perf_counter()
        m = trainer.step()
        used, free = heap_gib()
        rows.append({"seconds": round(time.perf_counter() - t, 2), "train_tokens": m.get("train_tokens", 0.0),
                     "generate_s": round(m["time/generate_s"], 2), "logprob_s": round(m["time/logprob_s"], 2),
                     "train_s": round(m["time/train_s"], 2),
                     "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                     "heap_used_gib": round(used, 3), "heap_free_gib": round(free, 3)})
    print(json.dumps({"overrides": overrides, "runtime": vars(runtime.applied()),
                      "env": {k: os.environ.get(k) for k in runtime.KERNEL_CACHE_VARIABLES}, "steps": rows}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("settings", nargs="+")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="bench/results/memory_steps.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.steps, [] if a.settings == ["default"] else a.settings[0].split(","))
        return
    result = {"commit": head_commit(), "cpu": cpu_name(), "cpu_bf16_flags": cpu_flags(), "work": work.WORK,
              "steps": a.steps, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    for setting in a.settings:
        out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(a.steps), setting],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{setting}: worker failed: {out.stderr.strip().splitlines()[-1:]}")
        run = json.loads(out.stdout.strip().splitlines()[-1])
        run["setting"] = setting
        result["runs"].append(run)
        print(setting, " ".join(f"{s['seconds']:.1f}s/{s['peak_rss_gib']:.2f}G/{s['heap_used_gib']:.2f}u"
                                for s in run["steps"]), flush=True)
        tmp = Path(a.out + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(a.out)  # atomically, after every run


if __name__ == "__main__":
    main()
