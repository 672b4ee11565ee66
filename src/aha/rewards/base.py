"""Shared pieces of the reward package: the reward signature, the spec each registry entry builds, and
the two exceptions the guard turns into a 0 (a bad gold answer and a timeout).

Every reward is a plain function `(completion, example, step) -> float`; R1 uses rule rewards only, so a
reward is a pure function of the text and the gold fields, cheap to call in another process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aha.data.example import Example
from aha.rollout.base import Completion

RewardFn = Callable[[Completion, Example, int], float]
BatchRewardFn = Callable[[list[Completion], list[Example], int], list[float]]


class GoldError(Exception):
    """The gold side of an example is unusable (an answer math-verify cannot parse, countdown numbers
    missing). A data error, never the model's fault: the guard scores it 0, warns once per gold and
    counts it; it must never turn into a reward of 1."""


class RewardTimeout(BaseException):
    """Raised by the time limit. A BaseException so that libraries' `except Exception` (math-verify,
    sympy, reasoning-gym) cannot swallow it and carry on."""


@dataclass(frozen=True)
class RewardSpec:
    """One reward, ready to call. `fn` must be picklable (a module-level function or a
    functools.partial of one) because heavy rewards run in worker processes."""

    name: str
    fn: RewardFn
    low: float
    """Smallest value the reward returns; results are clamped to [low, high]."""
    high: float
    heavy: bool = False
    """True for verifiers that can be slow on adversarial text (math, reasoning-gym, code): they run under
    the time limit, in worker processes when `workers > 0`. Cheap linear-time rewards run inline."""
    heavy_for: Callable[[Example], bool] | None = None
    """Per-example override of `heavy` (countdown and number answers are linear-time: run them inline)."""
    prepare: Callable[[str], None] | None = None
    """Called once per process and per key, outside the time limit (imports, building a scorer);
    raises AhaError for a configuration error such as an unknown task."""
    prepare_key: Callable[[Example], str] | None = None
    """The key `prepare` needs for an example (e.g. its task)."""
    timeout_for: Callable[[Example, float], float] | None = None
    """Per-example time limit from the configured default (code tests get longer)."""
    batch_fn: BatchRewardFn | None = None
    """Scores many completions in one call (reward models: one forward pass per batch). When set, RewardSet
    calls it once per score() for every row the reward applies to, in this process, instead of `fn`."""
