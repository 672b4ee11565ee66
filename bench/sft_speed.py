"""`aha sft` speed on SmolLM2-135M-Instruct: the default (a micro-batch's packed rows run as one row with
attention per sample and the LM head on target positions only, tuned malloc, the embedding gradient once a
step) against the default with glibc's malloc as it comes, and against what `aha sft` did before (`rows`:
padded rows with transformers' block mask and full logits, glibc's malloc, the embedding gradient per
micro-batch), alternating.

    .venv/bin/python bench/sft_speed.py [--steps 3] [--rounds 2] [--data ../shared/data/gsm8k/train.jsonl]

Data: GSM8K training problems as R1-style cold-start samples (the worked solution inside <think>, the final
number inside <answer>), `aha sft`'s defaults (the chat template with the R1 system prompt, max_length
1,024, 16 samples a step, fp32 on a CPU without fast bf16). Each
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
    "malloc_default": ["runtime.malloc=default"],
    # what `aha sft` did before: padded rows with transformers' block mask (see worker), glibc's malloc as it
    # comes, the embedding gradient per micro-batch
    "rows": ["runtime.malloc=default", "optim.embedding_grad_once=false"],
}
TRL = ("trl_default", "trl_best")


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
    from aha.training import sft_loop
    from aha.training.sft_loop import SFTTrainer

    if variant == "rows":  # the previous code path: padded rows, the block mask built by transformers
        sft_loop.per_sample_attention = lambda model: False
    from aha import runtime

    runtime.apply(runtime.load(None, VARIANTS[variant]))  # as `aha sft` applies it
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


def trl_worker(setting: str, steps: int, data: str, model: str) -> None:
    """TRL's SFTTrainer on the same rendered samples (prompt and completion text as aha renders them): packed
    (best-fit decreasing, padding-free) into rows of 1,024 tokens, 4 rows an optimizer step, loss on the
    completion only (TRL's default for prompt-completion data), fp32. default: TRL's gradient checkpointing
    on; best: off."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in Path(data).read_text().splitlines()]
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="trl_sft_speed_"), use_cpu=True, report_to="none",
                     save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, max_steps=steps + 1,
                     learning_rate=1e-5, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                     packing=True, max_length=1024, bf16=False, gradient_checkpointing=(setting == "trl_default"),
                     model_init_kwargs={"dtype": torch.float32})

    sys.path.insert(0, str(HERE / "grpo_vs_trl"))
    from step_timer import step_timer

    timer = step_timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[timer])
    trainer.train()
    rows, prev = [], 0.0
    for t in timer.rows:  # TRL logs the tokens seen cumulatively
        seen = float(t["logs"].get("num_tokens", prev))
        rows.append({"time/step_s": t["seconds"], "sample_tokens": seen - prev, "tokens": None,
                     "loss": t["logs"].get("loss")})
        prev = seen
    print(json.dumps({"variant": setting, "steps": rows}))


def rendered(samples: Path, out: Path) -> None:
    """The samples as aha renders them (prompt text with the chat template, target text with its end of
    sequence), for TRL."""
    from aha.config import load_config
    from aha.models import load_tokenizer, resolve
    from aha.stages import sft

    cfg = load_config(sft.SFTConfig, None, [f"input={samples}"])
    tok = load_tokenizer(str(resolve("smollm2-135m-instruct")))
    texts = [sft.render_sample(s, tok, cfg) for s in sft.read_samples(str(samples))]
    out.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in texts))


def run_one(variant: str, steps: int, data: str, python: str = sys.executable, model: str = "",
            extra: tuple[str, ...] = ()) -> dict:
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([python, __file__, "--worker", variant, "--steps", str(steps), "--data", data,
                                 "--model", model, *extra], stdout=out, stderr=err, cwd=REPO, text=True)
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
    ap.add_argument("--trl-venv", help="also run TRL's SFTTrainer from this virtual environment (the one "
                    "bench/grpo_vs_trl/run.py creates)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:key=value[,key=value]",
                    help="another aha run with these overrides")
    ap.add_argument("--only", nargs="*", help="run only these (variant names, trl_default, trl_best)")
    ap.add_argument("--worker")
    ap.add_argument("--model", default="")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "sft_speed.json"))
    args = ap.parse_args()
    for spec in args.variant:
        name, _, overrides = spec.partition(":")
        VARIANTS[name] = [o for o in overrides.split(",") if o]
    if args.worker in TRL:
        return trl_worker(args.worker, args.steps, args.data, args.model)
    if args.worker:
        return worker(args.worker, args.steps, args.data)
    folder = Path(tempfile.mkdtemp(prefix="aha_sft_speed_"))
    samples, texts = folder / "gsm8k_r1.jsonl", folder / "rendered.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_samples(Path(args.data), args.samples)))
    kinds = [v for v in VARIANTS if not args.only or v in args.only]
    if args.trl_venv:
        sys.path.insert(0, str(HERE / "grpo_vs_trl"))
        from run import ensure_trl_venv

        trl_python = str(ensure_trl_venv(Path(args.trl_venv)))
        rendered(samples, texts)
        from aha.models import resolve

        model = str(resolve("smollm2-135m-instruct"))
        kinds += [t for t in TRL if not args.only or t in args.only]
    runs: dict[str, list[dict]] = {v: [] for v in kinds}
    for _ in range(args.rounds):
        for v in kinds:  # alternating
            r = (run_one(v, args.steps, str(texts), trl_python, model) if v in TRL
                 else run_one(v, args.steps, str(samples), extra=tuple(f"--variant={x}" for x in args.variant)))
            runs[v].append(r)
            print(f"[bench] {v}: steps {[round(s['time/step_s'], 2) for s in r['steps']]} s, "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    table = {}
    for v, rs in runs.items():
        steps = [s for r in rs for s in r["steps"][1:]]  # the first step of each run is its warm-up
        table[v] = {"step_s": statistics.median(s["time/step_s"] for s in steps),
                    "step_s_all": [round(s["time/step_s"], 2) for s in steps],
                    "tokens_per_s": sum(s["sample_tokens"] for s in steps) / sum(s["time/step_s"] for s in steps),
                    "sample_tokens_per_step": statistics.median(s["sample_tokens"] for s in steps),
                    "peak_rss_gib": max(r["peak_rss_gib"] for r in rs), "runs": len(rs), "measured_steps": len(steps)}
    import torch

    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
                                          "steps": args.steps, "rounds": args.rounds, "results": table,
                                          "runs": runs}, indent=1))
    base = (table.get("default") or next(iter(table.values())))["tokens_per_s"]
    print("| run | s/step | tokens/step | tokens/s | peak RSS | aha's default faster per token |\n|---|---|---|---|---|---|")
    for v, t in table.items():
        print(f"| {v} | {t['step_s']:.2f} | {t['sample_tokens_per_step']:.0f} | {t['tokens_per_s']:.0f} | "
              f"{t['peak_rss_gib']:.2f} GiB | {base / t['tokens_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
