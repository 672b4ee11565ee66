"""The cost of the distributed path on one machine: the GRPO work of `grpo_vs_trl` (SmolLM2-135M-Instruct)
run by 2 processes x 1 thread under torchrun (gloo, FSDP2) against 1 process x 2 threads, alternating.

    .venv/bin/python bench/dist_overhead.py [--steps 2] [--rounds 2] [key=value ...]

Each run is a fresh launch doing one warm-up step and --steps measured steps (`grpo_vs_trl/aha_worker.py`);
medians are over the measured steps of all rounds. Peak RSS is per process (the largest process of the launch,
from wait4). Writes bench/results/dist_overhead.json (commit and CPU flags inside) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "grpo_vs_trl"))

from run import cpu_flags, cpu_name, run_worker  # noqa: E402

from aha.io import atomic_write_text  # noqa: E402

WORKER = str(HERE / "grpo_vs_trl" / "aha_worker.py")


def launches(steps: int, overrides: list[str]) -> dict[str, tuple[list[str], dict]]:
    one = [sys.executable, WORKER, str(steps), "runtime.threads=2", *overrides]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER, str(steps),
           "runtime.threads=1", *overrides]
    return {"1 process x 2 threads": (one, {"OMP_NUM_THREADS": "2"}),
            "2 processes x 1 thread": (two, {"OMP_NUM_THREADS": "1"})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args, overrides = ap.parse_known_args()
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name, (cmd, env) in launches(args.steps, overrides).items():
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                runs.setdefault(name, []).append(run_worker(cmd))
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
    summary = {}
    for name, rs in runs.items():
        steps = [s for r in rs for s in r["steps"][1:]]
        summary[name] = {"measured_steps": len(steps),
                         "step_s": statistics.median(s["seconds"] for s in steps),
                         "generate_s": statistics.median(s["generate_s"] for s in steps),
                         "train_s": statistics.median(s["train_s"] for s in steps),
                         "train_tokens": statistics.median(s["train_tokens"] for s in steps),
                         "peak_rss_gib_per_process": max(r["peak_rss_gib"] for r in rs)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    result = {"commit": commit, "cpu": cpu_name(), "cpu_flags": cpu_flags(), "steps": args.steps, "rounds": args.rounds,
              "overrides": overrides, "summary": summary}
    atomic_write_text(HERE / "results" / "dist_overhead.json", json.dumps(result, indent=1) + "\n")
    print(f"commit {commit}, {cpu_name()}, {cpu_flags()}\n")
    print("| launch | s/step (median) | generate | train | tokens trained | peak RSS per process |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['step_s']:.1f} | {s['generate_s']:.1f} | {s['train_s']:.1f} | {s['train_tokens']:.0f} | "
              f"{s['peak_rss_gib_per_process']:.2f} GiB |")


if __name__ == "__main__":
    main()
