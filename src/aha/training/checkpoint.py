"""Checkpoints: an HF `save_pretrained` folder plus optimizer, scheduler, RNG states and data position.

Each checkpoint is written under a temporary name and renamed into place, and older ones are pruned
only after the new one exists, so running out of disk (or a kill) mid-write loses no earlier checkpoint.

Several processes (FSDP2, `aha.dist`): the same folder, with the consolidated weights (gathered, written by
rank 0: every later stage loads it as any model) and the optimizer state written by every process as its own
shards with `torch.distributed.checkpoint` in `optimizer/`; `trainer_state.pt` then holds every process's RNG
states. DCP reshards on load, so such a checkpoint resumes on any number of processes, one included; a
one-process checkpoint resumes on several too (its whole optimizer state is sharded on load).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch

from aha import dist
from aha.errors import AhaError
from aha.io import write_error
from aha.runs import STATE_FILE, latest_checkpoint, list_checkpoints  # noqa: F401  (the trainers' one import)
from aha.training import lora

OPTIMIZER_DIR = "optimizer"
"""The optimizer's shards (torch.distributed.checkpoint), in checkpoints written by several processes."""


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


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    """Write `checkpoints/step_N` atomically; keep the newest `keep` complete checkpoints."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
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
    last = latest_checkpoint(run_dir)
    where = f"; last good checkpoint: {last[1]}" if last else "; no checkpoint was saved yet"
    return AhaError(f"{error}: training stopped{where}")


def load_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / STATE_FILE, weights_only=False)


def save_sharded(run_dir: Path, step: int, model, tokenizer, optimizer, state: dict, keep: int = 2) -> Path:
    """`save_checkpoint` for a sharded model, called by every process: the consolidated HF folder (rank 0), the
    optimizer's shards (every process) and `state` with every process's RNG states, renamed into place by
    rank 0 once all of it is written. A failure in any process fails the save in every process (one line)."""
    from safetensors import SafetensorError
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    main = dist.is_main()
    failed = None
    if main:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as e:
            failed = e
    if lora.is_lora(model):  # the merged model, and the adapter for resuming
        weights, adapter = lora.gathered(model)
    else:
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        for name in _tied_names(model):  # stored once, as save_pretrained stores tied weights
            weights.pop(name, None)
    rngs = dist.all_gather(rng_state())
    if dist.all_reduce_sum([float(failed is not None)])[0] == 0:
        try:
            dcp_save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(tmp / OPTIMIZER_DIR))
            if main:
                if lora.is_lora(model):
                    lora.write(model, tmp, weights, adapter)
                else:
                    model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)
                torch.save({**state, "rng_by_rank": rngs}, tmp / STATE_FILE)
        except (OSError, RuntimeError, SafetensorError, CheckpointException) as e:
            # DCP reports every process's failure as one exception: the first is the reason
            failed = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) and e.failures else e
    if dist.all_reduce_sum([float(failed is not None)])[0]:  # every process learns of a failure anywhere
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(failed, KeyboardInterrupt):  # Ctrl-C came during the save: the loop's interrupt, not a write error
            raise KeyboardInterrupt
        if failed is not None:
            raise write_error(final, failed) from failed
        raise AhaError(f"cannot write {final}: another process failed writing it")
    if main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()  # nobody reads the checkpoint list before rank 0 has renamed and pruned
    return final


def _tied_names(model) -> list[str]:
    """Names of parameters that are another parameter under a second name (an LM head tied to the embeddings)."""
    seen, tied = set(), []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.append(name)
        seen.add(id(p))
    return tied


def restore(run_dir: Path, model, optimizer) -> dict | None:
    """Load the newest checkpoint's weights and optimizer state into `model` and `optimizer` (sharded or not,
    whichever number of processes wrote it) and return its trainer state, with `rng` this process's RNG
    states (rank 0's for a process the writer did not have); None when there is no checkpoint."""
    found = latest_checkpoint(run_dir)
    if found is None:
        return None
    path = found[1]
    d = dist.env()
    if d.on and not lora.is_lora(model):  # a LoRA model takes its adapter (load_weights), sharded or not
        _load_full_weights(model, path)
    else:
        load_weights(model, path)
    state = load_state(path)
    if "optimizer" in state and d.on:  # written by one process: its whole state, sharded here
        _load_full_optimizer(model, optimizer, state["optimizer"])
    elif "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    else:
        _load_sharded_optimizer(model, optimizer, path / OPTIMIZER_DIR)
    rngs = state.get("rng_by_rank") or [state["rng"]]
    state["rng"] = rngs[d.rank] if d.rank < len(rngs) else rngs[0]
    return state


def _load_full_weights(model, ckpt: Path) -> None:
    """A checkpoint's consolidated weights into a sharded model (each process keeps its shards)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    weights = {}
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    names = set(model.state_dict())
    unexpected = [k for k in weights if k not in names]
    if unexpected:
        raise AhaError(f"{ckpt}: checkpoint does not match the model (unexpected {unexpected[:3]})")
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))


def _load_full_optimizer(model, optimizer, saved: dict) -> None:
    """A one-process optimizer state (`optimizer.state_dict()`: parameters by position) into the optimizer of a
    sharded model: the positions are named as the model names its trainable parameters, in the same order (the
    order the trainers build their optimizers in), and every process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if sum(len(g["params"]) for g in saved["param_groups"]) != len(names):
        raise AhaError("checkpoint: its optimizer state does not match the model's trainable parameters")
    full = {"state": {names[i]: v for i, v in saved["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


def _load_sharded_optimizer(model, optimizer, folder: Path) -> None:
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    if not folder.is_dir():
        raise AhaError(f"{folder.parent}: no optimizer state in the checkpoint")
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp_load(state, checkpoint_id=str(folder), no_dist=not dist.env().on)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
