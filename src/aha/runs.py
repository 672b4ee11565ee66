"""Run folders: where a run keeps its checkpoints, and which checkpoint a run folder stands for.

A run folder (`aha train`, `aha sft`, `aha rm`, a pipeline stage) holds `checkpoints/step_N`, each complete
once its `trainer_state.pt` exists (checkpoints are written under a temporary name and renamed into place:
`aha.training.checkpoint`). Wherever a model is expected, a run folder stands for its newest checkpoint. Plain
file-system code: every layer may import it.
"""

from __future__ import annotations

import re
from pathlib import Path

from aha.errors import AhaError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
"""The trainer's state in a checkpoint; written last, so its presence marks a complete checkpoint."""
_STEP = re.compile(r"^step_(\d+)$")


def is_run(path: str | Path) -> bool:
    """A folder with a `checkpoints` folder (complete checkpoints or not)."""
    return (Path(path) / CHECKPOINTS).is_dir()


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP.match(d.name)
        if m and (d / STATE_FILE).exists():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def newest_model(run_dir: str | Path) -> Path:
    """The model a run folder stands for: its newest complete checkpoint (AhaError when it has none)."""
    found = latest_checkpoint(run_dir)
    if found is None:
        raise AhaError(f"{run_dir}: run folder has no complete checkpoint")
    return found[1]


def resolve_run(model: str) -> str:
    """A run folder -> its newest checkpoint; anything else (a registry name, a model folder) as given."""
    return str(newest_model(model)) if is_run(model) else model
