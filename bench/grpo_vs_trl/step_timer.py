"""A TRL callback that times each optimizer step and keeps what TRL logs for it (used by the TRL workers of
`bench/grpo_vs_trl` and `bench/sft_speed.py`, in TRL's virtual environment)."""

from __future__ import annotations

import time


def step_timer():
    """A fresh callback; after training, `.rows` holds {"seconds", "logs"} per step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.rows: list[dict] = []
            self.t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.rows.append({"seconds": time.perf_counter() - self.t, "logs": {}})

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and self.rows:
                self.rows[-1]["logs"].update(logs)

    return StepTimer()
