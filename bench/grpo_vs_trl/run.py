"""aha vs TRL's GRPOTrainer on identical GRPO work, side by side, alternating. See README.md.

    .venv/bin/python bench/grpo_vs_trl/run.py [--steps 2] [--rounds 1] [--trl-venv DIR] [--only aha|trl]

Creates TRL's virtual environment on first use (torch 2.13.0 CPU, trl 1.16.0, datasets, and aha itself for
the shared rewards). Each run is a fresh process; its peak RSS comes from wait4. Every run does one warm-up
step and then --steps measured steps; medians are over the measured steps of all rounds. Writes
bench/results/grpo_vs_trl.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TRL_VERSION = "1.16.0"


def ensure_trl_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    probe = [str(py), "-c", f"import trl, aha, datasets; assert trl.__version__ == {TRL_VERSION!r}"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"[bench] creating TRL's environment in {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU build on this disk, as aha's venv has
    subprocess.run([*pip, f"trl=={TRL_VERSION}", "datasets"], check=True)
    subprocess.run([*pip, "-e", str(REPO)], check=True)
    return py


def matmul_tflops(dtype_name: str, n: int = 2048, reps: int = 8) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def read_gbps(mib: int = 256, reps: int = 5) -> float:
    """Memory read bandwidth (a sum over a large tensor): what bounds a decode step with few rows, which
    must stream every weight once."""
    import torch

    x = torch.randn(mib * 2 ** 20 // 4)
    x.sum()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    return x.numel() * 4 / statistics.median(times) / 1e9


def run_worker(cmd: list[str]) -> dict:
    """Run one worker process; its JSON line plus wall time and peak RSS (GiB, from wait4)."""
    import tempfile

    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}, peak RSS "
                           f"{usage.ru_maxrss / 2 ** 20:.2f} GiB after {time.perf_counter() - t:.0f} s):\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t
    result["peak_rss_gib"] = usage.ru_maxrss / 2 ** 20  # KiB on Linux
    return result


def summarize(runs: list[dict]) -> dict:
    """Medians over the measured steps (each run's first step is its warm-up) of all runs of one kind."""
    steps = [s for r in runs for s in r["steps"][1:]]
    step_s = statistics.median(s["seconds"] for s in steps)
    out = {"runs": len(runs), "measured_steps": len(steps), "step_s": step_s,
           "step_s_all": [round(s["seconds"], 2) for s in steps],
           "completion_tokens_per_step": statistics.median(s["completion_tokens"] for s in steps),
           "completion_tokens_per_s": sum(s["completion_tokens"] for s in steps) / sum(s["seconds"] for s in steps),
           "train_tokens_per_step": statistics.median(s.get("train_tokens", 0.0) for s in steps),
           "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
           "warmup_step_s": statistics.median(r["steps"][0]["seconds"] for r in runs)}
    if all("generate_s" in s for s in steps):
        for k in ("generate_s", "score_s", "logprob_s", "train_s", "train_tokens_padded"):
            out[k] = statistics.median(s[k] for s in steps)
        out["generate_tokens_per_s"] = sum(s["completion_tokens"] for s in steps) / sum(s["generate_s"] for s in steps)
        out["train_tokens_per_s"] = sum(s["train_tokens"] for s in steps) / sum(s["train_s"] for s in steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2, help="measured steps per run (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of [aha, TRL default, aha, TRL best, aha]")
    ap.add_argument("--trl-venv", default=str(Path(os.environ.get("AHA_HOME") or Path.home() / ".cache" / "aha")
                                              / "venvs" / f"trl-{TRL_VERSION}"))
    ap.add_argument("--only", choices=["aha", "trl"], help="run one side only (e.g. to measure an aha lever)")
    ap.add_argument("--trl", default="default,best",
                    help="TRL settings to run, in order (trl_worker.py: default, best, best_cb)")
    ap.add_argument("--aha", nargs="*", default=[], help="key=value overrides for all of aha's runs")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:key=value[,key=value]",
                    help="an aha run with one lever changed, interleaved with the others (repeatable)")
    ap.add_argument("--work", choices=["short", "r1_length"], default="short",
                    help="short: SmolLM2-135M, ~20-token completions; r1_length: Qwen2.5-Coder-0.5B on GSM8K, up to 512 "
                         "new tokens (work.py)")
    ap.add_argument("--out", help="results file (default bench/results/grpo_vs_trl.json, or grpo_vs_trl_r1_length.json)")
    ap.add_argument("--resummarize", metavar="RESULTS",
                    help="recompute a results file's summary (floors, ratios) with this script's code, run nothing")
    a = ap.parse_args()
    done = json.loads(Path(a.resummarize).read_text()) if a.resummarize else None
    # read by work.py, here and in every worker process (results files from before r1_length: short)
    os.environ["AHA_BENCH_WORK"] = done["work"].get("WORK", "short") if done else a.work
    sys.path.insert(0, str(HERE))
    import work

    if done:
        add_summary(done, work)
        done["summary_commit"] = head_commit()  # the code that summarised
        Path(a.resummarize).write_text(json.dumps(done, indent=2))
        print(table(done["summary"]))
        return
    a.out = a.out or str(REPO / "bench" / "results" / ("grpo_vs_trl.json" if a.work == "short"
                                                        else f"grpo_vs_trl_{a.work}.json"))
    import torch

    rates = {"float32": matmul_tflops("float32"), "bfloat16": matmul_tflops("bfloat16")}
    bandwidth = read_gbps()
    print(f"[bench] matmul TFLOP/s with {torch.get_num_threads()} threads: fp32 {rates['float32']:.3f}, "
          f"bf16 {rates['bfloat16']:.3f}; memory read {bandwidth:.1f} GB/s", flush=True)
    total = a.steps + 1
    aha_cmd = [sys.executable, str(HERE / "aha_worker.py"), str(total), *a.aha]
    variants = []
    for v in a.variant:
        name, _, kv = v.partition(":")
        variants.append((f"aha_{name}", [*aha_cmd, *kv.split(",")]))
    plan = []
    for _ in range(a.rounds):
        others = variants[:]
        if a.only != "aha":
            trl_py = str(ensure_trl_venv(Path(a.trl_venv)))
            trl = [(f"trl_{s}", [trl_py, str(HERE / "trl_worker.py"), str(total), s]) for s in a.trl.split(",")]
            others = trl if a.only == "trl" else [x for pair in zip(trl + [None] * len(variants),
                                                                    variants + [None] * len(trl)) for x in pair if x]
        if a.only == "trl":
            plan += others
            continue
        for other in others:  # aha, other, aha, other, ...: every comparison has aha runs on both sides
            plan += [("aha", aha_cmd), other]
        if not others:
            plan.append(("aha", aha_cmd))
    if a.only != "trl" and plan and plan[-1][0] != "aha":
        plan.append(("aha", aha_cmd))
    runs: dict[str, list[dict]] = {}
    failed: dict[str, list[str]] = {}
    partial = Path(a.out).with_suffix(".partial.jsonl")  # each run's result as it ends: hours are not lost to a crash
    partial.unlink(missing_ok=True)
    for name, cmd in plan:
        print(f"[bench] {name}: {total} steps ... {' '.join(cmd[2:])}", flush=True)
        try:
            r = run_worker(cmd)
        except RuntimeError as e:  # e.g. killed for memory: recorded, and the other runs go on
            failed.setdefault(name, []).append(str(e)[-2000:])
            print(f"[bench] {name}: FAILED {str(e)[-600:]}", flush=True)
            continue
        runs.setdefault(name, []).append(r)
        with partial.open("a") as f:
            f.write(json.dumps({"name": name, **r}) + "\n")
        print(f"[bench] {name}: steps {[round(s['seconds'], 1) for s in r['steps']]} s, "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    result = {"machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "python": platform.python_version(),
                          "torch": torch.__version__, "matmul_tflops": rates,
                          "read_gbps": bandwidth, "cpu_flags": cpu_flags()},
              "commit": head_commit(),
              "work": {k: getattr(work, k) for k in work.SETTINGS},
              "aha_overrides": a.aha, "runs": runs, "failed": failed,
              "date": time.strftime("%Y-%m-%d")}
    summary = add_summary(result, work)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    partial.unlink(missing_ok=True)  # the results file holds every run now
    print(table(summary))


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip()


def matmul_params(params: int, work) -> int:
    """The parameters a token's matmuls use: all but an untied input embedding (a lookup, no FLOPs, and a decode
    step reads only its token's row). A tied embedding is the LM head's matmul, so it stays."""
    cfg = json.loads((Path(work.model_dir()) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    return params - (0 if cfg.get("tie_word_embeddings", True) else cfg["vocab_size"] * cfg["hidden_size"])


def add_summary(result: dict, work) -> dict:
    """Medians per kind of run, the floors and the ratios, into `result["summary"]` (from its machine figures
    and runs, so that `--resummarize` can recompute a finished run's summary)."""
    runs, rates, bandwidth = result["runs"], result["machine"]["matmul_tflops"], result["machine"]["read_gbps"]
    summary = result["summary"] = {k: summarize(v) for k, v in runs.items()}
    if "aha" in summary:
        s = summary["aha"]
        n = matmul_params(runs["aha"][0]["params"], work)
        best = max(rates.values())
        steps = [st for r in runs["aha"] for st in r["steps"][1:]]
        # Training FLOP per token: forward 2N + backward 4N (input and weight gradients); with LoRA the frozen
        # weights get no gradient, so 4N (the adapters' own FLOPs are negligible at rank 16).
        lora = result["work"].get("LORA_RANK", 0)
        train_flop = (4 if lora else 6) * n
        weight_bytes = (2 if runs["aha"][0]["dtype"] == "bfloat16" else 4) * n  # what a decode step streams
        s["matmul_params"], s["train_flop_per_token"], s["decode_weight_bytes"] = n, train_flop, weight_bytes
        for label, rate in (("bf16", rates["bfloat16"]), ("best", best)):
            # Training floor: train_flop per token; the KL reference forward adds 2N more.
            s[f"train_floor_fraction_{label}"] = s["train_tokens_per_s"] / (rate * 1e12 / train_flop)
            # The same with the no-gradient passes: train_flop + 2N per token over the training and reference time.
            s[f"train_ref_floor_fraction_{label}"] = (sum(st["train_tokens"] for st in steps) * (train_flop + 2 * n)
                                                      / (rate * 1e12)
                                                      / sum(st["train_s"] + st["logprob_s"] for st in steps))
            # Decode bound per step: 2N FLOP per generated token at the matmul rate, or, when few rows are
            # left, every decode step streaming the decode weights once at the read bandwidth.
            bound = sum(max(st["completion_tokens"] * 2 * n / (rate * 1e12),
                            st["decode_steps"] * weight_bytes / (bandwidth * 1e9)) for st in steps)
            s[f"generate_bound_fraction_{label}"] = bound / sum(st["generate_s"] for st in steps)
        for k in [k for k in summary if k.startswith("trl_")]:
            s[f"speedup_vs_{k}"] = summary[k]["step_s"] / s["step_s"]
            s[f"speedup_per_token_vs_{k}"] = s["completion_tokens_per_s"] / summary[k]["completion_tokens_per_s"]
            s[f"rss_ratio_vs_{k}"] = s["peak_rss_gib"] / summary[k]["peak_rss_gib"]
    return summary


def cpu_flags() -> list[str]:
    """The CPU's bf16 matrix-unit flags (AMX, AVX512-BF16): which kind of machine a figure came from."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16")))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(summary: dict) -> str:
    lines = ["| run | s/step (median) | completion tok/s | peak RSS GiB | aha faster: per step | per completion token |",
             "|---|---|---|---|---|---|"]
    aha = summary.get("aha", {})
    for k, s in summary.items():
        step = f"{s['step_s'] / aha['step_s']:.2f}x" if aha and k != "aha" else ""
        tok = f"{aha['completion_tokens_per_s'] / s['completion_tokens_per_s']:.2f}x" if aha and k != "aha" else ""
        lines.append(f"| {k} | {s['step_s']:.1f} | {s['completion_tokens_per_s']:.1f} | {s['peak_rss_gib']:.2f} | "
                     f"{step} | {tok} |")
    if aha.get("train_s") is not None:
        lines.append("")
        lines.append(f"aha per step: generate {aha['generate_s']:.1f} s, score {aha['score_s']:.2f} s, reference "
                     f"{aha['logprob_s']:.1f} s, train {aha['train_s']:.1f} s; training {aha['train_tokens_per_s']:.0f} "
                     f"tok/s = {aha['train_floor_fraction_bf16']:.0%} of the bf16 floor "
                     f"({aha['train_floor_fraction_best']:.0%} of the fastest dtype's; with the reference pass "
                     f"{aha['train_ref_floor_fraction_best']:.0%}); generation {aha['generate_tokens_per_s']:.1f} "
                     f"tok/s = {aha['generate_bound_fraction_best']:.0%} of its bound (2N FLOP a token, or the "
                     "weights streamed once a decode step)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
