"""Completions per second for each reward, through RewardSet (the guarded path the trainer uses).

    .venv/bin/python bench/rewards_speed.py [--n 2000] [--workers 2]

Completions look like a small model's GRPO rollouts: ~1.5 kB of reasoning in <think>, then an answer;
golds repeat in groups of 8 (one prompt, G = 8 samples), half the answers right. Cheap rewards run
inline (one core); verifiers run in-process (workers=0) and in worker processes (--workers).
"""

from __future__ import annotations

import argparse
import random
import time

from aha.data.example import Example
from aha.rewards import RewardsConfig, RewardSet
from aha.rollout.base import Completion

REASONING = ("Let me work through this carefully. First compute the partial sums, then check them again. "
             "Wait, 12 + 7 = 19, so the next term follows. ") * 10


def math_batch(n: int, rng: random.Random, latex_only: bool = False) -> tuple[list[Completion], list[Example]]:
    """Groups of 8 sharing a gold; golds alternate between LaTeX fractions and integers (integers take
    the exact fast path, fractions go through math-verify and sympy)."""
    comps, exs = [], []
    for i in range(n):
        if i % 8 == 0:
            a, b = rng.randint(1, 50), rng.randint(2, 60)
            frac = latex_only or (i // 8) % 2 == 1
            gold = rf"\frac{{{a}}}{{{b}}}" if frac else str(a * b)
        right = i % 2 == 0
        if frac:
            ans = f"{a}/{b}" if right else rf"\frac{{{a + 1}}}{{{b}}}"
        else:
            ans = gold if right else str(a * b + 1)
        comps.append(Completion(f"<think>{REASONING}</think>\n<answer>{ans}</answer>"))
        exs.append(Example("q", gold, id=str(i // 8)))
    return comps, exs


def number_batch(n: int, rng: random.Random):
    comps, exs = [], []
    for i in range(n):
        gold = rng.randint(1, 10**6)
        ans = f"${gold:,}" if i % 2 == 0 else str(gold + 1)
        comps.append(Completion(f"<think>{REASONING}</think>\n<answer>{ans}</answer>"))
        exs.append(Example("q", str(gold), task="number"))
    return comps, exs


def countdown_batch(n: int, rng: random.Random):
    comps, exs = [], []
    for i in range(n):
        nums = [rng.randint(1, 99) for _ in range(4)]
        target = nums[0] * nums[1] - nums[2] + nums[3]
        expr = f"{nums[0]} * {nums[1]} - {nums[2]} + {nums[3]}" if i % 2 == 0 else f"{nums[0]} + {nums[1]}"
        comps.append(Completion(f"<think>{REASONING}</think>\n<answer>{expr}</answer>"))
        exs.append(Example("q", "", task="countdown", metadata={"numbers": nums, "target": target}))
    return comps, exs


def rg_batch(n: int, rng: random.Random):
    comps, exs = [], []
    for i in range(n):
        gold = str(rng.randint(1, 500))
        comps.append(Completion(f"<think>{REASONING}</think>\n<answer>{gold if i % 2 == 0 else '0'}</answer>"))
        exs.append(Example("q", gold, task="rg:leg_counting", metadata={"entry": {"answer": gold, "metadata": {}}}))
    return comps, exs


def rate(rs: RewardSet, name: str, comps, exs, repeat: int = 1) -> float:
    rs.component(name, comps[:16], exs[:16])  # warm-up: imports, caches, worker start
    start = time.perf_counter()
    for _ in range(repeat):
        rs.component(name, comps, exs)
    return repeat * len(comps) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="completions per verifier measurement")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rng = random.Random(0)
    rows = []
    comps, exs = math_batch(args.n, rng)
    with RewardSet(RewardsConfig(weights={"format": 1.0})) as inline:
        for name in ["format", "format_partial", "language", "overlong", "budget"]:
            rows.append((name, "inline", rate(inline, name, comps, exs, repeat=5)))
        batches = {"accuracy (math)": (comps, exs), "accuracy (math, LaTeX only)": math_batch(args.n, rng, True),
                   "accuracy (number)": number_batch(args.n, rng),
                   "accuracy (countdown)": countdown_batch(args.n, rng), "accuracy (rg:leg_counting)": rg_batch(args.n, rng)}
        for label, (c, e) in batches.items():
            rows.append((label, "workers=0", rate(inline, "accuracy", c, e)))
    if args.workers > 0:
        with RewardSet(RewardsConfig(weights={"accuracy": 1.0}, workers=args.workers)) as pooled:
            for label, (c, e) in batches.items():
                if "math" in label or "rg:" in label:  # number and countdown are verified inline anyway
                    rows.append((label, f"workers={args.workers}", rate(pooled, "accuracy", c, e)))
    print(f"{'reward':28} {'mode':10} {'completions/s':>14}")
    for name, mode, r in rows:
        print(f"{name:28} {mode:10} {r:14,.0f}")


if __name__ == "__main__":
    main()
