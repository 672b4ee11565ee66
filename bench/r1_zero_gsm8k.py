"""Benchmark: R1-Zero on GSM8K with Qwen2.5-Coder-0.5B-Instruct on the CPU (recipes/r1_zero_qwen_gsm8k.yaml):
the 500-problem dev split before and after by the paper's protocol (greedy; pass@1 over k=4 at T=0.6,
top-p 0.95; cons@4; strict-format rate and the accuracy among in-format completions, to tell format-learning
from better answers), the training time and the R1-Zero figures (accuracy, response length, reflection).

    .venv/bin/python bench/r1_zero_gsm8k.py [RECIPE] [task=PATH/gsm8k_train.jsonl] [key=value ...] [--before-only]
        [--resume] [--train-only] [--hours H] [--eval-limit N]

RECIPE defaults to recipes/r1_zero_qwen_gsm8k.yaml (results: r1_zero_gsm8k.json); another recipe, such as
recipes/r1_zero_gemma3_gsm8k.yaml (a base model), writes results under its own name.

The training has a 3-hour wall-time budget (`--hours`, default 3; steps and in-training evaluations, over every
part of a run stopped with Ctrl-C and continued with `--resume`).

Writes bench/results/r1_zero_gsm8k.json (commit and CPU kind inside) and the run's figures. The GSM8K file
defaults to ../shared/data/gsm8k/train.jsonl; it is read in place, never copied into the project.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from r1_zero_cpu import main  # noqa: E402  (the same before/train/after/figures protocol)

if __name__ == "__main__":
    args = sys.argv[1:]
    recipe = args.pop(0) if args and args[0].endswith(".yaml") else "recipes/r1_zero_qwen_gsm8k.yaml"
    name = "r1_zero_gsm8k" if recipe.endswith("r1_zero_qwen_gsm8k.yaml") else Path(recipe).stem
    hours = [] if "--hours" in args else ["--hours", "3"]
    main([recipe, f"out_dir=runs/bench_{name}", *args, *hours, *([] if "--result" in args else ["--result", name])])
