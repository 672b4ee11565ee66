"""A reward of the user's own (`rewards.custom.NAME: "module:function"`), from outside the package: called
TRL-style, weighted like any reward, under the verifiers' guard and time limit, in worker processes too."""

from __future__ import annotations

import textwrap

import pytest

from aha.data.example import Example
from aha.errors import AhaError
from aha.rewards import RewardsConfig, RewardSet
from aha.rollout.base import Completion

MODULE = textwrap.dedent('''
    import time

    def mentions_answer(completions, answer, prompts, **columns):
        """1 where the completion contains the gold answer, 0.5 for a completion of the prompt's `bonus`."""
        return [1.0 if a in c else (0.5 if columns.get("bonus", [None])[0] == c else 0.0)
                for c, a in zip(completions, answer)]

    def broken(completions, **kw):
        raise ValueError("my bug")

    def not_a_number(completions, **kw):
        return ["yes"]

    def slow(completions, **kw):
        time.sleep(30)
        return [1.0]
''')

EXAMPLES = [Example("2+2?", "4", task="number"), Example("1+2?", "3", task="number", metadata={"bonus": "three"})]
COMPLETIONS = [Completion("it is 4"), Completion("three")]


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)  # the user's module beside their recipe
    return tmp_path / "my_rewards.py"


@pytest.mark.parametrize("workers", [0, 1])
def test_a_user_reward_is_weighted_like_any_other(user_module, workers):
    for target in ("my_rewards:mentions_answer", f"{user_module}:mentions_answer"):
        cfg = RewardsConfig(weights={"mine": 2.0, "format": 1.0}, custom={"mine": target}, workers=workers)
        with RewardSet(cfg) as rs:
            rs.prepare(EXAMPLES)
            totals, parts = rs.score(COMPLETIONS, EXAMPLES)
        assert parts["mine"] == [1.0, 0.5]
        assert totals == [2.0, 1.0]  # no completion is in format


def test_a_failing_user_reward_scores_zero_and_is_counted(user_module):
    cfg = RewardsConfig(weights={"bug": 1.0, "nan": 1.0}, custom={"bug": "my_rewards:broken", "nan": "my_rewards:not_a_number"})
    with RewardSet(cfg) as rs:
        totals, parts = rs.score(COMPLETIONS, EXAMPLES)
    assert totals == [0.0, 0.0] and rs.stats["errors"] == 4


def test_a_slow_user_reward_is_stopped_by_the_time_limit(user_module):
    cfg = RewardsConfig(weights={"slow": 1.0}, custom={"slow": "my_rewards:slow"}, timeout_s=0.2)
    with RewardSet(cfg) as rs:
        totals, _ = rs.score(COMPLETIONS[:1], EXAMPLES[:1])
    assert totals == [0.0] and rs.stats["timeouts"] == 1


@pytest.mark.parametrize("target,message", [
    ("no_such_module:f", r"rewards.custom.mine: cannot import no_such_module \(ModuleNotFoundError"),
    ("my_rewards:missing", "rewards.custom.mine: my_rewards has no missing"),
    ("nowhere/file.py:f", "rewards.custom.mine: nowhere/file.py: file not found"),
    ("my_rewards", "rewards.custom.mine: want \"module:function\""),
])
def test_a_bad_user_reward_is_a_one_line_error_before_scoring(user_module, target, message):
    with pytest.raises(AhaError, match=message):
        with RewardSet(RewardsConfig(weights={"mine": 1.0}, custom={"mine": target})) as rs:
            rs.prepare(EXAMPLES)


def test_a_user_reward_may_not_shadow_a_built_in(user_module):
    with pytest.raises(AhaError, match="rewards.custom.format: 'format' is a built-in reward"):
        RewardSet(RewardsConfig(weights={"format": 1.0}, custom={"format": "my_rewards:broken"}))


def parity_check(completion, example, code_isolation="auto"):
    return float(completion.text.strip().endswith(example.answer))


def test_a_task_verifier_registered_from_outside_decides_accuracy(monkeypatch):
    """A new task is one entry in VERIFIERS: accuracy, partial credit (the verdict when it has no graded
    score), the time limit and the unknown-task message all follow it."""
    from aha.rewards import verifiers

    monkeypatch.setitem(verifiers.VERIFIERS, "parity", verifiers.Verifier(parity_check, heavy=False))
    examples = [Example("is 7 odd?", "odd", task="parity")] * 2
    with RewardSet(RewardsConfig(weights={"accuracy": 1.0, "partial_credit": 0.0})) as rs:
        rs.prepare(examples)
        _, parts = rs.score([Completion("odd"), Completion("even")], examples)
    assert parts["accuracy"] == [1.0, 0.0] and parts["partial_credit"] == [1.0, 0.0]
    with pytest.raises(AhaError, match=r"unknown task 'parit' \(one of math, .*parity\).*parity"):
        RewardSet(RewardsConfig(weights={"accuracy": 1.0})).prepare([Example("q", "a", task="parit")])
