"""Re-score an `aha eval` output folder's samples.jsonl with `accuracy_lenient` (the last number counts when
there are no answer tags), to separate "learned to answer" from "learned the format".

    .venv/bin/python bench/lenient_from_samples.py runs/bench_r1_zero/eval_before/greedy [...more folders]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aha.data.example import Example
from aha.data.tasks import TaskConfig, load_task
from aha.rewards import RewardsConfig, RewardSet
from aha.rollout.base import Completion


def lenient(folder: Path, task: str, cfg: TaskConfig) -> float:
    gold = {e.id: e for e in load_task(task, cfg, "eval")}
    rs = RewardSet(RewardsConfig(weights={"accuracy_lenient": 1.0}))
    hits, n = 0.0, 0
    for line in (folder / "samples.jsonl").read_text().splitlines():
        rec = json.loads(line)
        ex: Example = gold[rec["id"]]
        _, parts = rs.score([Completion(text=t) for t in rec["completions"]], [ex] * len(rec["completions"]))
        hits += sum(parts["accuracy_lenient"])
        n += len(rec["completions"])
    return hits / max(n, 1)


if __name__ == "__main__":
    cfg = TaskConfig(eval_size=100, args={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2})
    for arg in sys.argv[1:]:
        print(f"{arg}: lenient accuracy {lenient(Path(arg), 'chain_sum', cfg):.3f}")
