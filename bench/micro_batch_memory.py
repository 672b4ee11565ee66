"""Benchmark: resident memory across training micro-batches of changing sizes, as a GRPO step on the 0.5B Qwen
meets them (one group of 8 completions after a 150-token prompt a micro-batch, mean lengths 200-350 tokens),
with glibc's malloc as it comes, with `aha.runtime.release` (malloc_trim) after each micro-batch (what the
trainers do now unless `runtime.malloc=tuned`), or with a fixed 1 MiB mmap threshold (every large tensor mapped
and unmapped: `MALLOC_MMAP_THRESHOLD_=1048576` in the environment). LoRA rank 16, bf16 autocast.

    .venv/bin/python bench/micro_batch_memory.py [--release]
    MALLOC_MMAP_THRESHOLD_=1048576 .venv/bin/python bench/micro_batch_memory.py

Prints, per micro-batch, its tokens, seconds, the peak resident memory during it and what stays resident
after it. Run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import torch

from aha import runtime
from aha.models import fast_bf16, load_model, resolve
from aha.rollout.base import Completion
from aha.training import batch as batch_mod
from aha.training import lora
from aha.training.config import LoRAConfig


def rss_gb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--release", action="store_true", help="runtime.release() after each micro-batch")
    args = ap.parse_args()
    peak = [0.0]

    def watch() -> None:
        while True:
            peak[0] = max(peak[0], rss_gb())
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    torch.manual_seed(0)
    model, _ = load_model(str(resolve(args.model)), dtype="float32")
    model = lora.apply(model, LoRAConfig(rank=16))
    chunk = batch_mod.logprob_chunk(None, model)
    for i, mean in enumerate([200, 330, 260, 300, 220, 350]):
        prompt = tuple(torch.randint(100, 20000, (150,)).tolist())
        lens = [max(8, min(512, int(mean * f))) for f in torch.linspace(0.4, 1.6, 8).tolist()]
        rows = [Completion("", tuple(torch.randint(100, 20000, (n,)).tolist()), prompt) for n in lens]
        packed = batch_mod.collate_groups(rows, 0)
        peak[0] = 0.0
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16()):
            logp, ent = batch_mod.packed_groups_logprobs(model, packed, True, chunk=chunk)
        (-(logp * packed.completion_mask).sum() / packed.completion_mask.sum()).backward()
        del logp, ent
        if args.release:
            runtime.release()
        print(f"micro-batch {i}: {packed.tokens} tokens, {time.perf_counter() - t:.1f} s, peak {peak[0]:.2f} GB, "
              f"after {rss_gb():.2f} GB", flush=True)


if __name__ == "__main__":
    main()
