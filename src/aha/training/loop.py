"""The one training loop: resume, steps, evaluation, metrics, checkpoints, Ctrl-C and the non-finite stop.

GRPO (`grpo_loop.GRPOTrainer`), SFT (`sft_loop.SFTTrainer`) and the reward model (`stages.rm.RMTrainer`)
supply the `Steps` below; `run_loop` drives them the same way:

- after every optimizer step the trainable weights are checked: a non-finite weight stops the run with one
  line naming the last good checkpoint, before anything is saved (so pruning never drops a finite
  checkpoint for a broken one). The step's own loss and gradient-norm checks stop it earlier when they can;
  this one also catches updates that overflow while the loss is skipped (flat groups, lr=1e38);
- Ctrl-C (SIGINT) or SIGTERM (`kill`, a scheduler) saves a checkpoint that resumes exactly as if the run had never stopped: a step cut
  before its update is rewound (its data position and RNG states as they were when it began, its prompts
  drawn again on resume), and an update is never cut in half (`HeldInterrupt`, used by the steps around
  their optimizer update, holds the signal until the step is whole and logged).

Under torchrun (`aha.dist`) every process runs this loop in step with the others; rank 0 alone writes the
metrics and draws the progress bar. Ctrl-C there stops every process without a new checkpoint (a save is
collective, and the processes are cut at different points): the run resumes from the last one.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from aha import dist
from aha.errors import AhaError
from aha.training import checkpoint as ckpt
from aha.training.metrics import MetricsLogger


class Steps(Protocol):
    """What a trainer gives the loop."""

    run_dir: Path
    step_no: int
    """Optimizer steps taken; `step()` increments it as the last thing of a step."""
    trainable: list[torch.Tensor]
    """The weights the optimizer updates (checked for non-finite values after every step)."""

    def step(self) -> dict: ...
    def evaluate(self) -> dict: ...
    """Held-out metrics; {} when nothing is held out."""
    def save(self) -> Path: ...
    def restore(self) -> bool: ...
    def data_state(self) -> dict: ...
    """Where the data stands (a sampler's position); with the RNG states, all a rewound step needs."""
    def load_data_state(self, state: dict) -> None: ...


class Checkpointed:
    """The checkpoint half of every trainer: its state (step, optimizer, scheduler, RNG, where the data stands)
    saved and restored the same way for GRPO, SFT and the reward model; one process or several (the
    optimizer's shards in their own folder, `checkpoint.save_sharded`). A trainer sets `run_dir`, `step_no`,
    `opt`, `sched`, `tok`, `dist`, `cfg.log.keep_checkpoints`, and names its trained model (`saved_model`)."""

    def saved_model(self):
        return self.policy

    def data_state(self) -> dict:
        return {}

    def load_data_state(self, state: dict) -> None:
        pass

    def after_restore(self) -> None:
        """What a trainer refreshes from restored weights (GRPO: its rollout copy)."""

    def state(self) -> dict:
        out = {"step": self.step_no, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
               "rng": ckpt.rng_state()}
        data = self.data_state()
        if data:
            out["sampler"] = data
        return out

    def save(self) -> Path:
        keep = self.cfg.log.keep_checkpoints
        if self.dist.on:  # the optimizer's shards go to their own folder (checkpoint.save_sharded)
            state = {k: v for k, v in self.state().items() if k != "optimizer"}
            return ckpt.save_sharded(self.run_dir, self.step_no, self.saved_model(), self.tok, self.opt, state,
                                     keep=keep)
        return ckpt.save_checkpoint(self.run_dir, self.step_no, self.saved_model(), self.tok, self.state(), keep=keep)

    def restore(self) -> bool:
        peak = list(self.sched.base_lrs)  # the learning rate this run's config asks for
        state = ckpt.restore(self.run_dir, self.saved_model(), self.opt)
        if state is None:
            return False
        self.sched.load_state_dict(state["scheduler"])
        if peak != list(self.sched.base_lrs):  # resumed with another optim.lr: the config's wins from here on
            if dist.is_main():
                print(f"resume: optim.lr {self.sched.base_lrs[0]:g} in the checkpoint, {peak[0]:g} from here on",
                      flush=True)
            factor = [lr / base if base else 1.0 for lr, base in zip(self.sched.get_last_lr(), self.sched.base_lrs)]
            for group, base, f in zip(self.opt.param_groups, peak, factor):
                group["initial_lr"], group["lr"] = base, base * f
            self.sched.base_lrs = peak
            self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]
        ckpt.set_rng_state(state["rng"])
        if "sampler" in state:
            self.load_data_state(state["sampler"])
        self.step_no = state["step"]
        self.after_restore()
        return True


@dataclass
class LoopSettings:
    steps: int
    resume: bool
    eval_every: int
    checkpoint_every: int
    progress: bool
    tensorboard: bool
    desc: str
    """The progress bar's label (`aha train`)."""
    resume_hint: str
    """The command that continues the run, for the Ctrl-C message."""
    max_minutes: float = 0.0
    """Stop after the step that passes this many minutes of this invocation (evaluated and checkpointed, so
    `resume=true` continues it); 0: no limit."""


class PromptSampler:
    """Shuffled passes over the examples; its state (epoch, position) is saved in checkpoints."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a run with a checkpoint (Ctrl-C, and `kill` or a scheduler's SIGTERM)."""


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


class HeldInterrupt:
    """Ctrl-C from `hold()` until the block ends waits for the end of the block, so that an optimizer update
    and the step count that records it are never split. A held Ctrl-C is raised as KeyboardInterrupt by
    `run_loop` once the step's metrics are logged (`raise_held`). Outside the main thread (where signals
    cannot be handled) it does nothing."""

    requested = False
    """A Ctrl-C came during a held block and has not been acted on yet (signals are per process)."""

    @classmethod
    def raise_held(cls) -> None:
        if cls.requested:
            cls.requested = False
            raise KeyboardInterrupt

    def __init__(self):
        self._previous = None
        self._pending = False

    def __enter__(self) -> HeldInterrupt:
        return self

    def hold(self) -> None:
        if self._previous is not None or threading.current_thread() is not threading.main_thread():
            return
        held = STOP_SIGNALS if not dist.env().on else (signal.SIGINT,)  # under torchrun SIGTERM is the launcher's
        self._previous = {sig: signal.getsignal(sig) for sig in held}
        for sig in held:
            signal.signal(sig, self._note)

    def _note(self, signum, frame) -> None:
        self._pending = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._previous is not None:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = None
        if self._pending:
            HeldInterrupt.requested = True
        return False


def check_finite(weights: list[torch.Tensor], step: int) -> None:
    """FloatingPointError when any weight holds a NaN or an infinity after optimizer step `step`."""
    if dist.env().on:
        ok = dist.all_finite(weights)  # sharded weights: every process checks its shards
    else:
        with torch.no_grad():
            ok = all(bool(torch.isfinite(w).all()) for w in weights)
    if not ok:
        raise FloatingPointError(f"step {step}: weights are not finite after the optimizer update "
                                 "(is the learning rate too high?)")


def lr_factor(i: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step i of `total`: linear warm-up over `warmup`
    steps, then constant or cosine to 0."""
    if warmup and i < warmup:
        return (i + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (i - warmup) / max(1, total - warmup))))
    return 1.0


def lr_schedule(opt: torch.optim.Optimizer, total: int, warmup: int, schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """The one learning-rate schedule of every trainer (GRPO, SFT, reward model): `lr_factor` per step."""
    total = max(1, total)

    def factor(i: int) -> float:
        return lr_factor(i, total, warmup, schedule)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def timed(fn: Callable[[], dict], key: str) -> dict:
    """fn's metrics with the seconds it took under `key`."""
    t0 = time.perf_counter()
    out = dict(fn() or {})
    out[key] = time.perf_counter() - t0
    return out


def run_loop(trainer: Steps, s: LoopSettings, after_step: Callable[[int, dict], None] | None = None,
             postfix: Callable[[dict], dict] | None = None) -> Path:
    """Run `trainer` from its newest checkpoint (with `s.resume`) or from the start to `s.steps`; returns the
    run folder. `after_step(step, metrics)` runs after each step's metrics are logged (e.g. rollout dumps)."""
    run_dir = trainer.run_dir
    resumed = s.resume and trainer.restore()
    main = dist.is_main()  # several processes: rank 0 logs
    logger = (MetricsLogger(run_dir, s.tensorboard, truncate_after_step=trainer.step_no if resumed else None)
              if main else None)
    bar = None
    if s.progress and main:
        from tqdm import tqdm

        bar = tqdm(total=s.steps, initial=trainer.step_no, desc=s.desc, dynamic_ncols=True)
    interrupted, begun = False, None
    started = time.monotonic()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    own_handlers = threading.current_thread() is threading.main_thread() and not dist.env().on
    if own_handlers:
        # SIGTERM (a scheduler's or `kill`'s stop) saves and stops as Ctrl-C does; so does Ctrl-C in a process
        # started in the background by a shell, which would otherwise ignore SIGINT. Under torchrun the launcher
        # owns the signals (it ends the other processes with SIGTERM when one fails).
        for sig in STOP_SIGNALS:
            signal.signal(sig, _stop)
    HeldInterrupt.requested = False
    try:
        if trainer.step_no == 0:
            first = timed(trainer.evaluate, "time/eval_s")
            if len(first) > 1 and logger is not None:
                logger.log(0, first)
        while trainer.step_no < s.steps:
            begun = (trainer.step_no, trainer.data_state(), ckpt.rng_state())
            try:
                t0 = time.perf_counter()
                metrics = trainer.step()
                metrics.setdefault("time/step_s", time.perf_counter() - t0)  # the whole step, as the trainer ran it
                check_finite(trainer.trainable, trainer.step_no)
            except FloatingPointError as e:
                raise ckpt.stopped_by_nan(run_dir, e) from None
            n = trainer.step_no
            out_of_time = bool(s.max_minutes) and time.monotonic() - started >= 60 * s.max_minutes
            if n == s.steps or out_of_time or (s.eval_every and n % s.eval_every == 0):
                metrics.update(timed(trainer.evaluate, "time/eval_s"))
            if logger is not None:
                logger.log(n, metrics)
            if after_step is not None:
                after_step(n, metrics)
            if n % s.checkpoint_every == 0 or n == s.steps or out_of_time:
                trainer.save()
            HeldInterrupt.raise_held()
            if bar is not None:
                bar.update(1)
                if postfix is not None:
                    bar.set_postfix(**postfix(metrics), refresh=False)
            if out_of_time and n < s.steps:
                if main:
                    print(f"{s.desc}: stopped at step {n} after max_minutes={s.max_minutes:g}; continue with "
                          f"`{s.resume_hint}`", file=sys.stderr)
                break
    except KeyboardInterrupt:
        if dist.env().on:  # every process got the signal; rank 0 says where to resume from
            if not dist.is_main():
                raise SystemExit(130) from None
            last = ckpt.latest_checkpoint(run_dir)
            hint = f"torchrun --nproc_per_node={dist.env().world} -m {s.resume_hint}"
            raise AhaError(f"interrupted at step {trainer.step_no}: " + (
                f"resume from {last[1]} with `{hint}`" if last else "no checkpoint was saved")) from None
        interrupted = True
        for sig in (STOP_SIGNALS if own_handlers else (signal.SIGINT,)):  # a second Ctrl-C must not break the save
            signal.signal(sig, signal.SIG_IGN)
        if begun is not None and begun[0] == trainer.step_no:  # cut before its update: rewind the step
            trainer.load_data_state(begun[1])
            ckpt.set_rng_state(begun[2])
        trainer.save()
    finally:
        if own_handlers:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    if interrupted:
        raise AhaError(f"interrupted at step {trainer.step_no}: checkpoint saved; continue with `{s.resume_hint}`")
    return run_dir
