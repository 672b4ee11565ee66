"""Decode-step time of the lean decoder (`aha.rollout.fast_decode`) on a real model, against the hardware's
weight-streaming bound: the decoder as it stands against its earlier paths (weights transposed, not prepacked;
attention as two batched matmuls, not torch's fused kernel), interleaved, medians.

    .venv/bin/python bench/decode_speed.py [--model qwen2.5-coder-0.5b-instruct] [--rows 8 64] [--context 300]

For each batch size: the prompt cache is filled once (random tokens, `--context` positions), then each variant
decodes `--steps` tokens, variants alternating `--rounds` times. Prints a Markdown table and writes
bench/results/decode_speed.json (commit and CPU flags inside). The weight-streaming bound is the bytes of every
weight matrix a step reads (the layers' projections and the LM head, not the embedding) over `--bandwidth`
(GB/s, measured here by a large copy unless given).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers.cache_utils import DynamicCache

from aha.io import atomic_write_text
from aha.models import load_model
from aha.rollout import fast_decode

sys.path.insert(0, str(Path(__file__).parent / "grpo_vs_trl"))
from run import cpu_flags  # noqa: E402

VARIANTS = {  # name: (pack, fused attention)
    "transposed + matmul attention (before)": (False, False),
    "prepacked + matmul attention": (True, False),
    "prepacked + fused attention (now)": (True, True),
}


def bandwidth() -> float:
    src = torch.empty(512 * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() / statistics.median(times) / 1e9  # read + write


def decoder(model, cache_src, mask, steps, pack, fused):
    cache = DynamicCache()
    for layer in cache_src.layers:  # a fresh copy of the filled cache for each variant
        cache.update(layer.keys.clone(), layer.values.clone(), len(cache.layers))
    variant = type("Variant", (fast_decode.Decoder,), {"pack": pack})  # this decoder's choice only
    dec = variant(model, cache, mask, steps + 2)
    dec.fused = fused  # the attention path this variant measures
    return dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--rows", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bandwidth", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.model, dtype="bfloat16")
    model.eval()
    inner = model.model
    streamed = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                   if p.dim() == 2 and p is not inner.embed_tokens.weight)
    bw = args.bandwidth or bandwidth()
    bound_ms = streamed / bw / 1e6
    rows_out = []
    for B in args.rows:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(100, 20000, (B, args.context), generator=g)
        mask = torch.ones_like(ids)
        cache = DynamicCache()
        with torch.no_grad():
            model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        times = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, (pack, fused) in VARIANTS.items():
                dec = decoder(model, cache, mask, args.steps, pack, fused)
                nxt, pos = ids[:, -1], torch.full((B,), args.context)
                dec.step(nxt, pos)  # warm-up step
                for _ in range(args.steps):
                    pos = pos + 1
                    t = time.perf_counter()
                    dec.step(nxt, pos)
                    times[name].append(time.perf_counter() - t)
        for name, ts in times.items():
            ms = 1000 * statistics.median(ts)
            rows_out.append({"rows": B, "variant": name, "step_ms": round(ms, 1), "tokens_per_s": round(B / ms * 1e3, 1),
                             "of_streaming_bound": round(bound_ms / ms, 3)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"commit": commit, "model": args.model, "cpu_flags": cpu_flags(), "machine": platform.processor(),
              "threads": args.threads, "context": args.context, "steps": args.steps, "rounds": args.rounds,
              "streamed_bytes": streamed, "bandwidth_GBps": round(bw, 1), "bound_ms": round(bound_ms, 1),
              "rows": rows_out}
    atomic_write_text(Path(__file__).parent / "results" / "decode_speed.json", json.dumps(result, indent=1) + "\n")
    print(f"commit {commit}, {args.model}, {args.threads} threads, context {args.context}, CPU flags {cpu_flags()}")
    print(f"weights read per step {streamed / 1e6:.0f} MB at {bw:.1f} GB/s: bound {bound_ms:.1f} ms a step\n")
    print("| rows | variant | ms/step (median) | tokens/s | share of the streaming bound |")
    print("|---|---|---|---|---|")
    for r in rows_out:
        print(f"| {r['rows']} | {r['variant']} | {r['step_ms']} | {r['tokens_per_s']} | {r['of_streaming_bound']:.0%} |")


if __name__ == "__main__":
    main()
