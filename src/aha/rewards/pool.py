"""Worker processes for verifiers, with a hard per-completion deadline enforced by the parent.

Why not `multiprocessing.Pool`: a task stuck in C code (sympy deep in a big-integer power) never
returns, and Pool cannot kill one task. Here each worker is a process with its own pipe; the parent
sends chunks of tasks, each task runs in the worker's MAIN thread under the signal time limit
(aha.rewards.guard), and the worker streams one result per task. The parent knows which task each worker
is on and since when; a worker silent for `timeout + grace` is killed, its current task scores 0 as a
timeout, the rest of its chunk goes back in the queue, and the pool spawns a replacement next time.

Processes start with the `forkserver` context (`spawn` where unavailable): the trainer's process holds
torch and CUDA state, which must not be forked. Workers ignore SIGINT (the parent cleans up) and exit
when the parent's end of the pipe closes.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import pickle
import signal
import sys
import time
import types
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aha.errors import AhaError
from aha.rewards.guard import ERROR, TIMEOUT, call_guarded

log = logging.getLogger("aha.rewards")

# A task: (fn, completion, example, step, timeout_s, low, high).
Task = tuple[Any, Any, Any, int, float, float, float]
# A preparation: (prepare_fn, key); run once per worker before the tasks that need it.
Prep = tuple[Any, str]


def _prep_id(prep: Prep) -> str:
    fn, key = prep
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}:{key}"


def _worker_main(conn) -> None:
    """A worker's loop: prepare, run tasks in this (main) thread, one result message per task."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        kind = msg[0]
        if kind == "stop":
            return
        if kind == "prepare":
            err = None
            for fn, key in msg[1]:
                try:
                    fn(key)
                except AhaError as e:
                    err = str(e)
                    break
                except Exception as e:
                    err = f"preparing {key!r} failed in a reward worker: {type(e).__name__}: {e}"
                    break
            conn.send(("prepared", err))
        elif kind == "tasks":
            for idx, (fn, completion, example, step, timeout_s, low, high) in msg[1]:
                value, status, info = call_guarded(fn, completion, example, step, timeout_s, low, high)
                conn.send(("result", idx, value, status, info))


@contextmanager
def _main_hidden():
    """Start processes without re-importing the parent's `__main__` in them. spawn/forkserver children
    normally re-run the main script (as `__mp_main__`): a training script without a `__name__` guard would
    start training again in every worker, and one with a guard still re-imports torch. Workers only need
    aha's modules, so `__main__` is replaced by an empty module while the process starts. (A reward
    defined in a `__main__` script cannot run in workers; define it in an importable module.)"""
    real = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if real is not None:
            sys.modules["__main__"] = real


@dataclass(eq=False)
class _Worker:
    proc: Any
    conn: Any
    prepared: set[str] = field(default_factory=set)
    pending: deque = field(default_factory=deque)  # task indices sent and not answered, in order
    deadline: float = 0.0


class PoolBroken(RuntimeError):
    """No worker could be started; the caller falls back to in-process scoring."""


class WorkerPool:
    """`n` reward workers. `run(preps, tasks, timeouts)` returns (value, status, info) per task."""

    def __init__(self, n: int, grace_s: float = 2.0, start_timeout_s: float = 120.0):
        self.n = max(1, int(n))
        self.grace_s = grace_s
        self.start_timeout_s = start_timeout_s
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        self.workers: list[_Worker] = []
        self.killed = 0
        self._closed = False
        # Registered after multiprocessing's own exit hook, so it runs first: workers are not daemons
        # (a daemon cannot start the code sandbox's processes) and multiprocessing would join them forever.
        atexit.register(self.close)

    # -- lifecycle -------------------------------------------------------------------------------
    def _start_workers(self, count: int) -> None:
        fresh = []
        for _ in range(count):
            parent, child = self.ctx.Pipe(duplex=True)
            proc = self.ctx.Process(target=_worker_main, args=(child,), name="aha-reward-worker", daemon=False)
            with _main_hidden():
                proc.start()
            child.close()
            fresh.append(_Worker(proc, parent))
        deadline = time.monotonic() + self.start_timeout_s
        for w in fresh:
            left = deadline - time.monotonic()
            try:
                ok = w.conn.poll(max(0.0, left)) and w.conn.recv()[0] == "ready"
            except (EOFError, OSError):
                ok = False
            if ok:
                self.workers.append(w)
            else:
                self._kill(w)
        if not self.workers:
            raise PoolBroken("no reward worker started")

    def _kill(self, w: _Worker) -> None:
        try:
            w.proc.kill()
            w.proc.join(timeout=5)
        except Exception:
            pass
        try:
            w.conn.close()
        except Exception:
            pass

    def close(self) -> None:
        """Stop all workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for w in self.workers:
            try:
                w.conn.send(("stop",))
            except Exception:
                pass
        for w in self.workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                self._kill(w)
            else:
                w.conn.close()
        self.workers = []
        try:
            atexit.unregister(self.close)
        except Exception:
            pass

    # -- work ------------------------------------------------------------------------------------
    def _prepare(self, preps: list[Prep]) -> None:
        """Send each worker the preparations it lacks and wait (long limit: imports, dataset builds)."""
        waiting = []
        for w in list(self.workers):
            todo = [p for p in preps if _prep_id(p) not in w.prepared]
            if todo:
                w.conn.send(("prepare", todo))
                waiting.append((w, todo))
        deadline = time.monotonic() + self.start_timeout_s
        error = None
        for w, todo in waiting:
            try:
                ready = w.conn.poll(max(0.0, deadline - time.monotonic()))
                reply = w.conn.recv() if ready else None
            except (EOFError, OSError):
                reply = None
            if reply is None:
                log.warning("a reward worker did not finish preparing in %.0f s; restarting it", self.start_timeout_s)
                self.workers.remove(w)
                self._kill(w)
                continue
            if reply[1] is not None:
                error = reply[1]
            else:
                w.prepared.update(_prep_id(p) for p in todo)
        if error is not None:
            raise AhaError(error)

    def run(self, preps: list[Prep], tasks: list[Task]) -> list[tuple[float, str, str]]:
        if self._closed:
            raise PoolBroken("pool closed")
        if len(self.workers) < self.n:
            try:
                self._start_workers(self.n - len(self.workers))
            except PoolBroken:
                if not self.workers:
                    raise
        self._prepare(preps)
        if not self.workers:
            raise PoolBroken("all reward workers failed to prepare")
        results: list[tuple[float, str, str] | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        chunk = max(1, min(64, len(tasks) // (4 * len(self.workers)) or 1))
        idle = list(self.workers)
        busy: list[_Worker] = []

        def limit(i: int) -> float:
            return tasks[i][4] + self.grace_s

        while queue or busy:
            while idle and queue:
                w = idle.pop()
                ids = [queue.popleft() for _ in range(min(chunk, len(queue)))]
                payload = self._pickle_chunk(ids, tasks, results)
                ids = [i for i in ids if results[i] is None]
                if not ids:
                    idle.append(w)
                    continue
                try:
                    w.conn.send_bytes(payload)
                except Exception:
                    queue.extendleft(reversed(ids))
                    self._drop(w)
                    continue
                w.pending = deque(ids)
                w.deadline = time.monotonic() + limit(ids[0])
                busy.append(w)
            if not busy:
                if queue:  # every worker died: start afresh (nothing else is in flight, no deadline to miss)
                    self._start_workers(self.n)
                    self._prepare(preps)
                    idle = list(self.workers)
                    continue
                break
            now = time.monotonic()
            wait_s = max(0.0, min(w.deadline for w in busy) - now)
            mpc.wait([w.conn for w in busy], timeout=wait_s)
            for w in list(busy):
                died = False
                try:
                    while w.pending and w.conn.poll():
                        _, idx, value, status, info = w.conn.recv()
                        if w.pending and w.pending[0] == idx:
                            w.pending.popleft()
                        results[idx] = (value, status, info)
                        if w.pending:
                            w.deadline = time.monotonic() + limit(w.pending[0])
                except (EOFError, OSError):
                    died = True
                if died or (w.pending and time.monotonic() > w.deadline):
                    if w.pending:
                        stuck = w.pending.popleft()
                        results[stuck] = (0.0, ERROR, "reward worker died") if died else (0.0, TIMEOUT, "killed")
                        queue.extendleft(reversed(w.pending))
                        w.pending.clear()
                    busy.remove(w)
                    self._drop(w)
                elif not w.pending:
                    busy.remove(w)
                    idle.append(w)
        return [r if r is not None else (0.0, ERROR, "lost") for r in results]

    @staticmethod
    def _pickle_chunk(ids: list[int], tasks: list[Task], results: list) -> bytes:
        """The message for a chunk. A task that cannot be pickled (a lambda reward, odd metadata) is
        scored 0 as an error here rather than retried forever."""
        try:
            return pickle.dumps(("tasks", [(i, tasks[i]) for i in ids]))
        except Exception:
            good = []
            for i in ids:
                try:
                    pickle.dumps(tasks[i])
                    good.append(i)
                except Exception as e:
                    results[i] = (0.0, ERROR, f"cannot send to a reward worker: {type(e).__name__}: {e}"[:300])
            return pickle.dumps(("tasks", [(i, tasks[i]) for i in good]))

    def _drop(self, w: _Worker) -> None:
        if w in self.workers:
            self.workers.remove(w)
        self.killed += 1
        self._kill(w)
