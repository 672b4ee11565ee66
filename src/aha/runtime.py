"""Process settings: how this process runs, not what a stage computes.

`RuntimeConfig` (torch's threads, the allocator policy) is read from a recipe's top-level `runtime:` section
and `runtime.KEY=VALUE` on the command line, apart from the stage's config (so it is never part of a
pipeline stage's fingerprint), and applied once, by the command line (`aha.cli`) or the Python API
(`aha.api`), before the stage runs. A run folder's config.yaml records the settings its process ran with.

The allocator: glibc's malloc serves every allocation over its mmap threshold (128 KiB, adaptively up to 32 MiB) with a
fresh mmap and returns it with munmap on free. PyTorch on CPU frees and re-allocates the same large
activations, logits and gradients every micro-batch, so each one is page-faulted and zeroed by the kernel
again: on the 2-core benchmark machine a third of the run's CPU time was system time. `tune_malloc` keeps
freed memory in the process (no mmap for tensors, no trimming), so it is reused without faults; the cost
is that the peak stays resident. tcmalloc or jemalloc via LD_PRELOAD do the same job where installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import os
import platform
from dataclasses import dataclass
from typing import Literal

from aha.config import NonNegInt, PositiveInt, load_runtime
from aha.errors import AhaError

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
_tuned = False


@dataclass
class RuntimeConfig:
    """The `runtime:` section of a recipe (or `runtime.KEY=VALUE` on the command line)."""

    threads: NonNegInt = 0
    """torch intra-op threads (0: torch's default)."""
    malloc: Literal["auto", "tuned", "default"] = "auto"
    """auto: `tuned` for models under AUTO_TUNED_MAX_PARAMS parameters, else `default` (decided by the trainer
    once the model is loaded; commands that do not train leave the allocator alone). tuned: glibc keeps freed
    memory for reuse instead of unmapping it (`tune_malloc`; CPU-only machines): 10% faster steps on the
    small-model benchmark, but the peak stays resident and grows with micro-batches of new sizes. default:
    glibc's own policy, and the trainers hand freed memory back to the system after each micro-batch
    (`release`): Qwen2.5-0.5B's LoRA training was killed at 24.3 GB resident without it (bench/README.md)."""
    head_kernel: Literal["auto", "compiled", "eager"] = "auto"
    """How the chunked LM head computes its log-normalisers, entropies and their gradient over the vocabulary
    (`aha.grpo.head_kernel`). compiled: `torch.compile`d, one pass per position (needs a C++ compiler on the
    CPU; ~20 s to compile once per process); eager: torch's ops, one memory pass over all positions per op.
    auto: compiled for chunks of `aha.grpo.COMPILED_HEAD_MIN_SCORES` scores or more (Qwen2.5's 151,936-entry vocabulary
    at R1 lengths), eager for small vocabularies and short rows, where compiling would cost more than it saves."""
    decode_kernel: Literal["auto", "compiled", "eager"] = "auto"
    """How the lean decoder (`aha.rollout.fast_decode`) runs its layers where it prepacks bf16 weights for oneDNN
    (a CPU with bf16 units). compiled: `torch.compile`d, the small ops between the matmuls fused (needs a C++
    compiler; on 2 cores compiling took ~75 s for SmolLM2's step the first time, in up to four shape classes
    as rows leave and prompt widths change, then a few seconds a process from inductor's disk cache);
    eager: torch's ops one by one. auto: compiled for models of `aha.rollout.fast_decode.DECODE_COMPILE_MIN_PARAMS`
    parameters or more, eager for smaller ones and wherever weights are not prepacked (fp32, GPUs)."""
    kernel_cache: PositiveInt = 128
    """Most kernels oneDNN keeps for reuse in each of its two caches (its primitive cache and ideep's, the
    environment's ONEDNN_PRIMITIVE_CACHE_CAPACITY and LRU_CACHE_CAPACITY; 1024 each by default). Each matmul shape
    gets kernels of its own and a training pass makes new shapes every micro-batch (its token count), so with
    1024 the caches held ~35 MB more a step (20 steps and still growing), and their long-lived blocks among the
    step's freed activations kept the heap from being reused: SmolLM2's GRPO run on the CPU benchmark's short work
    grew from 7.1 to 9.4-9.7 GiB resident between steps 4 and 20 (`bench/grpo_vs_trl/memory_steps.py`); with 128 it
    stays within 0.35 GB of step 4's 6.4-6.5 GiB, at the same speed, and the kernels still reused (a decode step's
    five matmul shapes, a micro-batch's forward and backward) are kept. At R1 lengths (Qwen2.5-0.5B, LoRA) the
    peak fell 9.56 -> 8.97 GiB. oneDNN reads the variables once, at its first matmul: `apply` sets them (where
    the environment has not) before aha's commands run anything."""


KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
"""oneDNN's primitive cache and ideep's kernel cache: their capacities (`RuntimeConfig.kernel_cache`)."""

AUTO_TUNED_MAX_PARAMS = 300_000_000
"""`malloc=auto` keeps freed memory (tuned) for models below this size: their whole step fits many times over."""

_applied = RuntimeConfig()


def load(recipe=None, overrides: list[str] | None = None) -> RuntimeConfig:
    """The `runtime:` section of a recipe (a path or None) with the `runtime.*` overrides."""
    return load_runtime(RuntimeConfig, recipe, overrides)


def apply(settings: RuntimeConfig) -> None:
    """Apply the process settings (once per process: the allocator policy cannot be undone)."""
    global _applied
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    for var in KERNEL_CACHE_VARIABLES:  # the environment's own value wins (read by oneDNN at its first use)
        os.environ.setdefault(var, str(settings.kernel_cache))
    if settings.malloc == "tuned" and not torch.cuda.is_available():
        tune_malloc()
    _applied = settings


def applied() -> RuntimeConfig:
    """The settings this process runs with (the defaults until `apply`)."""
    return _applied


def settle_malloc(parameters: int) -> str:
    """A trainer's allocator policy once its model is loaded: `malloc=auto` becomes tuned or default by the
    model's size (tuned is applied here). Returns the policy in force."""
    global _applied
    import torch

    policy = _applied.malloc
    if policy == "auto":
        policy = "tuned" if parameters < AUTO_TUNED_MAX_PARAMS else "default"
        if policy == "tuned" and not torch.cuda.is_available():
            tune_malloc()
        _applied = dataclasses.replace(_applied, malloc=policy)
    return policy


def release() -> None:
    """Hand the heap's freed memory back to the system (glibc's `malloc_trim`), unless the tuned policy keeps it
    on purpose. Trainers call it after each micro-batch: PyTorch's CPU activations come and go in sizes that
    change with every micro-batch, and glibc otherwise keeps the high-water mark of each phase (one group's
    micro-batch of 2,900 tokens on Qwen2.5-0.5B with LoRA: 2.9 GB resident after it instead of 11.3, and
    no measurable change in the micro-batches' times; bench/micro_batch_memory.py)."""
    libc = None if _tuned else _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc():
    """The C library when it is glibc (its mallopt and malloc_trim), else None; looked up once."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def tune_malloc() -> bool:
    """Keep freed heap memory for reuse (glibc only; a no-op elsewhere). True when applied."""
    global _tuned
    if _tuned:
        return True
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
    _tuned = ok
    return ok


def adamw(params, fused: bool = True, **kwargs):
    """torch's AdamW, fused where torch has a fused kernel for the parameters' device (CPU and CUDA): on the
    2-core CPU, 0.10 s instead of 0.50 s per step for 128M parameters and 0.5 GiB less peak memory than the
    default multi-tensor version (bench/grpo_vs_trl/README.md)."""
    import torch

    params = list(params)
    ok = fused and params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, fused=True, **kwargs) if ok else torch.optim.AdamW(params, **kwargs)


def pick_device(name: str) -> str:
    """`auto`: CUDA when available, else the CPU; a CUDA device asked for on a machine without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AhaError(f"device: '{name}' asked for but no CUDA device is available")
    return name
