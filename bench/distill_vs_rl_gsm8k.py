"""Benchmark: distillation against RL for a small model on GSM8K (R1 §4.1, "distillation beats RL for small
models", at our scale). Qwen2.5-Coder-1.5B-Instruct answers GSM8K train problems, its verified answers train
Qwen2.5-Coder-0.5B-Instruct (`aha distill`, recipes/distill_qwen_gsm8k.yaml), all within a wall-time budget
(teacher sampling + student SFT); the student is then evaluated on the same 500-problem dev split by the same
protocol as the RL run of `bench/r1_zero_gsm8k.py` (greedy; pass@1 over k=4 at T=0.6, top-p 0.95; cons@4),
and compared with that run's committed results (bench/results/r1_zero_gsm8k.json).

    .venv/bin/python bench/distill_vs_rl_gsm8k.py [RECIPE] [--minutes M] [--sample-share F] [--resume]
        [--eval-limit N] [key=value ...]

--minutes: the budget for sampling + SFT (default: the RL run's training time, steps and in-training
evaluations); --sample-share: the part of it the teacher samples for (default 0.55; the SFT gets the rest, and
stops when its epochs are done or the budget is spent, whichever comes first). key=value pairs override the
distill recipe (e.g. sample.group_size=2). --resume continues a run stopped part-way (the time already spent
counts). Writes bench/results/distill_vs_rl_gsm8k.json (commit and CPU kind inside).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from r1_zero_cpu import cpu_kind, eval_settings, held_out, training_seconds  # noqa: E402  (the RL benchmark's evaluation)

from aha import runtime  # noqa: E402
from aha.config import load_config  # noqa: E402
from aha.io import atomic_write_text  # noqa: E402
from aha.runs import newest_model  # noqa: E402
from aha.stages import sample as sample_stage  # noqa: E402
from aha.stages import sft as sft_stage  # noqa: E402
from aha.stages.distill import DistillConfig  # noqa: E402
from aha.training.config import TrainConfig  # noqa: E402

RL_RECIPE = "recipes/r1_zero_qwen_gsm8k.yaml"
RL_RESULT = Path("bench/results/r1_zero_gsm8k.json")
NAME = "distill_vs_rl_gsm8k"


def flag(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def main(argv: list[str]) -> None:
    recipe = argv[0] if argv and argv[0].endswith(".yaml") else "recipes/distill_qwen_gsm8k.yaml"
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    resume = "--resume" in argv
    limit = int(flag(argv, "--eval-limit", "0"))
    rl = json.loads(RL_RESULT.read_text())
    minutes = float(flag(argv, "--minutes", str(rl["train_seconds"] / 60)))
    share = float(flag(argv, "--sample-share", "0.55"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    runtime.apply(runtime.load(RL_RECIPE, []))  # malloc=default, as the RL run
    cfg = load_config(DistillConfig, recipe, [f"out_dir=runs/bench_{NAME}", "sample.progress=false",
                                              "sft.log.progress=false", *overrides])
    out = Path(cfg.out_dir)
    clock = out / "clock.json"  # the budget spent by earlier parts of a resumed run
    spent = json.loads(clock.read_text()) if resume and clock.exists() else {"sample_s": 0.0, "sft_s": 0.0}
    out.mkdir(parents=True, exist_ok=True)

    def tick(key: str, t0: float) -> None:
        spent[key] += time.monotonic() - t0
        atomic_write_text(clock, json.dumps(spent))

    # 1. The teacher samples for its share of the budget (a stopped run continues with the next prompts).
    sample_cfg = dataclasses.replace(cfg.sample, model=cfg.teacher, out_dir=str(out / "sample"), resume=True,
                                     max_minutes=max(share * minutes - spent["sample_s"] / 60, 1e-9))
    if sample_cfg.max_minutes > 1e-6 and spent["sft_s"] == 0.0:
        t0 = time.monotonic()
        sample_stage.run(sample_cfg)
        tick("sample_s", t0)
    report = json.loads((out / "sample" / "report.json").read_text())
    print(f"teacher: {report['kept']} samples kept of {report['generated']} from {report['prompts']} prompts "
          f"in {spent['sample_s'] / 60:.1f} min", flush=True)

    # 2. The student's SFT on what was kept, for the rest of the budget.
    left = minutes - (spent["sample_s"] + spent["sft_s"]) / 60
    sft_cfg = dataclasses.replace(cfg.sft, model=cfg.student, input=str(out / "sample" / "samples.jsonl"),
                                  out_dir=str(out / "sft"), resume=spent["sft_s"] > 0, max_minutes=max(left, 1e-9))
    if left > 0:
        t0 = time.monotonic()
        sft_stage.run(sft_cfg)
        tick("sft_s", t0)
    student = str(newest_model(out / "sft"))
    sft_time = training_seconds(out / "sft")  # steps and validations, from the run's metrics.jsonl

    # 3. The student on the RL run's dev split, by its protocol (the RL recipe's template, lengths and seed).
    rl_cfg = load_config(TrainConfig, RL_RECIPE, [])
    settings = eval_settings(rl_cfg, 4, limit)
    kept_before = json.loads(Path("bench/results/r1_zero_gsm8k_before.json").read_text())
    same_eval = kept_before["settings"] == settings
    after = held_out(student, rl_cfg, out / "eval_student", 4, limit)

    def diff(a: dict, b: dict) -> dict:  # unpaired: the RL run's per-problem samples are not kept in the project
        return {"pass@1": a["pass@1"] - b["pass@1"], "se": (a["pass@1_se"] ** 2 + b["pass@1_se"] ** 2) ** 0.5}

    result = {
        "commit": commit, "cpu": cpu_kind(), "recipe": recipe, "overrides": overrides,
        "budget_minutes": minutes, "sample_share": share,
        "teacher": cfg.teacher, "student": cfg.student,
        "sample": {"seconds": spent["sample_s"], **{k: report[k] for k in
                   ("prompts", "prompts_with_kept", "generated", "kept", "dropped")}},
        "sft": {"steps": sft_time["last_step"], "seconds": sft_time["total_s"], "wall_seconds": spent["sft_s"]},
        "distill_seconds": spent["sample_s"] + spent["sft_s"],
        "eval_problems": after["problems"], "same_evaluation_as_rl": same_eval,
        "before": kept_before["before"], "rl": {"train_seconds": rl["train_seconds"], "steps": rl["steps"],
                                                "commit": rl["commit"], "after": rl["after"]},
        "distilled": after,
        "distilled_minus_before": diff(after, kept_before["before"]),
        "distilled_minus_rl": diff(after, rl["after"]),
    }
    atomic_write_text(Path(f"bench/results/{NAME}.json"), json.dumps(result, indent=2) + "\n")
    row = "| {} | {:.0f} min | {:.3f} | {:.3f} ± {:.3f} | {:.3f} | {:.0f} |"
    print("| model | wall time | greedy | pass@1 (k=4) | cons@4 | mean length |")
    print("|---|---|---|---|---|---|")
    b = kept_before["before"]
    print(row.format("before", 0, b["greedy_accuracy"], b["pass@1"], b["pass@1_se"], b["cons@4"], b["length_mean"]))
    a = rl["after"]
    print(row.format(f"RL ({rl['steps']} steps)", rl["train_seconds"] / 60, a["greedy_accuracy"], a["pass@1"],
                     a["pass@1_se"], a["cons@4"], a["length_mean"]))
    print(row.format("distilled", result["distill_seconds"] / 60, after["greedy_accuracy"], after["pass@1"],
                     after["pass@1_se"], after["cons@4"], after["length_mean"]))


if __name__ == "__main__":
    main(sys.argv[1:])
