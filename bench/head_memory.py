"""Peak memory and time of the log-probs of N positions over a large vocabulary, forward and backward:
the whole (N, V) logits (`optim.logprob_chunk=0`) against the LM head a chunk of positions at a time
(`aha.grpo.head_logprobs`), each variant in a fresh process (peak RSS from wait4), alternating.

    .venv/bin/python bench/head_memory.py [--positions 2048] [--vocab 151936] [--hidden 1536] [--chunks 0 1024 256]

The defaults are Qwen2.5-1.5B's head (the GPU recipes' model) in fp32 on 2,048 positions: a quarter of one of
those recipes' 8k-token SFT micro-batches, the size this CPU does in seconds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def worker(n: int, vocab: int, hidden: int, chunk: int) -> None:
    import torch

    from aha.grpo import head_logprobs

    torch.manual_seed(0)
    h = torch.randn(n, hidden, requires_grad=True)
    w = (torch.randn(vocab, hidden) * hidden ** -0.5).requires_grad_()
    rows, targets = torch.arange(n), torch.randint(0, vocab, (n,))
    t = time.perf_counter()
    logp, ent = head_logprobs(h, w, None, rows, targets, with_entropy=True, chunk=chunk)
    logp.sum().backward()
    print(json.dumps({"seconds": time.perf_counter() - t, "logp_sum": float(logp.detach().sum()),
                      "grad_norm": float(h.grad.norm())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 1024, 256])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", type=int)
    a = ap.parse_args()
    if a.worker is not None:
        return worker(a.positions, a.vocab, a.hidden, a.worker)
    base = 4 * a.hidden * (a.vocab + a.positions) * 2 / 2**30  # the weight, the hidden states and their gradients
    res: dict[int, list[tuple[float, float, dict]]] = {c: [] for c in a.chunks}
    for _ in range(a.rounds):
        for c in a.chunks:
            cmd = [sys.executable, __file__, "--positions", str(a.positions), "--vocab", str(a.vocab),
                   "--hidden", str(a.hidden), "--worker", str(c)]
            with tempfile.TemporaryFile("w+") as out:
                proc = subprocess.Popen(cmd, stdout=out, text=True)
                _, status, usage = os.wait4(proc.pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise SystemExit(f"chunk {c} failed")
                out.seek(0)
                text = out.read()
            r = json.loads(text.strip().splitlines()[-1])
            res[c].append((r["seconds"], usage.ru_maxrss / 2**20, r))
            print(f"[bench] chunk {c}: {r['seconds']:.2f} s, peak RSS {usage.ru_maxrss / 2**20:.2f} GiB", flush=True)
    print(f"\n{a.positions} positions, vocabulary {a.vocab:,}, hidden {a.hidden}, fp32; weight + hidden states and "
          f"their gradients alone: {base:.2f} GiB\n")
    print("| chunk | s (median) | peak RSS (median) | log-prob sum | hidden-gradient norm |")
    print("|---|---|---|---|---|")
    for c, rs in res.items():
        print(f"| {c or 'whole logits'} | {statistics.median(x[0] for x in rs):.2f} | "
              f"{statistics.median(x[1] for x in rs):.2f} GiB | {rs[0][2]['logp_sum']:.3f} | {rs[0][2]['grad_norm']:.4f} |")


if __name__ == "__main__":
    main()
