"""Configuration of the reward set: which rewards, their weights (per routing kind), and their knobs.

Fields use simple types only (numbers, strings, lists of strings, dicts of floats, nested dataclasses)
so the project's config loader can fill them from YAML/CLI; each field's docstring is its help text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aha.config import Invalid, NonNegInt, PositiveFloat
from aha.rewards.rm import RewardModelConfig


@dataclass
class OverlongConfig:
    """DAPO's soft overlong punishment (DAPO §3.4)."""

    max_tokens: NonNegInt = 0
    """Length (tokens) at which the penalty reaches -1: the sampling cut. 0: `aha train` uses its
    rollout.max_new_tokens (and refuses any other value while overlong is weighted, since a penalty below the
    cut would punish the very length growth R1-Zero is about); `aha score` needs it set."""
    buffer: NonNegInt | None = None
    """The penalty ramps linearly from 0 at max_tokens - buffer to -1 at max_tokens (0: a hard edge). Unset: a
    fifth of max_tokens (DAPO: 4096 of 20480)."""

    def resolved(self, max_new_tokens: int) -> OverlongConfig:
        """With the defaults filled in for sampling cut at `max_new_tokens`."""
        max_tokens = self.max_tokens or max_new_tokens
        return OverlongConfig(max_tokens, max_tokens // 5 if self.buffer is None else self.buffer)


@dataclass
class BudgetSchedule:
    """A token-budget curriculum: a band [low, high] of rewarded lengths that moves from the start band to
    the end band, held until switch_step, then interpolated linearly over ramp_steps."""

    start_low: NonNegInt = 16
    """Shortest fully rewarded completion (tokens) at the start of training."""
    start_high: NonNegInt = 128
    """Longest fully rewarded completion (tokens) at the start of training."""
    end_low: NonNegInt = 64
    """Shortest fully rewarded completion (tokens) after the ramp."""
    end_high: NonNegInt = 256
    """Longest fully rewarded completion (tokens) after the ramp."""
    switch_step: NonNegInt = 100
    """Training step at which the band starts moving from the start band to the end band."""
    ramp_steps: NonNegInt = 100
    """Steps the move takes (0 switches at once)."""
    slack: NonNegInt = 64
    """Outside the band the reward falls linearly to 0 over this many tokens (0: a hard edge)."""

    def check(self) -> None:
        if not (self.start_low <= self.start_high and self.end_low <= self.end_high):
            raise Invalid("start_low", f"the bands must have low <= high, got start [{self.start_low}, "
                          f"{self.start_high}] and end [{self.end_low}, {self.end_high}]")


DEFAULT_WEIGHTS = {"accuracy": 1.0, "accuracy_lenient": 0.5, "format_partial": 0.5}
"""The one default of `rewards.weights` (`aha train` and every stage that trains on rewards): shaped for a small
instruct model that rarely writes answer tags at first: partial format credit and lenient accuracy (the last
number) carry signal from step 1. A recipe for a larger model usually wants R1-Zero's two rules instead
(`{accuracy: 1.0, format: 0.25}`: recipes/r1_zero_qwen_gsm8k.yaml says why)."""


@dataclass
class RewardsConfig:
    """The rewards a run trains on. The total reward of a completion is the weighted sum of its
    components; every component is also logged on its own."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    """Reward name -> weight. Names: accuracy, accuracy_lenient, format, format_partial, language,
    overlong, budget, code, code_partial. A weight of 0 computes and logs a reward without training on it."""
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per routing kind (Example.kind), weights that replace `weights` for that kind's prompts, e.g.
    {"general": {"helpful": 1.0}}: R1's all-scenario RL scores reasoning prompts with rules and general
    prompts with reward models; a reward absent from a kind's weights is never computed for it."""
    reward_models: dict[str, RewardModelConfig] = field(default_factory=dict)
    """Reward name -> a reward model used as a reward (model folder, segment summary|reasoning|full, device,
    dtype, batch_size); weight the name in `weights` or `by_kind` like any other reward."""
    custom: dict[str, str] = field(default_factory=dict)
    """Reward name -> your own reward function, as "module:function" (imported with the working folder on the
    path) or "path/to/file.py:function"; weight the name like any other reward. Called TRL-style, once per
    completion under the verifiers' guard and time limit (in the reward workers when `workers` > 0):
    `fn(completions=[text], prompts=[question], answer=[gold], task=[task], id=[id], **metadata as lists)`
    returning a list of one number (or a number). A raised error or a non-number scores 0 and is counted."""
    language: str = "en"
    """Target language of the language-consistency reward (en, zh, ja, ko, ru)."""
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    """The overlong penalty's lengths."""
    budget: BudgetSchedule = field(default_factory=BudgetSchedule)
    """The token-budget curriculum of the budget reward."""
    timeout_s: PositiveFloat = 2.0
    """Time limit per completion for verifiers (math, reasoning-gym); a timeout scores 0 and is counted."""
    code_timeout_s: PositiveFloat = 30.0
    """Outer time limit per completion for code tasks (the sandbox applies its own per-test limits)."""
    code_isolation: Literal["auto", "bwrap", "rlimits"] = "auto"
    """How code tasks isolate model-written programs: auto or bwrap (bubblewrap's namespaces; the run stops
    with an error where bubblewrap is missing or broken: apt-get install bubblewrap), or rlimits (only
    rlimits, a new session and a fresh cwd: the program can read the host's files, write /tmp and
    /dev/shm and reach the network; for trusted code or throw-away machines). See docs/sandbox.md."""
    workers: NonNegInt = 0
    """Processes for parallel verification (forkserver); 0 scores in-process."""

    def check(self) -> None:
        ol = self.overlong
        if ol.max_tokens and (ol.buffer or 0) > ol.max_tokens:
            raise Invalid("overlong.buffer", f"{ol.buffer} is more than overlong.max_tokens ({ol.max_tokens})")
        for name, target in self.custom.items():
            if not isinstance(target, str) or target.count(":") < 1 or not all(target.rpartition(":")[::2]):
                raise Invalid(f"custom.{name}", f"want \"module:function\" or \"path/to/file.py:function\", got {target!r}")
            if name in self.reward_models:
                raise Invalid(f"custom.{name}", f"'{name}' is also a reward model; pick another name")
