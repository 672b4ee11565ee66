"""One TRL GRPOTrainer run on the work of `work.py`; prints one JSON line with per-step timings.
Runs in TRL's own virtual environment (see run.py), which also has aha installed for the shared rewards.

    python bench/grpo_vs_trl/trl_worker.py STEPS SETTING      # SETTING: default | best | best_cb

default: TRL's defaults as users run them on CPU, in fp32 (gradient checkpointing on).
best:    no gradient checkpointing, and bf16 autocast only where this CPU computes bf16 fast (as aha decides).
best_cb: best, generating with transformers' continuous batching (`use_transformers_continuous_batching`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import work  # noqa: E402
from step_timer import step_timer  # noqa: E402


def main(argv: list[str]) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from aha.data.templates import with_prefill
    from aha.models import fast_bf16
    from aha.rollout.base import Completion

    steps, setting = int(argv[0]), argv[1]
    path = work.model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    examples = work.examples()
    by_id = {e.id: e for e in examples}
    data = Dataset.from_list([{"prompt": work.prompt_text(e.prompt, tok), "id": e.id} for e in examples])
    rewards = work.reward_set()
    rewards.prepare(examples[:1])

    def aha_reward(prompts, completions, completion_ids, id, **kwargs):  # noqa: A002 (TRL passes columns by name)
        comps = with_prefill([Completion(text=c, completion_ids=tuple(ids)) for c, ids in zip(completions, completion_ids)],
                             work.PREFILL)
        totals, _ = rewards.score(comps, [by_id[i] for i in id])
        return [float(t) for t in totals]

    bf16 = setting.startswith("best") and fast_bf16("cpu")
    extra = {"use_transformers_continuous_batching": True} if setting == "best_cb" else {}
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_vs_aha_"), use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0, max_steps=steps, learning_rate=work.LR,
        per_device_train_batch_size=work.GROUP_SIZE, gradient_accumulation_steps=work.PROMPTS_PER_STEP,
        num_generations=work.GROUP_SIZE, max_completion_length=work.MAX_NEW_TOKENS, beta=work.BETA,
        num_iterations=work.MU, temperature=work.TEMPERATURE, top_p=work.TOP_P,
        bf16=bf16, gradient_checkpointing=(setting == "default"), model_init_kwargs={"dtype": torch.float32},
        **extra)

    timer = step_timer()
    t0 = time.perf_counter()
    peft = None
    if work.LORA_RANK:  # the same adapters as aha's lora.rank: every linear layer but the LM head
        from peft import LoraConfig

        peft = LoraConfig(r=work.LORA_RANK, lora_alpha=work.LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=path, reward_funcs=aha_reward, args=args, train_dataset=data, processing_class=tok,
                          callbacks=[timer], peft_config=peft)
    setup_s = time.perf_counter() - t0
    trainer.train()
    rows, prev = [], 0.0
    for t in timer.rows:  # TRL logs num_tokens (prompt + completion tokens seen) cumulatively
        logs = t["logs"]
        r = {"seconds": t["seconds"]}
        if "completions/mean_length" in logs:
            r.update(completion_tokens=logs["completions/mean_length"] * work.GROUP_SIZE * work.PROMPTS_PER_STEP,
                     num_tokens=logs.get("num_tokens", 0.0), loss=logs.get("loss"), reward=logs.get("reward"))
        r["train_tokens"], prev = r.get("num_tokens", 0.0) - prev, r.get("num_tokens", 0.0)
        rows.append(r)
    rewards.close()
    print(json.dumps({"trainer": "trl", "setting": setting, "bf16": bf16, "setup_s": setup_s, "steps": rows,
                      "params": sum(p.numel() for p in trainer.model.parameters())}))


if __name__ == "__main__":
    main(sys.argv[1:])
