"""Checkpoints: an HF `save_pretrained` folder plus optimizer, scheduler, RNG states and data position.

Each checkpoint is written under a temporary name and renamed into place, and older ones are pruned
only after the new one exists, so running out of disk (or a kill) mid-write loses no earlier checkpoint.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"^step_(\d+)$")


def rng_state() -> dict:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # GPU sampling draws from the devices' generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _NAME.match(d.name)
        if m and (d / STATE_FILE).exists():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    """Write `checkpoints/step_N` atomically; keep the newest `keep` complete checkpoints."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        from aha.train import lora

        if lora.is_lora(model):  # the merged model, and the adapter for resuming
            lora.save(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException as e:
        from safetensors import SafetensorError

        from aha.io import write_error

        # A full disk or a read-only folder: one line naming the checkpoint (torch and safetensors word it their way).
        failed = write_error(final, e) if isinstance(e, (OSError, RuntimeError, SafetensorError)) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if failed is not None:
            raise failed from e
        raise
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_weights(model, ckpt: Path) -> None:
    """Load a checkpoint's safetensors weights into `model` (in place); one line naming the folder when they do
    not belong to it. Tied weights are re-tied afterwards (the checkpoint stores them once). A LoRA model
    takes the adapter saved beside the merged weights."""
    from safetensors.torch import load_file

    from aha.errors import AhaError
    from aha.train import lora

    if lora.is_lora(model):
        return lora.load_adapter(model, ckpt)

    weights = {}
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    _, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise AhaError(f"{ckpt}: checkpoint does not match the model (unexpected {unexpected[:3]})")
    model.tie_weights()


def stopped_by_nan(run_dir: Path, error: Exception):
    """The one-line error for a non-finite loss or gradient, naming the last good checkpoint."""
    from aha.errors import AhaError

    last = latest_checkpoint(run_dir)
    where = f"; last good checkpoint: {last[1]}" if last else "; no checkpoint was saved yet"
    return AhaError(f"{error}: training stopped{where}")


def load_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / STATE_FILE, weights_only=False)
