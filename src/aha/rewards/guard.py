"""Totality for rewards: a time limit and a guard that turns every failure into a counted 0.

The limit is `signal.setitimer(ITIMER_REAL)` with a handler raising RewardTimeout (a BaseException, so
`except Exception` in math-verify or sympy cannot swallow it; the timer re-fires every 50 ms in case
something catches BaseException anyway). Signals only reach the main thread, so the limit is active only
there: in worker processes (each task runs in the worker's main thread) and in-process scoring from the
main thread. Elsewhere the reward runs without a limit; code stuck in C without returning to the
interpreter is only stopped by the worker pool killing the process (aha.rewards.pool).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aha.rewards.base import GoldError, RewardFn, RewardTimeout

OK, TIMEOUT, ERROR, GOLD = "ok", "timeout", "error", "gold"
_REFIRE_S = 0.05


def can_time_limit() -> bool:
    """Whether a signal-based limit works here (POSIX, main thread)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float | None) -> Iterator[bool]:
    """Raise RewardTimeout in the body after `seconds` (yields True), or do nothing where signals cannot
    be used or `seconds` is not positive (yields False). Restores the previous SIGALRM handler and any
    timer that was running."""
    if not seconds or seconds <= 0 or not can_time_limit():
        yield False
        return
    state = {"armed": True}

    def on_alarm(signum, frame):
        if state["armed"]:
            raise RewardTimeout()

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    start = time.monotonic()
    old_delay, old_interval = 0.0, 0.0
    try:
        old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds, _REFIRE_S)
        yield True
    finally:
        # Disarm first: an alarm landing between the body's end and this point must not escape from
        # the cleanup. The assignment itself can be interrupted once, hence the loop.
        while True:
            try:
                state["armed"] = False
                break
            except RewardTimeout:
                continue
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        if old_delay > 0:
            left = max(1e-3, old_delay - (time.monotonic() - start))
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def call_guarded(fn: RewardFn, completion, example, step: int, timeout_s: float | None,
                 low: float, high: float) -> tuple[float, str, str]:
    """(value, status, info): `fn`'s value clamped to [low, high] with status OK, or 0.0 with status
    TIMEOUT, GOLD (a GoldError: bad gold data; info says why) or ERROR (any other exception or a
    non-finite value; info names it). Never raises except KeyboardInterrupt/SystemExit."""
    try:
        with time_limit(timeout_s):
            value = fn(completion, example, step)
    except RewardTimeout:
        return 0.0, TIMEOUT, ""
    except GoldError as e:
        return 0.0, GOLD, str(e)[:300]
    except Exception as e:  # totality: a reward that raises scores 0, and the guard reports it
        return 0.0, ERROR, f"{type(e).__name__}: {str(e)[:200]}"
    try:
        value = float(value)
    except Exception as e:
        return 0.0, ERROR, f"reward returned {type(value).__name__}: {str(e)[:100]}"
    if not math.isfinite(value):
        return 0.0, ERROR, f"reward returned {value}"
    return float(min(high, max(low, value))), OK, ""


def call_batch_guarded(fn, completions: list, examples: list, step: int, low: float,
                       high: float) -> list[tuple[float, str, str]]:
    """call_guarded for a batched reward: one (value, status, info) per row. An exception scores every row 0
    with status ERROR; a non-finite value scores its own row 0. No time limit (a model forward pass)."""
    try:
        values = list(fn(completions, examples, step))
        if len(values) != len(completions):
            raise ValueError(f"returned {len(values)} values for {len(completions)} completions")
    except Exception as e:  # totality, as in call_guarded
        info = f"{type(e).__name__}: {str(e)[:200]}"
        return [(0.0, ERROR, info)] * len(completions)
    out = []
    for v in values:
        try:
            v = float(v)
        except Exception as e:
            out.append((0.0, ERROR, f"reward returned {type(v).__name__}: {str(e)[:100]}"))
            continue
        out.append((float(min(high, max(low, v))), OK, "") if math.isfinite(v) else (0.0, ERROR, f"reward returned {v}"))
    return out
