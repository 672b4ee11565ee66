"""Property tests: every reward returns a float in its documented range on arbitrary text and never
raises; the verifiers do so within the time limit."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aha.data.example import Example
from aha.rewards import REGISTRY, RewardsConfig, extract_answer, split_think
from aha.rewards.config import OverlongConfig
from aha.rewards.countdown import countdown_accuracy
from aha.rewards.format import format_partial, format_strict
from aha.rewards.guard import OK, TIMEOUT, call_guarded
from aha.rewards.language import language_reward
from aha.rewards.number import number_accuracy
from aha.rollout.base import Completion

PIECES = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "{", "}", "\\frac{1}{2}", "$", "\\",
          "10**10**10", "^{10^{10}}", "1,450,000", "18.0", "×", "÷", "=", "(", ")", "-", "/", "0", "24",
          "思考", "\x00", "\n", " ", "²", "٣", "½", "∞", "１"]
texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=5)), max_size=40).map("".join),
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def in_range(v, lo, hi):
    return isinstance(v, float) and math.isfinite(v) and lo <= v <= hi


@FAST
@given(texts)
def test_extract_and_split_never_raise(text):
    a = extract_answer(text)
    assert a is None or isinstance(a, str)
    r, rest = split_think(text)
    assert isinstance(r, str) and isinstance(rest, str)


@FAST
@given(texts)
def test_format_rewards_in_range(text):
    assert format_strict(text) in (0.0, 1.0)
    assert format_partial(text) in (0.0, 0.25, 0.5, 0.75, 1.0)


@FAST
@given(texts, st.sampled_from(["en", "zh", "ru"]))
def test_language_in_range(text, lang):
    assert in_range(language_reward(text, lang), 0.0, 1.0)


@FAST
@given(texts)
def test_number_and_countdown_in_range(text):
    assert number_accuracy(text, "18") in (0.0, 1.0)
    assert countdown_accuracy(text, [1, 3, 5, 9], 24) in (0.0, 1.0)


@FAST
@given(texts, st.integers(0, 10_000), st.integers(0, 5_000))
def test_length_rewards_in_range(text, n_ids, step):
    cfg = RewardsConfig(overlong=OverlongConfig(max_tokens=256))
    c = Completion(text, completion_ids=tuple(range(n_ids)))
    ex = Example("q", "1")
    assert in_range(REGISTRY["overlong"](cfg).fn(c, ex, step), -1.0, 0.0)
    assert in_range(REGISTRY["budget"](cfg).fn(c, ex, step), 0.0, 1.0)


MATH = REGISTRY["accuracy"](RewardsConfig())


@SLOW
@given(texts, st.sampled_from([r"\frac{1}{2}", "18", r"\{1,2\}", "x^2+1"]))
def test_math_accuracy_total_within_time_limit(text, gold):
    # Through the guard: an exception would come back as status "error", which must never happen.
    value, status, info = call_guarded(MATH.fn, Completion(text), Example("q", gold), 0, 2.0, 0.0, 1.0)
    assert status in (OK, TIMEOUT), info
    assert in_range(value, 0.0, 1.0)


@SLOW
@given(texts)
def test_reasoning_gym_accuracy_total(text):
    ex = Example("q", "500", task="rg:leg_counting", metadata={"entry": {"answer": "500", "metadata": {}}})
    value, status, info = call_guarded(MATH.fn, Completion(text), ex, 0, 2.0, 0.0, 1.0)
    assert status in (OK, TIMEOUT), info
    assert in_range(value, 0.0, 1.0)
