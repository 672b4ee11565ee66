"""One aha GRPO run on the work of `work.py`; prints one JSON line with per-step timings.

    python bench/grpo_vs_trl/aha_worker.py STEPS [key=value ...]

The first step is a warm-up and is reported apart. Extra key=value pairs override the TrainConfig (used to
measure one lever at a time).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import work  # noqa: E402


def make_config(steps: int, overrides: list[str]):
    """aha's TrainConfig for the work of `work.py` (and `overrides`), writing to a fresh temporary folder."""
    from aha.config import load_config
    from aha.training.config import TrainConfig

    out = tempfile.mkdtemp(prefix="aha_vs_trl_")
    weights = ",".join(f"{k}: {v}" for k, v in work.REWARD_WEIGHTS.items())
    return load_config(TrainConfig, None, [
        f"model={work.model_dir()}", f"task={work.task()}", f"data.size={work.N_PROMPTS}", "data.eval_size=0",
        "data.seed=0", f"data.args={json.dumps(work.TASK_ARGS)}", f"template={work.TEMPLATE}",
        f"few_shot={str(work.FEW_SHOT).lower()}", f"prefill={work.PREFILL}", f"steps={steps}", f"out_dir={out}",
        f"lora.rank={work.LORA_RANK}", f"lora.alpha={work.LORA_ALPHA}",
        f"grpo.group_size={work.GROUP_SIZE}", f"grpo.prompts_per_step={work.PROMPTS_PER_STEP}",
        f"grpo.kl_coef={work.BETA}", f"grpo.mu={work.MU}", f"optim.lr={work.LR}",
        f"rollout.max_new_tokens={work.MAX_NEW_TOKENS}", f"rollout.temperature={work.TEMPERATURE}",
        f"rollout.top_p={work.TOP_P}", "rollout.stop=[]",  # TRL stops at EOS only
        f"rewards.weights={{{weights}}}", "log.progress=false", *overrides])


def main(argv: list[str]) -> None:
    from aha import runtime
    from aha.models import resolve_dtype
    from aha.training.grpo_loop import GRPOTrainer

    steps = int(argv[0])
    argv = [argv[0], *work.AHA_SETTINGS, *argv[1:]]  # the work's aha settings, then the run's own overrides
    runtime.apply(runtime.load(None, argv[1:]))  # runtime.threads=..., runtime.malloc=... as `aha train` applies them
    cfg = make_config(steps, argv[1:])
    t0 = time.perf_counter()
    trainer = GRPOTrainer(cfg)
    setup_s = time.perf_counter() - t0
    rows = []
    for _ in range(steps):
        t = time.perf_counter()
        m = trainer.step()
        rows.append({"seconds": time.perf_counter() - t, "completion_tokens": m["length_mean"] * work.GROUP_SIZE
                     * work.PROMPTS_PER_STEP, "train_tokens": m.get("train_tokens", 0.0),
                     "train_tokens_padded": m.get("train_tokens_padded", 0.0),
                     "generate_s": m["time/generate_s"], "score_s": m["time/score_s"], "train_s": m["time/train_s"],
                     "logprob_s": m["time/logprob_s"], "decode_steps": m["length_max"],
                     "loss": m["loss"], "reward": m["reward"]})
    params = sum(p.numel() for p in trainer.policy.parameters())
    print(json.dumps({"trainer": "aha", "setup_s": setup_s, "steps": rows, "params": params,
                      "dtype": resolve_dtype(cfg.dtype), "overrides": argv[1:]}))


if __name__ == "__main__":
    main(sys.argv[1:])
