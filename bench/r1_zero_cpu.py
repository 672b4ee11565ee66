"""Benchmark: the README's main job (R1-Zero on SmolLM2-135M-Instruct, CPU) with held-out accuracy
before and after training, greedy and pass@1 (k samples at T=0.6, top-p 0.95), plus the curves.

    .venv/bin/python bench/r1_zero_cpu.py [RECIPE] [key=value ...] [--result NAME] [--before-only]
        [--hours H] [--resume] [--train-only] [--eval-limit N]

Writes bench/results/NAME.json (default r1_zero_cpu) with the commit and the CPU kind inside, and the run's
PNG figures; prints a Markdown table for bench/README.md. Extra key=value pairs override the training
recipe (e.g. steps=30). Accuracy is the binary verdict (aha's `accuracy` reward).

A run longer than one sitting: `--hours H` caps the training's wall time (all parts together, from each step's
`time/step_s` and evaluation's `time/eval_s` in the run's metrics.jsonl), `--resume` continues the run folder
from its newest checkpoint (Ctrl-C saves one), `--train-only` stops before the final evaluation. `--eval-limit N`
evaluates the first N problems of the held-out split only (it stays the split the training never sees), for models
whose 5 x 512-token completions per problem would not fit the sitting; the results say how many problems.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from aha import runtime
from aha.config import load_config
from aha.io import atomic_write_text
from aha.models import fast_bf16
from aha.plot import plot_run
from aha.rewards.extract import answer_tag_content, last_boxed
from aha.stages.evaluate import EvalConfig, evaluate
from aha.training.config import TrainConfig
from aha.training.grpo_loop import train


def in_format_accuracy(samples_jsonl: Path) -> tuple[float, float]:
    """(share of completions in the strict format, accuracy among those): whether a gain is format or answers."""
    rows = [json.loads(line) for line in samples_jsonl.read_text().splitlines()]
    pairs = [(f >= 1.0, c >= 1.0) for r in rows for f, c in zip(r["format"], r["correct"])]
    kept = [c for f, c in pairs if f]
    return len(kept) / max(len(pairs), 1), (sum(kept) / len(kept) if kept else 0.0)


def answer_sources(samples_jsonl: Path) -> dict:
    """Where each sampled completion's answer came from (the `<answer>` tags, else a `\\boxed{}`, else none) and
    the accuracy within each: a gain from more tagged answers at the same accuracy is format-learning, a
    gain within the tagged ones is better answers."""
    rows = [json.loads(line) for line in samples_jsonl.read_text().splitlines()]
    seen = {"tagged": [], "boxed": [], "none": []}
    for r in rows:
        for text, correct in zip(r["completions"], r["correct"]):
            source = ("tagged" if answer_tag_content(text) is not None else
                      "boxed" if last_boxed(text) is not None else "none")
            seen[source].append(correct >= 1.0)
    n = max(sum(len(v) for v in seen.values()), 1)
    return {k: {"share": len(v) / n, "accuracy": (sum(v) / len(v) if v else 0.0)} for k, v in seen.items()}


def correct_per_problem(samples_jsonl: Path) -> dict[str, int]:
    """How many of each problem's k samples were correct, by problem id: kept in the results so that a later
    run can pair its problems with these after the run folder is gone."""
    rows = [json.loads(line) for line in samples_jsonl.read_text().splitlines()]
    return {r["id"]: sum(c >= 1.0 for c in r["correct"]) for r in rows}


def paired_gain(before: dict, after: dict) -> dict:
    """pass@1 after minus before. Paired problem by problem when both sides kept their per-problem counts (the
    same problems, k samples each): the mean difference with its standard error (smaller than either side's own
    when problems differ in difficulty more than the runs do), and how many problems went up and down. Without
    them, the unpaired difference with sqrt(se_before^2 + se_after^2)."""
    b, a = before.get("correct_per_problem"), after.get("correct_per_problem")
    same_k = before.get("samples") == after.get("samples")
    ids = sorted(b.keys() & a.keys()) if b and a and same_k else []
    if len(ids) < 2:
        return {"paired": False, "problems": after["problems"], "pass@1_gain": after["pass@1"] - before["pass@1"],
                "pass@1_gain_se": (before["pass@1_se"] ** 2 + after["pass@1_se"] ** 2) ** 0.5}
    k = after["samples"]
    diffs = [(a[i] - b[i]) / k for i in ids]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return {"paired": True, "problems": n, "pass@1_gain": mean, "pass@1_gain_se": (var / n) ** 0.5,
            "problems_up": sum(d > 0 for d in diffs), "problems_down": sum(d < 0 for d in diffs)}


def evaluated(cfg: EvalConfig) -> dict:
    """`evaluate(cfg)`'s summary, or, for greedy decoding, the one already in cfg.out_dir when it is the same
    evaluation (model, task, split, length): a benchmark cut short keeps what it finished. Greedy answers do not
    depend on the sampler's random numbers; a reused summary says `reused: true`."""
    path = Path(cfg.out_dir) / "summary.json"
    if path.exists():
        kept = json.loads(path.read_text())[0]
        want = {"model": cfg.model[0], "task": cfg.task, "split": cfg.split, "samples": cfg.samples,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}
        same_size = kept.get("limit", 0) == cfg.limit  # a summary of the first N problems is not one of all
        if all(kept.get(k) == v for k, v in want.items()) and same_size and cfg.temperature <= 0:
            print(f"reusing {path} (the same greedy evaluation)")
            return {**kept, "reused": True}
    return evaluate(cfg)[0]


def held_out(model: str, cfg: TrainConfig, out: Path, samples: int, limit: int = 0) -> dict:
    """The held-out split the run trained without (`split=eval`), greedy and by the paper's protocol."""
    common = dict(task=cfg.task, data=cfg.data, split="eval", max_new_tokens=cfg.rollout.max_new_tokens,
                  template=cfg.template,
                  few_shot=cfg.few_shot, prefill=cfg.prefill,
                  system_prompt=cfg.system_prompt, progress=False, dtype="auto", seed=cfg.seed, limit=limit)
    greedy = evaluated(EvalConfig(model=[model], samples=1, temperature=0.0, out_dir=str(out / "greedy"), **common))
    sampled = evaluated(EvalConfig(model=[model], samples=samples, temperature=0.6, top_p=0.95,
                                   out_dir=str(out / "sampled"), **common))
    return {"problems": greedy["problems"], "greedy_accuracy": greedy["pass@1"], "greedy_format_rate": greedy["format_rate"],
            "pass@1": sampled["pass@1"], "pass@1_se": sampled["pass@1_se"], f"cons@{samples}": sampled[f"cons@{samples}"],
            "format_rate": sampled["format_rate"], "accuracy_in_format": in_format_accuracy(out / "sampled" / "samples.jsonl")[1],
            "length_mean": sampled["length_mean"], "truncated": sampled["truncated"],
            "reflection_per_1k_tokens": sampled["reflection_per_1k_tokens"],
            "answer_sources": answer_sources(out / "sampled" / "samples.jsonl"), "samples": samples,
            "correct_per_problem": correct_per_problem(out / "sampled" / "samples.jsonl"),
            "eval_seconds": greedy["seconds"] + sampled["seconds"], "greedy_seconds": greedy["seconds"],
            "sampled_seconds": sampled["seconds"], "sampled_tokens_per_s": sampled["tokens_per_s"],
            "greedy_reused": bool(greedy.get("reused"))}


def training_seconds(run_dir: Path) -> dict:
    """The wall time a run's steps and its in-training evaluations took, summed over every part of a run that
    was stopped and resumed (the rows metrics.jsonl keeps: a resumed run drops the rows after its checkpoint)."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    steps = sum(r.get("time/step_s", 0.0) for r in rows)
    evals = sum(r.get("time/eval_s", 0.0) for r in rows)
    return {"steps_s": steps, "evals_s": evals, "total_s": steps + evals,
            "last_step": max((r["step"] for r in rows), default=0)}


def cpu_kind() -> str:
    return "with bf16 units (AMX/AVX512-BF16)" if fast_bf16() else "without bf16 units"


def eval_settings(cfg: TrainConfig, samples: int, limit: int = 0) -> dict:
    """What the held-out evaluation depends on: the same settings give the same numbers for the same model."""
    task = Path(cfg.task)
    digest = hashlib.sha256(task.read_bytes()).hexdigest() if task.is_file() else cfg.task
    return {"model": cfg.model, "task": digest, "data": dataclasses.asdict(cfg.data), "template": cfg.template,
            "few_shot": cfg.few_shot, "prefill": cfg.prefill, "system_prompt": cfg.system_prompt,
            "max_new_tokens": cfg.rollout.max_new_tokens, "seed": cfg.seed, "samples": samples,
            **({"limit": limit} if limit else {}),  # absent for the whole split, as in files written before it
            "cpu": cpu_kind()}  # dtype=auto: bf16 on CPUs with bf16 units, fp32 elsewhere


def main(argv: list[str]) -> None:
    recipe = argv[0] if argv and argv[0].endswith(".yaml") else "recipes/r1_zero_smollm2.yaml"
    name = argv[argv.index("--result") + 1] if "--result" in argv else "r1_zero_cpu"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    overrides = [a for a in argv if "=" in a] + (["resume=true"] if "--resume" in argv else [])
    hours = float(argv[argv.index("--hours") + 1]) if "--hours" in argv else 0.0
    limit = int(argv[argv.index("--eval-limit") + 1]) if "--eval-limit" in argv else 0
    runtime.apply(runtime.load(recipe, overrides))  # the recipe's process settings, as `aha train` applies them
    cfg = load_config(TrainConfig, recipe, ["out_dir=runs/bench_r1_zero", "log.progress=false", *overrides])
    out = Path(cfg.out_dir)
    if hours:  # what is left of the budget after the parts already run
        spent = training_seconds(out)["total_s"] if cfg.resume else 0.0
        left = hours * 60 - spent / 60
        if left <= 0 and "--train-only" in argv:
            print(f"the {hours:g} h training budget is spent ({spent / 3600:.2f} h)")
            return
        cfg = dataclasses.replace(cfg, max_minutes=max(left, 1e-9))
    samples = 4
    # The base model's evaluation does not depend on the training: `--before-only` runs it alone and keeps it in
    # bench/results/NAME_before.json, which a later full run reuses when the evaluation is the same (model, task
    # file, split, template, lengths, seed), so that training and the final evaluation fit in one sitting.
    settings = eval_settings(cfg, samples, limit)
    before_file = Path(f"bench/results/{name}_before.json")
    kept = json.loads(before_file.read_text()) if before_file.exists() else None
    before_commit = commit
    if kept and kept.get("settings") == settings and "--before-only" not in argv:
        before, before_commit = kept["before"], kept["commit"]
        print(f"before: reusing {before_file} (commit {kept['commit']}, the same evaluation)")
    else:
        before = held_out(cfg.model, cfg, out / "eval_before", samples, limit)
        atomic_write_text(before_file, json.dumps({"commit": commit, "cpu": cpu_kind(), "settings": settings,
                                                   "before": before}, indent=2) + "\n")
        if "--before-only" in argv:
            print(json.dumps(before, indent=2))
            return
    if not (hours and cfg.max_minutes <= 1e-9):  # a spent budget goes straight to the final evaluation
        run_dir = train(cfg)
    else:
        run_dir = out
    if "--train-only" in argv:
        print(json.dumps(training_seconds(run_dir)))
        return
    spent = training_seconds(run_dir)
    train_s = spent["total_s"]
    from aha.training.checkpoint import latest_checkpoint

    _, last = latest_checkpoint(run_dir)
    after = held_out(str(last), cfg, out / "eval_after", samples, limit)
    before_samples = out / "eval_before" / "sampled" / "samples.jsonl"
    if before_samples.exists():  # a kept before-evaluation of an older commit: what it did not keep
        before.setdefault("answer_sources", answer_sources(before_samples))
        before.setdefault("samples", samples)
        before.setdefault("correct_per_problem", correct_per_problem(before_samples))
    gain = paired_gain(before, after)
    figures = [str(p) for p in plot_run(str(run_dir))]
    combined = Path(run_dir) / "r1_zero.png"  # accuracy, length, reflection: committed with the results
    if str(combined) in figures:
        shutil.copyfile(combined, f"bench/results/{name}.png")
        figures.append(f"bench/results/{name}.png")
    result = {"commit": commit, "cpu": cpu_kind(),
              "recipe": recipe, "overrides": overrides, "steps": spent["last_step"], "train_seconds": train_s,
              "train_step_seconds": spent["steps_s"], "train_eval_seconds": spent["evals_s"], "hours_budget": hours,
              "eval_problems": after["problems"], "before_commit": before_commit, "before": before, "after": after,
              "paired": gain, "figures": figures}
    atomic_write_text(Path(f"bench/results/{name}.json"), json.dumps(result, indent=2) + "\n")
    print(f"| | greedy acc | pass@1 (k={samples}, T=0.6) | cons@{samples} | mean length |")
    print("|---|---|---|---|---|")
    for name, r in (("before", before), ("after", after)):
        print(f"| {name} | {r['greedy_accuracy']:.3f} | {r['pass@1']:.3f} ± {r['pass@1_se']:.3f} | "
              f"{r[f'cons@{samples}']:.3f} | {r['length_mean']:.1f} |")
    print(f"training: {spent['last_step']} steps in {train_s / 60:.1f} min")
    how = (f"paired over {gain['problems']} problems" if gain["paired"] else
           "unpaired (the before-evaluation kept no per-problem counts)")
    moved = f" ({gain['problems_up']} up, {gain['problems_down']} down)" if gain["paired"] else ""
    print(f"pass@1 gain, {how}: {gain['pass@1_gain']:+.3f} ± {gain['pass@1_gain_se']:.3f}{moved}")


if __name__ == "__main__":
    main(sys.argv[1:])
