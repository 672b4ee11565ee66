"""Benchmark: the R1 stages at CPU scale on SmolLM2-135M-Instruct, with the held-out accuracy of each stage's
output, and the paper's small-model comparison (distillation vs RL from scratch at equal compute).

    .venv/bin/python bench/r1_stages_cpu.py [key=value ...]      # keys: the fields of StagesBench below

Stages (each one `run(cfg) -> folder` of aha.stages, so a failed stage can be rerun alone):
  1. cold start   `aha coldstart source=few_shot`: long-CoT demos -> samples in R1's form -> SFT of the base
                  (or source=rollouts with coldstart_run=RUN of an earlier R1-Zero run)
  2. short RL     `aha train` (recipes/r1_zero_smollm2.yaml) from the cold-start model, rl_steps steps
  3. rejection sampling  `aha sample` from the RL model on the train split
  4. SFT          `aha sft` of the base model on the rejection samples (R1 retrains the base, §2.3.3)
  5. distillation `aha distill`: teacher = the stage-4 model, student = the base model; then RL from scratch
                  on the base for the same wall time as the distillation took
Held-out accuracy (greedy, and pass@1 over `samples` at T=0.6) of the base and of every stage's model via
aha.stages.evaluate, all prompted the same way (chat template, one demo turn, `<think>` prefill).
Writes bench/results/r1_stages_cpu.json and prints a Markdown table for bench/README.md. A stage whose
filters keep nothing is recorded as such, and the next stage starts from the previous model.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aha.config import load_config
from aha.errors import AhaError
from aha.stages import coldstart, distill, sample, sft
from aha.stages.evaluate import EvalConfig, evaluate
from aha.train.config import TrainConfig
from aha.train.grpo_loop import train

RECIPE = "recipes/r1_zero_smollm2.yaml"
PROMPT = {"template": "chat", "few_shot": True, "prefill": "<think>", "system_prompt": ""}
"""How every model is prompted: as the RL recipe prompts (so each stage's model is measured the same way)."""


@dataclass
class StagesBench:
    model: str = "smollm2-135m-instruct"
    """The base model (and the distillation student)."""
    out_dir: str = "runs/bench_r1_stages"
    coldstart_source: str = "few_shot"
    """few_shot (from the base model with long-CoT demos) or rollouts (from coldstart_run)."""
    coldstart_run: str = ""
    """An R1-Zero run folder for coldstart_source=rollouts (e.g. runs/bench_r1_zero)."""
    coldstart_prompts: int = 64
    """Prompts sampled for the few-shot cold start."""
    rl_steps: int = 15
    """GRPO steps of the short RL stage (~40 s each on 2 cores)."""
    sample_prompts: int = 160
    """Prompts of the rejection-sampling and distillation stages."""
    group_size: int = 4
    """Completions sampled per prompt in the sampling stages (cold start, rejection sampling, distillation)."""
    sft_epochs: float = 2.0
    eval_size: int = 100
    """Held-out problems (chain_sum, a disjoint seed)."""
    samples: int = 4
    """k for pass@1 at T=0.6."""
    max_new_tokens: int = 128


def held_out(model: str, b: StagesBench, task_cfg: TrainConfig, out: Path) -> dict:
    common = dict(task=task_cfg.task, data=dataclasses.replace(task_cfg.data, eval_size=b.eval_size),
                  max_new_tokens=b.max_new_tokens, progress=False, dtype="auto", prompt_from_run=False, **PROMPT)
    greedy = evaluate(EvalConfig(model=[model], samples=1, temperature=0.0, out_dir=str(out / "greedy"), **common))[0]
    sampled = evaluate(EvalConfig(model=[model], samples=b.samples, out_dir=str(out / "sampled"), **common))[0]
    return {"model": model, "greedy_accuracy": greedy["pass@1"], "format_rate": greedy["format_rate"],
            "pass@1": sampled["pass@1"], "pass@1_se": sampled["pass@1_se"], "length_mean": sampled["length_mean"]}


def sample_cfg(b: StagesBench, task_cfg: TrainConfig, prompts: int, **kw) -> sample.SampleConfig:
    return sample.SampleConfig(task=task_cfg.task, data=task_cfg.data, limit=prompts, group_size=b.group_size,
                               max_new_tokens=b.max_new_tokens, progress=False, **{**PROMPT, **kw})


def sft_cfg(b: StagesBench, **kw) -> sft.SFTConfig:
    return sft.SFTConfig(epochs=b.sft_epochs, max_length=512, samples_per_step=16, eval_size=16,
                         log=sft.SFTLogConfig(progress=False, tensorboard=False), **{**PROMPT, **kw})


def timed(results: dict, name: str, fn):
    """Run one stage; record its seconds, or its AhaError (e.g. nothing passed the filters) and None."""
    t0 = time.perf_counter()
    try:
        value = fn()
        results[name] = {"seconds": time.perf_counter() - t0}
        return value
    except AhaError as e:
        results[name] = {"seconds": time.perf_counter() - t0, "error": str(e)}
        print(f"{name}: {e}", file=sys.stderr)
        return None


def main(argv: list[str]) -> None:
    b = load_config(StagesBench, None, argv)
    out = Path(b.out_dir)
    rl = load_config(TrainConfig, RECIPE, ["log.progress=false", "selftest=false", f"data.eval_size={b.eval_size}"])
    stages: dict = {}
    models: dict[str, str] = {"base": b.model}

    # 1. cold start
    cs = coldstart.ColdStartConfig(
        source=b.coldstart_source, run=b.coldstart_run, out_dir=str(out / "coldstart"), train=True,
        sample=sample_cfg(b, rl, b.coldstart_prompts, model=b.model, template="r1", few_shot=False,
                          filters=sample.FilterConfig(format="r1")),
        sft=sft_cfg(b, model=b.model))
    done = timed(stages, "coldstart", lambda: coldstart.run(cs))
    if done is not None:
        stages["coldstart"]["report"] = json.loads((done / "report.json").read_text())
        models["coldstart"] = str(sft.model_path(done / "sft"))
    start = models.get("coldstart", b.model)

    # 2. short RL from the cold-start model
    rl_cfg = dataclasses.replace(rl, model=start, steps=b.rl_steps, out_dir=str(out / "rl"))
    rl_dir = timed(stages, "rl", lambda: train(rl_cfg))
    if rl_dir is not None:
        models["rl"] = str(sft.model_path(rl_dir))
        stages["rl"]["seconds_per_step"] = stages["rl"]["seconds"] / b.rl_steps

    # 3. rejection sampling from the RL model
    rs = sample_cfg(b, rl, b.sample_prompts, model=models.get("rl", start), out_dir=str(out / "sample"))
    rs_dir = timed(stages, "sample", lambda: sample.run(rs))
    if rs_dir is not None:
        stages["sample"]["report"] = json.loads((rs_dir / "report.json").read_text())
        # 4. SFT of the base model on the rejection samples
        s4 = sft_cfg(b, model=b.model, input=str(rs_dir / "samples.jsonl"), out_dir=str(out / "sft"))
        sft_dir = timed(stages, "sft", lambda: sft.run(s4))
        if sft_dir is not None:
            models["sft"] = str(sft.model_path(sft_dir))

    # 5. distillation into the base model vs RL from scratch at equal wall time
    teacher = models.get("sft", models.get("rl", start))
    d = distill.DistillConfig(teacher=teacher, student=b.model, out_dir=str(out / "distill"),
                              sample=sample_cfg(b, rl, b.sample_prompts, seed=1),
                              sft=sft_cfg(b))
    d_dir = timed(stages, "distill", lambda: distill.run(d))
    if d_dir is not None:
        models["distill"] = json.loads((d_dir / "summary.json").read_text())["model"]
        per_step = stages.get("rl", {}).get("seconds_per_step", 40.0)
        steps = max(1, round(stages["distill"]["seconds"] / per_step))
        scratch = dataclasses.replace(rl, model=b.model, steps=steps, out_dir=str(out / "rl_scratch"))
        scratch_dir = timed(stages, "rl_scratch", lambda: train(scratch))
        if scratch_dir is not None:
            stages["rl_scratch"]["steps"] = steps
            models["rl_scratch"] = str(sft.model_path(scratch_dir))

    accuracy = {name: held_out(m, b, rl, out / "eval" / name) for name, m in models.items()}
    result = {"settings": dataclasses.asdict(b), "prompt": PROMPT, "stages": stages, "held_out": accuracy}
    dest = Path("bench/results/r1_stages_cpu.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2))
    print(f"| stage output | greedy acc | pass@1 (k={b.samples}, T=0.6) | format rate | mean length | stage time |")
    print("|---|---|---|---|---|---|")
    for name, r in accuracy.items():
        secs = stages.get(name, {}).get("seconds")
        print(f"| {name} | {r['greedy_accuracy']:.3f} | {r['pass@1']:.3f} ± {r['pass@1_se']:.3f} | "
              f"{r['format_rate']:.3f} | {r['length_mean']:.1f} | {f'{secs / 60:.1f} min' if secs else '-'} |")
    for name, s in stages.items():
        if "error" in s:
            print(f"{name}: {s['error']}")


if __name__ == "__main__":
    main(sys.argv[1:])
