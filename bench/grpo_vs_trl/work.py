"""The work both trainers do, defined once: model, prompts, rewards and GRPO settings.

Imported by `aha_worker.py` (aha's venv) and `trl_worker.py` (TRL's venv, which has aha installed too, so
that both score completions with the same reward code). Two works, chosen by `AHA_BENCH_WORK` (run.py's
`--work`):

- `short` (the default): SmolLM2-135M-Instruct on two-term chain_sum, a worked example and `<think>` prefilled,
  ~20-token completions after ~105-token prompts (90 of them shared by every prompt), full fine-tuning.
- `r1_length`: Qwen2.5-Coder-0.5B-Instruct on GSM8K train problems with the chat template and R1 system prompt,
  no worked example, up to 512 new tokens (answers run ~200-300 tokens), R1-Zero's two rules, LoRA rank 16 for
  both trainers (the recipe `recipes/r1_zero_qwen_gsm8k.yaml` trains with; full fine-tuning of the 0.5B with a
  reference does not fit 24 GB at these lengths), the KL reference being the base model with the adapters off.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

WORK = os.environ.get("AHA_BENCH_WORK", "short")
if WORK not in ("short", "r1_length"):
    raise SystemExit(f"AHA_BENCH_WORK: unknown work {WORK!r} (short, r1_length)")
PROMPTS_PER_STEP = 8
GROUP_SIZE = 8
BETA = 0.04
MU = 1
LR = 1e-6
TEMPERATURE = 1.0
TOP_P = 1.0
if WORK == "short":
    MODEL = "smollm2-135m-instruct"
    TASK = "chain_sum"
    TASK_ARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
    N_PROMPTS = 256
    MAX_NEW_TOKENS = 128
    REWARD_WEIGHTS = {"accuracy": 1.0, "accuracy_lenient": 0.5, "format_partial": 0.5}
    TEMPLATE = "auto"
    FEW_SHOT = True
    PREFILL = "<think>"
    LORA_RANK = 0
    AHA_SETTINGS: list[str] = []  # aha's defaults
else:
    MODEL = "qwen2.5-coder-0.5b-instruct"
    # GSM8K's train file (benchmarks read ../shared's copy in place; AHA_BENCH_GSM8K points elsewhere)
    TASK = os.environ.get("AHA_BENCH_GSM8K") or str(Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k"
                                                    / "train.jsonl")
    TASK_ARGS = {}
    N_PROMPTS = 256  # the file's first 256 problems
    MAX_NEW_TOKENS = 512
    REWARD_WEIGHTS = {"accuracy": 1.0, "format": 0.25}
    TEMPLATE = "chat"
    FEW_SHOT = False
    PREFILL = ""
    LORA_RANK = 16
    LR = 2e-5  # the recipe's LoRA rate
    # aha as recipes/r1_zero_qwen_gsm8k.yaml runs it: one group a micro-batch, glibc's malloc as it comes (the
    # tuned heap grew with every micro-batch of a new size at these lengths)
    AHA_SETTINGS = ["optim.micro_batch_size=8", "runtime.malloc=default"]
LORA_ALPHA = 32.0  # aha's default (update = B A x alpha / rank), every linear layer but the LM head
MAX_NEW_TOKENS = int(os.environ.get("AHA_BENCH_MAX_NEW_TOKENS", MAX_NEW_TOKENS))  # smaller only for smoke tests
SETTINGS = ("WORK", "MODEL", "TASK", "TASK_ARGS", "N_PROMPTS", "PROMPTS_PER_STEP", "GROUP_SIZE", "MAX_NEW_TOKENS",
            "BETA", "MU", "LR", "TEMPERATURE", "TOP_P", "REWARD_WEIGHTS", "TEMPLATE", "FEW_SHOT", "PREFILL",
            "LORA_RANK", "AHA_SETTINGS")
"""What the results file records of the work."""


def model_dir() -> str:
    """The safetensors folder both trainers load (converted from the packaged GGUF once). AHA_BENCH_MODEL
    replaces it (a tiny model folder, to smoke-test the benchmark in seconds)."""
    from aha.models import resolve

    return os.environ.get("AHA_BENCH_MODEL") or str(resolve(MODEL))


def task_config():
    from aha.data.tasks import TaskConfig

    return TaskConfig(size=N_PROMPTS, eval_size=0, seed=0, args=TASK_ARGS)


def task() -> str:
    """What both trainers load: the generator's name, or a copy of the file's first N_PROMPTS rows (so that aha's
    trainer, which draws from the whole task, draws from the same problems as TRL's)."""
    if not TASK.endswith(".jsonl"):
        return TASK
    import tempfile

    lines = Path(TASK).read_text(encoding="utf-8").splitlines()[:N_PROMPTS]
    out = Path(tempfile.gettempdir()) / f"aha_bench_{WORK}_{N_PROMPTS}.jsonl"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(out)


def examples():
    from aha.data.tasks import load_task

    name = task()
    rows = load_task(name, task_config(), "train")
    return [dataclasses.replace(e, id=e.id or f"{name}:{i}") for i, e in enumerate(rows)]


def prompt_text(question: str, tokenizer) -> str:
    """The full prompt (template, system prompt, worked example, prefill) as text."""
    from aha.data.templates import render_prompt

    return render_prompt(question, tokenizer, TEMPLATE, "", FEW_SHOT, PREFILL)


def reward_set():
    from aha.rewards import RewardSet
    from aha.rewards.config import RewardsConfig

    return RewardSet(RewardsConfig(weights=dict(REWARD_WEIGHTS)))
