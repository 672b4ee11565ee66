"""Task verifiers: how the `accuracy` reward decides whether a completion answers an example of its task.

`Example.task` names the verifier: `math` (math-verify), `number` (the exact final number), `countdown` (our
expression checker), `code` (the program run against tests in the sandbox), `rg:<dataset>` (the reasoning-gym
dataset's own scorer). Adding a task is one entry in `VERIFIERS`; the `accuracy`, `partial_credit` and
`accuracy_lenient` rewards, the time limits, the scoring workers and `aha eval`'s majority vote all read it.
Every verdict is binary (1.0 only for a fully correct answer); a graded score is `partial`, used only by the
`partial_credit` shaping reward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aha.data.example import Example
from aha.errors import AhaError, closest
from aha.rewards import countdown as _countdown
from aha.rewards import number as _number
from aha.rollout.base import Completion

log = logging.getLogger("aha.rewards")

Check = Callable[[Completion, Example, str], float]
"""(completion, example, code_isolation) -> score."""


@dataclass(frozen=True)
class Verifier:
    accuracy: Check
    """The binary verdict: 1.0 for a fully correct answer, else 0.0 (GoldError when the gold is unusable)."""
    partial: Check | None = None
    """A graded score in [0, 1] (shaping only: `partial_credit`); None: the verdict."""
    prepare: Callable[[str, str], None] | None = None
    """(task, code_isolation): imports and builds what the checks need, once per process, outside any time
    limit; AhaError for a task it refuses."""
    heavy: bool = True
    """Can be slow on adversarial text: runs under the time limit, in the reward workers when there are any.
    Linear-time checks run inline."""
    long_timeout: bool = False
    """Gets `rewards.code_timeout_s` instead of `rewards.timeout_s` (programs run against tests)."""
    compares_answers: bool = False
    """Two answers can be compared by the check itself (one as the gold): `aha eval`'s majority vote groups
    equivalent answers (1/2 and 0.5) instead of equal texts."""


# -- the checks -------------------------------------------------------------------------------------------
def math_check(completion: Completion, example: Example, code_isolation: str = "auto") -> float:
    from aha.rewards.math import math_accuracy  # math-verify and sympy: imported when a math task is used

    return math_accuracy(completion.text, example.answer)


def math_prepare(task: str, code_isolation: str = "auto") -> None:
    from aha.rewards import math as _math

    _math.warmup()


def number_check(completion: Completion, example: Example, code_isolation: str = "auto") -> float:
    return _number.number_accuracy(completion.text, example.answer)


def countdown_check(completion: Completion, example: Example, code_isolation: str = "auto") -> float:
    meta = example.metadata or {}
    return _countdown.countdown_accuracy(completion.text, meta.get("numbers"), meta.get("target"))


def rg_check(completion: Completion, example: Example, code_isolation: str = "auto") -> float:
    from aha.rewards.reasoning_gym import rg_accuracy  # reasoning-gym: imported when an rg: task is used

    return rg_accuracy(completion.text, example.task[3:], example.metadata or {})


def rg_partial(completion: Completion, example: Example, code_isolation: str = "auto") -> float:
    from aha.rewards.reasoning_gym import rg_score

    return rg_score(completion.text, example.task[3:], example.metadata or {})


def rg_prepare(task: str, code_isolation: str = "auto") -> None:
    from aha.rewards import reasoning_gym as _rg

    _rg.prepare(task[3:])


def _code(name: str):
    try:
        from aha.rewards import code as _code  # the sandbox: imported when a code task is used

        return getattr(_code, name)
    except (ImportError, AttributeError) as e:
        raise AhaError(f"code tasks need aha.rewards.code.{name}, which cannot be imported ({e})") from e


def code_check(completion: Completion, example: Example, code_isolation: str = "auto") -> float:
    return float(_code("code_accuracy")(completion, example, isolation=code_isolation))


def code_partial(completion: Completion, example: Example, code_isolation: str = "auto") -> float:
    return float(_code("code_partial")(completion, example, isolation=code_isolation))


def code_prepare(task: str, code_isolation: str = "auto") -> None:
    _code("code_accuracy")
    from aha.sandbox import isolation

    log.info("code sandbox: isolation=%s runs as %s", code_isolation, isolation(code_isolation))


VERIFIERS: dict[str, Verifier] = {
    "math": Verifier(math_check, prepare=math_prepare, compares_answers=True),
    "number": Verifier(number_check, heavy=False, compares_answers=True),
    "countdown": Verifier(countdown_check, heavy=False),
    "code": Verifier(code_check, partial=code_partial, prepare=code_prepare, long_timeout=True),
    "rg:": Verifier(rg_check, partial=rg_partial, prepare=rg_prepare),
}
"""Task name -> its verifier; a name ending in ':' covers every task beginning with it (rg:<dataset>).
Functions must be module-level (they are pickled by reference into the reward workers)."""


def names() -> list[str]:
    return [k + "<dataset>" if k.endswith(":") else k for k in VERIFIERS]


def verifier(task: str) -> Verifier:
    """The verifier of `task`; AhaError naming the known ones for an unknown task."""
    found = VERIFIERS.get(task)
    if found is None:
        found = next((v for k, v in VERIFIERS.items() if k.endswith(":") and task.startswith(k)), None)
    if found is None:
        known = names()
        raise AhaError(f"unknown task '{task}' (one of {', '.join(known)}){closest(task, known)}")
    return found
