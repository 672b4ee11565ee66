"""`aha sft` speed on SmolLM2-135M-Instruct: the default (a micro-batch's packed rows run as one row with
attention per sample and the LM head on target positions only, tuned malloc, the embedding gradient once a
step) against the default with glibc's malloc as it comes, and against what `aha sft` did before (`rows`:
padded rows with transformers' block mask and full logits, glibc's malloc, the embedding gradient per
micro-batch), alternating.

    .venv/bin/python bench/sft_speed.py [--steps 3] [--rounds 2] [--data ../shared/data/gsm8k/train.jsonl]

Data: GSM8K training problems as R1-style cold-start samples (the worked solution inside <think>, the final
number inside <answer>), `aha sft`'s defaults (the chat template with the R1 system prompt, max_length
1,024, 16 samples a step, 4 packed rows a micro-batch, fp32 on a CPU without fast bf16). Each
run is a fresh process: one warm-up step, then --steps measured steps, the same samples in every run (same
seed). Peak RSS from wait4. Prints a Markdown table; writes bench/results/sft_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = {
    "default": [],  # one row a micro-batch, attention per sample, tuned malloc, embedding gradient once
    "malloc_default": ["malloc=default"],
    # what `aha sft` did before: padded rows with transformers' block mask (see worker), glibc's malloc as it
    # comes, the embedding gradient per micro-batch
    "rows": ["malloc=default", "optim.embedding_grad_once=false"],
}


def gsm8k_samples(path: Path, n: int) -> list[dict]:
    rows = []
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            work, _, answer = r["answer"].partition("####")
            work = re.sub(r"<<[^>]*>>", "", work).strip()  # the calculator annotations
            rows.append({"prompt": r["question"], "completion": f"<think>\n{work}\n</think>\n<answer>{answer.strip()}</answer>"})
            if len(rows) == n:
                break
    return rows


def worker(variant: str, steps: int, data: str) -> None:
    import torch

    from aha.config import load_config
    from aha.models import load_model, resolve
    from aha.stages import sft
    from aha.train import sft_loop
    from aha.train.sft_loop import SFTTrainer

    if variant == "rows":  # the previous code path: padded rows, the block mask built by transformers
        sft_loop.per_sample_attention = lambda model: False
    cfg = load_config(sft.SFTConfig, None, [
        f"model={resolve('smollm2-135m-instruct')}", f"input={data}", "eval_size=0",
        f"out_dir={tempfile.mkdtemp(prefix='aha_sft_speed_')}", "log.progress=false", "log.tensorboard=false",
        *VARIANTS[variant]])
    model, tok = load_model(str(resolve("smollm2-135m-instruct")), dtype="float32")
    train, held, _ = sft.prepare(cfg, tok)
    torch.manual_seed(0)
    trainer = SFTTrainer(cfg, train, held, model, tok)
    rows = []
    for _ in range(steps + 1):
        m = trainer.step()
        rows.append({k: m[k] for k in ("time/step_s", "tokens", "rows", "pack_efficiency", "loss")}
                    | {"sample_tokens": m["tokens_per_s"] * m["time/step_s"]})
    print(json.dumps({"variant": variant, "steps": rows}))


def run_one(variant: str, steps: int, data: str) -> dict:
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", variant, "--steps", str(steps), "--data", data],
                                stdout=out, stderr=err, cwd=REPO, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{variant} failed:\n{err.read()[-4000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t
    result["peak_rss_gib"] = usage.ru_maxrss / 2 ** 20
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=256, help="GSM8K problems to take (from the top of the file)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"))
    ap.add_argument("--worker", choices=sorted(VARIANTS))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "sft_speed.json"))
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.data)
    samples = Path(tempfile.mkdtemp(prefix="aha_sft_speed_")) / "gsm8k_r1.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_samples(Path(args.data), args.samples)))
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v in VARIANTS:  # alternating
            r = run_one(v, args.steps, str(samples))
            runs[v].append(r)
            print(f"[bench] {v}: steps {[round(s['time/step_s'], 2) for s in r['steps']]} s, "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    table = {}
    for v, rs in runs.items():
        steps = [s for r in rs for s in r["steps"][1:]]  # the first step of each run is its warm-up
        table[v] = {"step_s": statistics.median(s["time/step_s"] for s in steps),
                    "step_s_all": [round(s["time/step_s"], 2) for s in steps],
                    "tokens_per_s": sum(s["sample_tokens"] for s in steps) / sum(s["time/step_s"] for s in steps),
                    "target_tokens_per_step": statistics.median(s["tokens"] for s in steps),
                    "peak_rss_gib": max(r["peak_rss_gib"] for r in rs), "runs": len(rs), "measured_steps": len(steps)}
    import torch

    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
                                          "steps": args.steps, "rounds": args.rounds, "results": table,
                                          "runs": runs}, indent=1))
    base = table["rows"]["step_s"]
    print("| variant | s/step | tokens/s | peak RSS | speed-up |\n|---|---|---|---|---|")
    for v, t in table.items():
        print(f"| {v} | {t['step_s']:.2f} | {t['tokens_per_s']:.0f} | {t['peak_rss_gib']:.2f} GiB | "
              f"{base / t['step_s']:.2f}x |")


if __name__ == "__main__":
    main()
