"""Data parallelism over the processes `torchrun` starts: one process per device, PyTorch's own stack.

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) once and joins the process group:
NCCL on CUDA devices (one per process, `cuda:LOCAL_RANK`), gloo on the CPU. Every collective has a timeout
(`AHA_DIST_TIMEOUT` seconds, default 600), so a process whose peer died stops instead of waiting forever.
Without torchrun (WORLD_SIZE unset or 1) nothing here starts a process group and every helper is the
identity, so a single process runs exactly the code it ran before this module existed.

`shard()` applies FSDP2 (`torch.distributed.fsdp.fully_shard`) per decoder layer, then to the root, with bf16
compute through its MixedPrecisionPolicy when the run trains in bf16 (fp32 master shards, fp32 gradient
reduction). The trainers divide their losses by whole-step totals that are summed over all processes, so the
gradients are reduced as sums (divide factor 1), not averaged: the update equals one process's on the same data.

Rank 0 alone writes metrics, rollouts, progress bars and the consolidated checkpoint files; `is_main()` says
whether this process is it.

`torch.distributed.fsdp` and `torch.distributed.checkpoint` are imported where they are used: together they add
~2 s to every start, which single-process commands never need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from aha.errors import AhaError
from aha.runtime import pick_device

TIMEOUT_ENV = "AHA_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        """More than one process."""
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


_current = Dist()
_device = "cpu"
"""Where collectives of Python numbers run: the CPU for gloo, this process's GPU for NCCL."""


def env() -> Dist:
    return _current


def is_main() -> bool:
    return _current.rank == 0


def _int_env(name: str, default: str) -> int:
    value = os.environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise AhaError(f"environment: {name}={value!r} is not an integer (set by torchrun)") from None


def timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV, "")
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise AhaError(f"environment: {TIMEOUT_ENV}={value!r} must be a positive number of seconds")
    return seconds


def setup(device: str) -> tuple[Dist, str]:
    """(this process's place, its device). Under torchrun, joins the process group once (later calls return
    the same); otherwise `(Dist(), pick_device(device))`, as a single process always ran."""
    global _current, _device
    world = _int_env("WORLD_SIZE", "1")
    if world <= 1:
        return _current, pick_device(device)
    rank, local = _int_env("RANK", "0"), _int_env("LOCAL_RANK", "0")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise AhaError(f"device: '{device}' asked for but no CUDA device is available")
    dev = f"cuda:{local}" if cuda else "cpu"
    if not tdist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        tdist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s()),
                                 **({"device_id": torch.device(dev)} if cuda else {}))
    _current, _device = Dist(rank, world, local), dev
    return _current, dev


def close() -> None:
    """Leave the process group (at the end of a command)."""
    global _current
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
    _current = Dist()


# --------------------------------------------------------------------------------------------- collectives
def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sums over all processes (float64); the values themselves in a single process."""
    if not _current.on:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device)
    tdist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: float) -> float:
    if not _current.on:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return float(t.item())


def all_gather(obj) -> list:
    """Every process's `obj` (picklable), in rank order."""
    if not _current.on:
        return [obj]
    out = [None] * _current.world
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _current.on:
        tdist.barrier()


def my_share(items: list) -> list:
    """This process's items of a list every process holds: round robin (item i goes to rank i % world)."""
    return items[_current.rank::_current.world] if _current.on else items


def interleave(shares: list[list]) -> list:
    """The inverse of `my_share`: the gathered shares back in the order of the whole list."""
    out = []
    for i in range(max((len(s) for s in shares), default=0)):
        out += [s[i] for s in shares if i < len(s)]
    return out


# --------------------------------------------------------------------------------------------- FSDP2
def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM (Llama, Qwen2, Gemma, ...: `model.model.layers`), through a LoRA
    wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise AhaError(f"{type(model).__name__}: no decoder layers found (model.model.layers) to shard")
    return list(layers)


def shard(model, bf16: bool) -> None:
    """FSDP2 in place: each decoder layer, then the root (embeddings, final norm, LM head). With `bf16` the
    layers compute in bf16 from fp32 shards and gradients are reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(_device.split(":")[0], (_current.world,))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # losses carry global normalisers: sum, do not average
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)


def is_sharded(t: torch.Tensor) -> bool:
    return hasattr(t, "full_tensor")


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded parameter (an all-gather); the tensor itself otherwise."""
    return t.full_tensor() if is_sharded(t) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor; the tensor itself otherwise."""
    return t.to_local() if is_sharded(t) else t


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (2-norm) over parameters that may be sharded: the squared norms of the
    local shards are summed over the processes. A single process calls torch's own function."""
    if not _current.on:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [local(p.grad) for p in params if p.grad is not None]
    sq = sum((g.detach().float().pow(2).sum() for g in grads), torch.zeros((), device=_device))
    tdist.all_reduce(sq)
    total = sq.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # torch's formula
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return total


def all_finite(weights: list[torch.Tensor]) -> bool:
    """Whether every weight is finite in every process."""
    with torch.no_grad():
        ok = all(bool(torch.isfinite(local(w)).all()) for w in weights)
    return all_reduce_sum([0.0 if ok else 1.0])[0] == 0.0
