"""The work both trainers do, defined once: model, prompts, rewards and GRPO settings.

Imported by `aha_worker.py` (aha's venv) and `trl_worker.py` (TRL's venv, which has aha installed too, so
that both score completions with the same reward code).
"""

from __future__ import annotations

import dataclasses
import os

MODEL = "smollm2-135m-instruct"
TASK = "chain_sum"
TASK_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
N_PROMPTS = 256
PROMPTS_PER_STEP = 8
GROUP_SIZE = 8
MAX_NEW_TOKENS = int(os.environ.get("AHA_BENCH_MAX_NEW_TOKENS", "128"))  # smaller only for smoke tests
BETA = 0.04
MU = 1
LR = 1e-6
TEMPERATURE = 1.0
TOP_P = 1.0
REWARD_WEIGHTS = {"accuracy": 1.0, "accuracy_lenient": 0.5, "format_partial": 0.5}
FEW_SHOT = True
PREFILL = "<think>"


def model_dir() -> str:
    """The safetensors folder both trainers load (converted from the packaged GGUF once). AHA_BENCH_MODEL
    replaces it (a tiny model folder, to smoke-test the benchmark in seconds)."""
    from aha.models import resolve

    return os.environ.get("AHA_BENCH_MODEL") or str(resolve(MODEL))


def examples():
    from aha.data.tasks import TaskConfig, load_task

    rows = load_task(TASK, TaskConfig(size=N_PROMPTS, eval_size=0, seed=0, args=TASK_ARGS), "train")
    return [dataclasses.replace(e, id=e.id or f"{TASK}:{i}") for i, e in enumerate(rows)]


def prompt_text(question: str, tokenizer) -> str:
    """The full prompt (chat template, worked example, prefilled <think>) as text."""
    from aha.data.templates import render_prompt

    return render_prompt(question, tokenizer, "auto", "", FEW_SHOT, PREFILL)


def reward_set():
    from aha.rewards import RewardSet
    from aha.rewards.config import RewardsConfig

    return RewardSet(RewardsConfig(weights=dict(REWARD_WEIGHTS)))
