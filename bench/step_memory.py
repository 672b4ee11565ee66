"""Resident memory of a GRPO step, phase by phase: the trainer built from a recipe, then RSS (and its peak,
sampled every 0.2 s) after the rollouts, after each training micro-batch, around the optimizer update and
after the rollout copy's sync, for a few steps. Where a run's memory goes before it is killed.

    .venv/bin/python bench/step_memory.py RECIPE [key=value ...] [--steps 2]

Prints one line per phase: seconds since start, RSS, peak RSS since the previous line (GB).
"""

from __future__ import annotations

import sys
import threading
import time

from aha import runtime
from aha.config import load_config
from aha.training import grpo_loop
from aha.training.config import TrainConfig


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1e6
    return 0.0


def main(argv: list[str]) -> None:
    steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 2
    recipe = argv[0]
    overrides = [a for a in argv[1:] if "=" in a]
    peak = [0.0]
    t0 = time.time()

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_gb())
            time.sleep(0.2)

    def log(what: str) -> None:
        now = rss_gb()
        print(f"{time.time() - t0:7.1f} s  rss {now:6.2f} GB  peak {max(peak[0], now):6.2f} GB  {what}", flush=True)
        peak[0] = now

    threading.Thread(target=sample, daemon=True).start()
    runtime.apply(runtime.load(recipe, overrides))  # the recipe's process settings, as `aha train` applies them
    trainer = grpo_loop.GRPOTrainer(load_config(TrainConfig, recipe, overrides))
    log(f"trainer built (gradient checkpointing {'on' if trainer.checkpointing else 'off'})")

    def traced(name: str):
        inner = getattr(trainer, name)

        def call(*a, **k):
            out = inner(*a, **k)
            log(name)
            return out
        setattr(trainer, name, call)

    for name in ("collect", "forward_logprobs", "sync_rollout_model"):
        traced(name)
    update = trainer.opt.step

    def opt_step(*a, **k):
        log("before the optimizer update")
        out = update(*a, **k)
        log("optimizer update")
        return out
    trainer.opt.step = opt_step
    for s in range(steps):
        m = trainer.step()
        log(f"step {s + 1}: generate {m['time/generate_s']:.0f} s, train {m['time/train_s']:.0f} s, "
            f"{m['train_tokens']:.0f} tokens")


if __name__ == "__main__":
    main(sys.argv[1:])
