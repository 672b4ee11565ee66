"""Run logging: metrics.jsonl (one row per step), TensorBoard event files, rollout dumps, and the
reflection-word counter behind the aha-moment curve."""

from __future__ import annotations

import json
import re
from pathlib import Path

from aha.errors import AhaError
from aha.io import append_jsonl, atomic_write_jsonl, read_jsonl

REFLECTION_WORDS = ("wait", "re-check", "recheck", "let me verify", "let me check", "however", "but wait",
                    "double-check", "double check", "re-evaluate", "reconsider", "hmm")
"""Phrases counted as reflection (R1 §2.2.4: "wait, let me re-check" grows during R1-Zero training)."""
_REFLECTION = re.compile(r"\b(" + "|".join(re.escape(w) for w in REFLECTION_WORDS) + r")\b", re.IGNORECASE)


def reflection_count(text: str) -> int:
    return len(_REFLECTION.findall(text))


class MetricsLogger:
    """Appends one JSON row per step and mirrors scalars to TensorBoard (when installed)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, truncate_after_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            # On resume: drop rows past the checkpoint so the resumed file equals an uninterrupted one.
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            atomic_write_jsonl(self.path, [r for r in rows if r.get("step", 0) <= truncate_after_step])
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:
                self.tb = None

    def log(self, step: int, row: dict) -> None:
        row = {"step": step, **row}
        append_jsonl(self.path, row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl ([] when there is none); a row that is not a JSON object with a
    numeric `step` is an AhaError naming the file and line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for lineno, row in read_jsonl(path):
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            raise AhaError(f"{path}:{lineno}: " + ("missing field 'step'" if step is None else
                                                   f"field 'step' must be a number, got {step!r}"))
        rows.append(row)
    return rows


def component_means(parts: dict[str, list[float]], row_weights: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each reward component over the rows whose weights include it. Routing by kind leaves a
    component at 0.0 on the rows it does not apply to; those rows must not dilute its mean. A component
    that applies to no row has no mean (left out)."""
    out = {}
    for name, values in parts.items():
        vals = [v for v, w in zip(values, row_weights, strict=True) if name in w]
        if vals:
            out[name] = sum(vals) / len(vals)
    return out


def kind_metrics(kinds: list[str], totals: list[float], parts: dict[str, list[float]],
                 row_weights: list[dict[str, float]], lengths: list[int]) -> dict[str, float]:
    """Per routing kind K present in the rows: `kind/K/reward`, `kind/K/length_mean`, and `kind/K/NAME` for
    each reward component NAME that applies to K (e.g. kind/reasoning/accuracy, kind/general/helpful)."""
    out = {}
    for kind in sorted(set(kinds)):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        out[f"kind/{kind}/reward"] = sum(totals[i] for i in rows) / len(rows)
        out[f"kind/{kind}/length_mean"] = sum(lengths[i] for i in rows) / len(rows)
        sub = {name: [values[i] for i in rows] for name, values in parts.items()}
        for name, mean in component_means(sub, [row_weights[i] for i in rows]).items():
            out[f"kind/{kind}/{name}"] = mean
    return out
