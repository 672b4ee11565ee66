"""The reward registry: a plain dict from reward name to a builder `RewardsConfig -> RewardSpec`.

Reward functions are module-level (or partials of module-level functions) so they pickle by reference
into worker processes. `accuracy` asks the verifier of the example's task (`aha.rewards.verifiers.VERIFIERS`:
math, number, countdown, code, rg:<dataset>).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from functools import partial

from aha import plugins
from aha.config import check
from aha.data.example import Example
from aha.errors import AhaError, closest
from aha.rewards import format as _format
from aha.rewards import language as _language
from aha.rewards import length as _length
from aha.rewards.base import RewardSpec
from aha.rewards.config import BudgetSchedule, RewardsConfig
from aha.rewards.extract import extract_answer
from aha.rewards.rm import build_reward_model_spec
from aha.rewards.verifiers import code_check, verifier
from aha.rewards.verifiers import code_partial as code_partial_check
from aha.rollout.base import Completion


def prepare_task(task: str, code_isolation: str = "auto") -> None:
    """Import and build what `task`'s verifier needs (outside any time limit); AhaError for an unknown or
    refused task, or for code where the sandbox cannot give `code_isolation` (auto without bubblewrap)."""
    v = verifier(task)
    if v.prepare is not None:
        v.prepare(task, code_isolation)


@functools.cache
def _prepare_with(code_isolation: str) -> Callable[[str], None]:
    """`prepare_task` bound to a code isolation, one object per value (so it is prepared once per process)."""
    return partial(prepare_task, code_isolation=code_isolation)


def task_of(example: Example) -> str:
    return example.task


def accuracy(completion: Completion, example: Example, step: int = 0, code_isolation: str = "auto") -> float:
    """1.0 when the completion's answer is correct for `example.task` (its verifier, aha.rewards.verifiers),
    else 0.0: a binary verdict for every task. GoldError when the gold side is unusable."""
    return verifier(example.task).accuracy(completion, example, code_isolation)


def partial_credit(completion: Completion, example: Example, step: int = 0, code_isolation: str = "auto") -> float:
    """Shaping, never a verdict: the task's graded score in [0, 1] where its verifier has one (reasoning-gym's
    partial credit, the fraction of code tests passed), else the binary `accuracy`."""
    v = verifier(example.task)
    return (v.partial or v.accuracy)(completion, example, code_isolation)


_TRAILING_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def accuracy_lenient(completion: Completion, example: Example, step: int = 0, code_isolation: str = "auto") -> float:
    """Shaping for small models that do not write answer tags yet: `accuracy` of the extracted answer
    when there is one, else of the last number in the completion. Trains the answer while the format is
    still being learned; `accuracy` (strict extraction) stays the metric. Not a verdict for evaluation."""
    if extract_answer(completion.text) is not None:
        return accuracy(completion, example, step, code_isolation)
    last = None
    for m in _TRAILING_NUMBER.finditer(completion.text[-4096:]):
        last = m
    if last is None:
        return 0.0
    return accuracy(Completion(text=f"<answer>{last.group(0)}</answer>"), example, step, code_isolation)


def is_heavy_task(example: Example) -> bool:
    """Verifiers that can be slow on adversarial text; number and countdown checks are linear-time."""
    return verifier(example.task).heavy


def accuracy_timeout(example: Example, default: float, code_timeout_s: float = 30.0) -> float:
    return code_timeout_s if verifier(example.task).long_timeout else default


def _build_accuracy(cfg: RewardsConfig, fn: Callable = accuracy, name: str = "accuracy") -> RewardSpec:
    iso = cfg.code_isolation  # bound into fn and prepare, which may run in worker processes
    return RewardSpec(name, partial(fn, code_isolation=iso), 0.0, 1.0, heavy=True, heavy_for=is_heavy_task,
                      prepare=_prepare_with(iso), prepare_key=task_of,
                      timeout_for=partial(accuracy_timeout, code_timeout_s=cfg.code_timeout_s))


def code(completion: Completion, example: Example, step: int = 0, code_isolation: str = "auto") -> float:
    """aha.rewards.code's verdict for any example (the `code` reward name, for explicit use)."""
    return code_check(completion, example, code_isolation)


def code_partial(completion: Completion, example: Example, step: int = 0, code_isolation: str = "auto") -> float:
    """aha.rewards.code's fraction of tests passed (partial credit for code tasks)."""
    return code_partial_check(completion, example, code_isolation)


def _code_key(example: Example) -> str:
    return "code"


def code_timeout(example: Example, default: float, code_timeout_s: float = 30.0) -> float:
    return code_timeout_s


def _build_code(cfg: RewardsConfig, fn: Callable = code, name: str = "code") -> RewardSpec:
    iso = cfg.code_isolation
    return RewardSpec(name, partial(fn, code_isolation=iso), 0.0, 1.0, heavy=True,
                      prepare=_prepare_with(iso), prepare_key=_code_key,
                      timeout_for=partial(code_timeout, code_timeout_s=cfg.code_timeout_s))


# -- cheap rewards -------------------------------------------------------------------------------
def format_strict(completion: Completion, example: Example, step: int = 0) -> float:
    return _format.format_strict(completion.text)


def format_partial(completion: Completion, example: Example, step: int = 0) -> float:
    return _format.format_partial(completion.text)


def format_r1(completion: Completion, example: Example, step: int = 0) -> float:
    return _format.format_r1(completion.text)


def language(completion: Completion, example: Example, step: int = 0, lang: str = "en") -> float:
    return _language.language_reward(completion.text, lang)


def overlong(completion: Completion, example: Example, step: int = 0, max_tokens: int = 256,
             buffer: int = 64) -> float:
    return _length.overlong_penalty(completion.num_tokens, max_tokens, buffer)


def budget(completion: Completion, example: Example, step: int = 0,
           schedule: BudgetSchedule | None = None) -> float:
    return _length.budget_reward(completion.num_tokens, schedule or BudgetSchedule(), step)


def _build_language(cfg: RewardsConfig) -> RewardSpec:
    return RewardSpec("language", partial(language, lang=_language.check_language(cfg.language)), 0.0, 1.0)


def _build_overlong(cfg: RewardsConfig) -> RewardSpec:
    if not cfg.overlong.max_tokens:
        raise AhaError("rewards.overlong.max_tokens: set it to the sampling cut (max_new_tokens); only aha train "
                       "fills it in by itself")
    ol = cfg.overlong.resolved(cfg.overlong.max_tokens)
    fn = partial(overlong, max_tokens=ol.max_tokens, buffer=ol.buffer)
    return RewardSpec("overlong", fn, -1.0, 0.0)


def _build_budget(cfg: RewardsConfig) -> RewardSpec:
    check(cfg.budget, "rewards.budget.")
    return RewardSpec("budget", partial(budget, schedule=cfg.budget), 0.0, 1.0)


REGISTRY: dict[str, Callable[[RewardsConfig], RewardSpec]] = {
    "accuracy": _build_accuracy,
    "accuracy_lenient": lambda cfg: _build_accuracy(cfg, accuracy_lenient, "accuracy_lenient"),
    "format": lambda cfg: RewardSpec("format", format_strict, 0.0, 1.0),
    "format_partial": lambda cfg: RewardSpec("format_partial", format_partial, 0.0, 1.0),
    "format_r1": lambda cfg: RewardSpec("format_r1", format_r1, 0.0, 1.0),
    "language": _build_language,
    "overlong": _build_overlong,
    "budget": _build_budget,
    "code": _build_code,
    "partial_credit": lambda cfg: _build_accuracy(cfg, partial_credit, "partial_credit"),
    "code_partial": lambda cfg: _build_code(cfg, code_partial, "code_partial"),
}
"""Reward name -> builder. Add an entry to register a reward (its function must be picklable)."""


# -- the user's own rewards (rewards.custom) -------------------------------------------------------------
def load_custom(target: str) -> Callable:
    """The function a "module:function" or "path/to/file.py:function" names (once per process)."""
    fn = plugins.load(target)
    if not callable(fn):
        raise AhaError(f"{target} is not a function")
    return fn


def prepare_custom(name: str, target: str) -> None:
    try:
        load_custom(target)
    except AhaError as e:
        raise AhaError(f"rewards.custom.{name}: {e}") from None


def custom_reward(completion: Completion, example: Example, step: int = 0, target: str = "") -> float:
    """The user's function on one completion, called as TRL calls a reward function (lists of one)."""
    columns = {k: [v] for k, v in (example.metadata or {}).items()}
    columns.update(completions=[completion.text], prompts=[example.prompt], answer=[example.answer],
                   task=[example.task], id=[example.id])
    out = load_custom(target)(**columns)
    value = out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{target} returned {out!r}, not a number or a list of one number")
    return float(value)


def _constant_key(key: str, example: Example) -> str:
    return key


def _build_custom(name: str, target: str) -> RewardSpec:
    return RewardSpec(name, partial(custom_reward, target=target), -math.inf, math.inf, heavy=True,
                      prepare=partial(prepare_custom, name), prepare_key=partial(_constant_key, target))


def build(name: str, cfg: RewardsConfig, registry: dict | None = None, where: str = "rewards") -> RewardSpec:
    """The spec for reward `name` (a registry entry, one of `cfg.reward_models` or of `cfg.custom`); AhaError
    naming `where` for an unknown name."""
    reg = REGISTRY if registry is None else registry
    if name in cfg.reward_models:
        return build_reward_model_spec(name, cfg.reward_models[name], f"rewards.reward_models.{name}")
    if name in cfg.custom:
        return _build_custom(name, cfg.custom[name])
    if name not in reg:
        known = [*reg, *cfg.reward_models, *cfg.custom]
        raise AhaError(f"unknown reward '{name}' in {where}{closest(name, known)}; known: {', '.join(known)}")
    return reg[name](cfg)
