"""`aha plot RUN`: the R1-Zero figures as PNG: accuracy, mean response length and reflection-word
frequency (the aha-moment curve) against training step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aha.errors import AhaError
from aha.train.metrics import read_metrics


@dataclass
class PlotConfig:
    run: str = "runs/r1_zero"
    """A run folder (with metrics.jsonl)."""
    out: str = ""
    """Output folder for the PNGs (default: the run folder)."""


def _smooth(values: list[float], k: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1):i + 1]
        out.append(sum(window) / len(window))
    return out


def plot_run(run: str, out: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(Path(run))]
    if not rows:
        raise AhaError(f"{run}: no metrics.jsonl (is this a run folder?)")
    out_dir = Path(out or run)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_rows = [r for r in rows if "reward" in r]
    eval_rows = [r for r in rows if "eval/accuracy" in r]
    panels = [
        ("accuracy", "Accuracy", [("accuracy", "train rollouts", train_rows), ("eval/accuracy", "held-out (greedy)", eval_rows)]),
        ("response_length", "Mean response length (tokens)", [("length_mean", "train rollouts", train_rows),
                                                               ("eval/length_mean", "held-out", eval_rows)]),
        ("reflection", "Reflection words per 1k tokens", [("reflection_per_1k_tokens", "train rollouts", train_rows)]),
    ]
    paths = []
    fig_all, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax_all, (name, title, series) in zip(axes, panels):
        fig, ax = plt.subplots(figsize=(6, 4))
        for target in (ax, ax_all):
            for key, label, src in series:
                xs = [r["step"] for r in src if key in r]
                ys = [r[key] for r in src if key in r]
                if not xs:
                    continue
                if len(xs) > 10 and src is train_rows:
                    target.plot(xs, ys, alpha=0.3, color="C0")
                    target.plot(xs, _smooth(ys), label=f"{label} (5-step mean)", color="C0")
                else:
                    target.plot(xs, ys, marker="o", label=label)
            target.set_xlabel("step")
            target.set_title(title)
            target.grid(alpha=0.3)
            target.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig_all.tight_layout()
    path = out_dir / "r1_zero.png"
    fig_all.savefig(path, dpi=110)
    plt.close(fig_all)
    paths.append(path)
    return paths
