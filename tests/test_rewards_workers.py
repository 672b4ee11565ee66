"""RewardSet with worker processes: math-verify must work inside them (the anchor bug scored every MATH
problem 0 in workers), timeouts must be enforced there, and a worker stuck where signals cannot reach
it must be killed by the parent, which still gets a result."""

from __future__ import annotations

import os
import signal
import time

import pytest

from aha.data.example import Example
from aha.errors import AhaError
from aha.rewards import REGISTRY, RewardsConfig, RewardSet
from aha.rewards.base import RewardSpec
from aha.rollout.base import Completion


def in_child(completion, example, step=0):
    """1.0 when run in a process other than the one whose pid is the gold answer."""
    return 1.0 if os.getpid() != int(example.answer) else 0.0


def sleepy(completion, example, step=0):
    time.sleep(float(example.answer))
    return 1.0


def stuck(completion, example, step=0):
    """Blocks SIGALRM, so the worker's own time limit cannot fire: like a hang inside C code."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)
    return 1.0


REG = {
    **REGISTRY,
    "in_child": lambda cfg: RewardSpec("in_child", in_child, 0.0, 1.0, heavy=True),
    "sleepy": lambda cfg: RewardSpec("sleepy", sleepy, 0.0, 1.0, heavy=True),
    "stuck": lambda cfg: RewardSpec("stuck", stuck, 0.0, 1.0, heavy=True),
}


def tagged(answer: str) -> Completion:
    return Completion(f"<think>r</think><answer>{answer}</answer>")


@pytest.fixture(scope="module")
def pooled():
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0, "format": 0.5}, workers=2, timeout_s=1.0),
                   registry=REG, grace_s=1.0)
    yield rs
    rs.close()


def test_math_verify_works_inside_workers(pooled):
    golds = [r"\frac{1}{2}", "1,450,000", "18", r"\{1,2\}", "[1,2)", r"50\%"]
    answers = ["0.5", "1450000", "18.0", r"\{2,1\}", "[1,2)", "50"]
    exs = [Example("q", g) for g in golds]
    totals, parts = pooled.score([tagged(a) for a in answers] + [tagged("7")] * len(golds), exs + exs)
    assert parts["accuracy"] == [1.0] * len(golds) + [0.0] * len(golds)
    assert parts["format"] == [1.0] * (2 * len(golds))
    assert pooled._pool is not None and len(pooled._pool.workers) == 2  # scored by workers, no fallback


def test_all_tasks_in_workers(pooled):
    exs = [
        Example("q", "18", task="number"),
        Example("q", "", task="countdown", metadata={"numbers": [1, 3, 5, 9], "target": 24}),
        Example("q", "500", task="rg:leg_counting", metadata={"entry": {"answer": "500", "metadata": {}}}),
        Example("q", r"\frac{", id="bad-gold"),
    ]
    totals, _ = pooled.score([tagged("18"), tagged("1*3*5 + 9"), tagged("500"), tagged(r"\frac{")], exs)
    assert totals == [1.5, 1.5, 1.5, 0.5]
    assert pooled.last_status["accuracy"] == ["ok", "ok", "ok", "gold"]


def test_rewards_really_run_in_other_processes(pooled):
    parent = str(os.getpid())
    vals = pooled.component("in_child", [tagged("x")] * 4, [Example("q", parent)] * 4)
    assert vals == [1.0] * 4


def test_worker_timeout_scores_zero_and_is_counted(pooled):
    before = pooled.stats["timeouts"]
    start = time.perf_counter()
    vals = pooled.component("sleepy", [tagged("x")] * 3, [Example("q", "30"), Example("q", "0"), Example("q", "0")])
    assert vals == [0.0, 1.0, 1.0]
    assert pooled.stats["timeouts"] == before + 1
    assert time.perf_counter() - start < 5.0


def test_config_errors_come_back_from_workers(pooled):
    with pytest.raises(AhaError, match="'n_queens' is refused"):
        pooled.prepare([Example("q", "1", task="rg:n_queens", metadata={"entry": {}})])
    with pytest.raises(AhaError, match="did you mean 'leg_counting'"):
        pooled.score([tagged("1")], [Example("q", "1", task="rg:leg_countin", metadata={"entry": {}})])


def test_stuck_worker_is_killed_and_the_pool_recovers():
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0}, workers=1, timeout_s=0.5), registry=REG, grace_s=0.5)
    try:
        start = time.perf_counter()
        vals = rs.component("stuck", [tagged("x")], [Example("q", "1")])
        assert vals == [0.0]
        assert rs.last_status["stuck"] == ["timeout"] and rs.stats["timeouts"] == 1
        assert time.perf_counter() - start < 20.0
        assert rs._pool.killed == 1
        totals, _ = rs.score([tagged("0.5")], [Example("q", r"\frac{1}{2}")])  # a fresh worker takes over
        assert totals == [1.0]
    finally:
        rs.close()


def test_unpicklable_reward_scores_zero_as_error(pooled):
    reg_fn = RewardSpec("lam", lambda c, e, s: 1.0, 0.0, 1.0, heavy=True)
    pooled.specs["lam"] = reg_fn
    try:
        vals = pooled.component("lam", [tagged("x")] * 2, [Example("q", "1")] * 2)
    finally:
        del pooled.specs["lam"]
    assert vals == [0.0, 0.0] and pooled.last_status["lam"] == ["error", "error"]
    assert pooled.component("accuracy", [tagged("2")], [Example("q", "2")]) == [1.0]  # workers still fine


def test_falls_back_in_process_when_no_worker_starts(monkeypatch, caplog):
    from aha.rewards import pool as pool_mod

    calls = []

    def broken(self, count):
        calls.append(count)
        raise pool_mod.PoolBroken("no reward worker started")

    monkeypatch.setattr(pool_mod.WorkerPool, "_start_workers", broken)
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0}, workers=2))
    with caplog.at_level("WARNING", logger="aha.rewards"):
        assert rs.score([tagged("0.5")], [Example("q", r"\frac{1}{2}")])[0] == [1.0]
        assert rs.score([tagged("0.4")], [Example("q", r"\frac{1}{2}")])[0] == [0.0]
    assert calls == [2]  # not retried on every batch
    assert any("scoring in this process" in r.getMessage() for r in caplog.records)
    rs.close()
