"""Benchmark: one GRPO training micro-batch (a group of completions packed after its prompt, forward and
backward) on a real model, with the attention one prompt or completion at a time (now) against the row's dense
block mask (before). LoRA rank 16, bf16 autocast, as recipes/r1_zero_qwen_gsm8k.yaml trains.

    .venv/bin/python bench/group_attention.py [--model qwen2.5-coder-0.5b-instruct] [--completions 8]
        [--prompt 150] [--length 240] [--rounds 2] [--profile]

Prints seconds per micro-batch (medians of alternating rounds) and writes bench/results/group_attention.json
(the commit and CPU kind inside). `--profile`: instead, torch's profiler over one micro-batch (now), the ops by
self CPU time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

from aha.io import atomic_write_text
from aha.models import fast_bf16, load_model, resolve
from aha.rollout.base import Completion
from aha.training import batch as batch_mod
from aha.training import lora
from aha.training.config import LoRAConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--completions", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=150)
    ap.add_argument("--length", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(str(resolve(args.model)), dtype="float32")
    model = lora.apply(model, LoRAConfig(rank=16))
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = tuple(torch.randint(100, 20000, (args.prompt,)).tolist())
    lengths = [max(8, int(args.length * f)) for f in torch.linspace(0.5, 1.5, args.completions).tolist()]
    rows = [Completion("", tuple(torch.randint(100, 20000, (n,)).tolist()), prompt) for n in lengths]
    packed = batch_mod.collate_groups(rows, tok.pad_token_id or 0)
    chunk = batch_mod.logprob_chunk(None, model)
    spans_forward = batch_mod.spans_forward

    def dense(model, spans, prefix, **inputs):  # the row's dense block mask, as before
        return model(**inputs)

    def once(variant: str) -> float:
        batch_mod.spans_forward = spans_forward if variant == "spans" else dense
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16()):
            logp, ent = batch_mod.packed_groups_logprobs(model, packed, True, chunk=chunk)
        (-(logp * packed.completion_mask).sum() / packed.completion_mask.sum()).backward()
        return time.perf_counter() - t

    once("spans")  # warm-up
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            seconds = once("spans")
        print(f"{seconds:.1f} s for {packed.tokens} tokens")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))
        return
    times: dict[str, list[float]] = {"spans": [], "dense": []}
    for _ in range(args.rounds):
        for variant in ("dense", "spans"):
            times[variant].append(once(variant))
            print(f"{variant}: {times[variant][-1]:.1f} s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"commit": commit, "cpu": "with bf16 units (AMX/AVX512-BF16)" if fast_bf16() else "without bf16 units",
              "threads": torch.get_num_threads(), "model": args.model, "vocab": vocab, "tokens": packed.tokens,
              "completions": lengths, "prompt": args.prompt,
              "seconds": {k: statistics.median(v) for k, v in times.items()}, "runs": times}
    atomic_write_text(Path("bench/results/group_attention.json"), json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["seconds"]), f"{packed.tokens} tokens")


if __name__ == "__main__":
    main()
