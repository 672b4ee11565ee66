"""Length rewards: DAPO's soft overlong punishment and a token-budget curriculum.

`overlong` (DAPO §3.4, "soft overlong punishment"): 0 while the completion fits in max_tokens - buffer,
then a linear ramp to -1 at max_tokens, and -1 beyond. Range [-1, 0]. Lengths are
`Completion.num_tokens` (token ids, or words for text-only offline scoring).

`budget`: a curriculum over the training step (our choice, not from R1): a band of rewarded lengths
that starts at [start_low, start_high] and moves to [end_low, end_high] (BudgetSchedule). 1 inside the
band, falling linearly to 0 over `slack` tokens outside it. Range [0, 1].
"""

from __future__ import annotations

from pathlib import Path

from aha.rewards.config import BudgetSchedule


def overlong_penalty(num_tokens: int, max_tokens: int, buffer: int) -> float:
    """DAPO's soft overlong penalty in [-1, 0]."""
    if num_tokens <= max_tokens - buffer:
        return 0.0
    if num_tokens >= max_tokens:
        return -1.0
    return (max_tokens - buffer - num_tokens) / buffer


def budget_band(schedule: BudgetSchedule, step: int) -> tuple[float, float]:
    """The rewarded band (low, high) in tokens at training `step`."""
    if step <= schedule.switch_step:
        t = 0.0
    elif schedule.ramp_steps == 0 or step >= schedule.switch_step + schedule.ramp_steps:
        t = 1.0
    else:
        t = (step - schedule.switch_step) / schedule.ramp_steps
    low = schedule.start_low + t * (schedule.end_low - schedule.start_low)
    high = schedule.start_high + t * (schedule.end_high - schedule.start_high)
    return low, high


def budget_reward(num_tokens: int, schedule: BudgetSchedule, step: int) -> float:
    """1.0 inside the band at `step`, falling linearly to 0.0 over `slack` tokens outside it."""
    low, high = budget_band(schedule, step)
    distance = low - num_tokens if num_tokens < low else num_tokens - high if num_tokens > high else 0.0
    if distance <= 0:
        return 1.0
    if schedule.slack <= 0:
        return 0.0
    return max(0.0, 1.0 - distance / schedule.slack)


def render_schedule(schedule: BudgetSchedule, path: str | Path, steps: int | None = None) -> Path:
    """Draw the budget band over training steps (a heat map of the reward by step and length) as a PNG at
    `path`. Uses matplotlib's object API with the Agg canvas, so no global backend is switched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = steps or max(1, 2 * (schedule.switch_step + schedule.ramp_steps))
    max_len = int(max(schedule.start_high, schedule.end_high) + 2 * schedule.slack + 16)
    xs = list(range(0, steps + 1, max(1, steps // 200)))
    ys = list(range(0, max_len + 1, max(1, max_len // 200)))
    grid = [[budget_reward(y, schedule, x) for x in xs] for y in ys]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    img = ax.imshow(grid, origin="lower", aspect="auto", extent=(xs[0], xs[-1], ys[0], ys[-1]),
                    cmap="viridis", vmin=0, vmax=1)
    bands = [budget_band(schedule, x) for x in xs]
    ax.plot(xs, [b[0] for b in bands], color="white", lw=1)
    ax.plot(xs, [b[1] for b in bands], color="white", lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("completion tokens")
    ax.set_title("budget reward")
    fig.colorbar(img, ax=ax, label="reward")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out
