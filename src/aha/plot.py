"""`aha plot RUN`: the R1-Zero figures as PNG: accuracy, mean response length and reflection-word
frequency (the aha-moment curve) against training step. `aha plot PIPELINE_DIR` (a folder with a
pipeline manifest): every stage's held-out accuracy and response length in one figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aha.errors import AhaError
from aha.stages.pipeline import read_manifest
from aha.training.metrics import read_metrics


@dataclass
class PlotConfig:
    run: str = "runs/r1_zero"
    """A run folder (with metrics.jsonl) or a pipeline folder (with manifest.json)."""
    out: str = ""
    """Output folder for the PNGs (default: the run folder)."""


def _smooth(values: list[float], k: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1):i + 1]
        out.append(sum(window) / len(window))
    return out


def plot_run(run: str, out: str = "") -> list[Path]:
    if (Path(run) / "manifest.json").exists():
        return plot_pipeline(run, out)
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
    # dynamic sampling trains on the groups with both right and wrong answers: their accuracy is not the policy's
    sampled = any("sampled_accuracy" in r for r in train_rows)
    train_acc, train_label = ("sampled_accuracy", "train rollouts, all sampled") if sampled else ("accuracy", "train rollouts")
    panels = [
        ("accuracy", "Accuracy", [(train_acc, train_label, train_rows), ("eval/accuracy", "held-out (greedy)", eval_rows)]),
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


@dataclass
class StageCurves:
    """One pipeline stage's held-out curves, on the pipeline's shared x axis."""

    name: str
    kind: str
    start: float
    end: float
    accuracy: list[tuple[float, float]]
    """(x, held-out accuracy): eval/accuracy of training stages, pass@1 of eval stages, pairwise accuracy of rm."""
    length: list[tuple[float, float]]
    """(x, mean response length in tokens)."""


def stage_curves(root: Path) -> list[StageCurves]:
    """Every stage of a pipeline folder (manifest order) with the held-out numbers its output folder holds:
    metrics.jsonl rows (offset by the steps of the stages before it) or an eval stage's summary.json."""
    import json

    out, offset = [], 0.0
    for name, entry in read_manifest(root)["stages"].items():
        folder = Path(entry.get("output", root / name))
        acc, length = [], []
        rows = read_metrics(folder)
        summary = folder / "summary.json"
        if rows:
            for r in rows:
                x = offset + r.get("step", 0)
                for key in ("eval/accuracy", "eval/pairwise_accuracy"):
                    if key in r:
                        acc.append((x, r[key]))
                if "eval/length_mean" in r:
                    length.append((x, r["eval/length_mean"]))
            end = offset + max(r.get("step", 0) for r in rows)
        elif summary.exists():
            models = json.loads(summary.read_text())
            models = models if isinstance(models, list) else [models]
            acc = [(offset + i + 0.5, m["pass@1"]) for i, m in enumerate(models) if "pass@1" in m]
            length = [(offset + i + 0.5, m["length_mean"]) for i, m in enumerate(models) if "length_mean" in m]
            end = offset + max(1, len(models))
        else:
            end = offset
        out.append(StageCurves(name, entry.get("kind", ""), offset, end, acc, length))
        offset = end
    return out


def plot_pipeline(root: str, out: str = "") -> list[Path]:
    """`aha plot PIPELINE_DIR`: each stage's held-out accuracy and response length in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = stage_curves(Path(root))
    if not any(s.accuracy or s.length for s in stages):
        raise AhaError(f"{root}: no stage has held-out numbers yet (metrics.jsonl or summary.json)")
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 1.6 * len(stages)), 6.5), sharex=True)
    for ax, attr, title in ((axes[0], "accuracy", "Held-out accuracy (rm: pairwise)"),
                            (axes[1], "length", "Held-out mean response length (tokens)")):
        for i, s in enumerate(stages):
            points = getattr(s, attr)
            if points:
                ax.plot([x for x, _ in points], [y for _, y in points], marker="o", color=f"C{i % 10}",
                        label=f"{s.name} ({s.kind})")
            ax.axvline(s.start, color="grey", alpha=0.3, linestyle=":")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for s in stages:
        axes[0].annotate(s.name, ((s.start + s.end) / 2, 1.0), xycoords=("data", "axes fraction"), ha="center",
                         va="bottom", fontsize=8)
    axes[0].legend(fontsize=8, loc="best")
    axes[1].set_xlabel("pipeline progress (training steps; one unit per evaluated model)")
    fig.tight_layout()
    out_dir = Path(out or root)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "pipeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
