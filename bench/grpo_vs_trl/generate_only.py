"""Generation alone, on the work of `work.py`: the trainer's rollout engine generates the work's first
8 prompts × 8 completions `--reps` times in one process (torch seeded the same way each time), and prints each
generation's time, tokens, longest completion and time per decode step. The first generation of a process pays
any compiling (`runtime.decode_kernel`).

    AHA_BENCH_WORK=r1_length .venv/bin/python bench/grpo_vs_trl/generate_only.py runtime.decode_kernel=eager

Run it with the machine otherwise idle; alternate settings in separate processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import work  # noqa: E402
from aha_worker import make_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="*", help="key=value settings on top of the work's")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    import torch

    from aha import runtime
    from aha.training.grpo_loop import GRPOTrainer

    overrides = [*work.AHA_SETTINGS, *a.overrides]
    runtime.apply(runtime.load(None, overrides))
    trainer = GRPOTrainer(make_config(1, overrides))
    prompts = [trainer.encode(e) for e in trainer.examples[:work.PROMPTS_PER_STEP]]
    for rep in range(a.reps):
        torch.manual_seed(0)
        t = time.perf_counter()
        groups = trainer.engine.generate(prompts, work.GROUP_SIZE, trainer.sampling)
        seconds = time.perf_counter() - t
        lengths = [len(c.completion_ids) for g in groups for c in g]
        print(f"{' '.join(a.overrides) or 'default'} generation {rep + 1}: {seconds:.1f} s, {sum(lengths)} tokens, "
              f"longest {max(lengths)}, {seconds / max(lengths) * 1e3:.0f} ms a decode step", flush=True)


if __name__ == "__main__":
    main()
