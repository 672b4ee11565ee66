"""`aha eval`: the R1 paper's protocol. k samples per problem at T=0.6, top-p 0.95; pass@1 as the mean
correctness over the k samples (with its standard error), cons@k by majority vote, pass@k' by the
unbiased estimator (Chen et al. 2021), response lengths, format rates (strict R1-Zero form, and R1's form with
a summary: `format_r1`) and reflection rates.

Correctness comes from the same accuracy reward that training uses (one place decides what
"correct" means), and the majority vote groups answers with that same equivalence, so `1/2` and
`0.5` vote together. Tie rule: among equally large groups, the one whose first answer came first wins.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from aha.config import Invalid, NonNegFloat, NonNegInt, PositiveInt, Probability, check
from aha.data.example import Example
from aha.data.tasks import TaskConfig, is_file_task, load_task
from aha.data.templates import encode_prompt, render_prompt, with_prefill
from aha.errors import AhaError
from aha.io import atomic_write_jsonl, atomic_write_text
from aha.models import load_model
from aha.rewards import RewardSet
from aha.rewards.config import RewardsConfig
from aha.rewards.extract import extract_answer
from aha.rewards.verifiers import verifier
from aha.rollout import make_engine
from aha.rollout.base import Completion, SamplingConfig
from aha.runs import resolve_run
from aha.runtime import pick_device
from aha.training.checkpoint import list_checkpoints
from aha.training.metrics import reflection_count


@dataclass
class EvalConfig:
    RENAMED: ClassVar[dict[str, str]] = {"batch_size": "max_batch"}
    model: list[str] = field(default_factory=lambda: ["smollm2-135m-instruct"])
    """One or more models (comma-separated): registry names, .gguf files, HF folders or run folders
    (a run folder expands to the run's base model and each of its checkpoints)."""
    task: str = "chain_sum"
    """reasoning-gym name, JSONL path or hf:NAME."""
    data: TaskConfig = field(default_factory=lambda: TaskConfig(args={"min_terms": 2, "max_terms": 2, "max_digits": 2}))
    """Task settings; the eval split is used (for reasoning-gym: seed + 1,000,003)."""
    split: str = "auto"
    """Which problems: auto (every row of a file or hf: dataset, the held-out split of a generated task),
    all (every row of a file), eval (the held-out split a training run on the same task keeps out: a file's
    last data.eval_size rows) or train (the rest)."""
    samples: PositiveInt = 4
    """k: completions per problem."""
    temperature: NonNegFloat = 0.6
    """The paper's sampling temperature; 0 with samples=1 is greedy decoding."""
    top_p: Probability = 0.95
    max_new_tokens: PositiveInt = 256
    limit: NonNegInt = 0
    """Evaluate only the first N problems (0: all)."""
    seed: int = 0
    out_dir: str = "runs/eval"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """float32, bfloat16 or auto (bfloat16 where the hardware computes it fast), for weights and compute."""
    device: str = "auto"
    template: Literal["auto", "r1_zero", "chat", "r1", "plain"] = "auto"
    system_prompt: str = ""
    few_shot: bool = False
    """One worked example in the answer format before each question (as in training; see aha.data.templates)."""
    prefill: str = ""
    """Text that starts every completion, e.g. `<think>`; verdicts see prefill + completion."""
    prompt_from_run: bool = True
    """When `model` is a run folder, prompt the way that run trained (its template, system_prompt, few_shot
    and prefill), for its base model and every checkpoint alike."""
    pass_k: list[int] = field(default_factory=list)
    """k' values for pass@k' (default: 1, 2, 4, ... up to samples)."""
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine, as rollout.engine in training: hf (transformers, CPU or GPU; continuous batching for
    Llama-family models) or vllm (GPU)."""
    max_batch: PositiveInt = 64
    """Sequences decoded at once (as rollout.max_batch in training)."""
    progress: bool = True
    code_isolation: Literal["auto", "bwrap", "rlimits"] = "auto"
    """Code tasks: how model-written programs are isolated, as rewards.code_isolation in training: auto
    (bubblewrap, else an error) or rlimits (no namespaces). The one used is written to summary.json."""

    def check(self) -> None:
        if self.temperature <= 0 and self.samples > 1:
            raise Invalid("samples", "greedy decoding (temperature=0) gives identical samples; use samples=1")


# ----------------------------------------------------------------------------------------- estimators


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i)
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_and_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    m = sum(values) / len(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return m, se


def majority_vote(answers: list[str | None], equivalent) -> int | None:
    """Index of the first answer of the largest group of equivalent answers (None answers never vote).
    Ties go to the group whose first member came first."""
    groups: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for g in groups:
            if equivalent(answers[g[0]], a):
                g.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=lambda g: (len(g), -g[0]))
    return best[0]


def _norm(s: str) -> str:
    return " ".join(s.strip().strip(".").lower().split())


def make_equivalence(example: Example, reward_set):
    """a ~ b when the task's verifier compares answers (math, number) and, given a as the gold, accepts b;
    else equal normalised texts."""
    if not verifier(example.task).compares_answers:
        return lambda a, b: _norm(a) == _norm(b)

    def eq(a: str, b: str) -> bool:
        if _norm(a) == _norm(b):
            return True
        probe = Example(prompt=example.prompt, answer=a, task=example.task)
        return reward_set.component("accuracy", [Completion(text=f"<answer>{b}</answer>")], [probe], probe=True)[0] >= 1.0

    return eq


# ----------------------------------------------------------------------------------------- the stage


def expand_models(models: list[str]) -> list[str]:
    out = []
    for m in models:
        p = Path(m)
        if p.is_dir() and (p / "checkpoints").is_dir():
            import yaml

            cfg_path = p / "config.yaml"
            if cfg_path.exists():
                base = (yaml.safe_load(cfg_path.read_text()) or {}).get("model")
                if base and (Path(base) / "checkpoints").is_dir():
                    # the base is another run: name its newest checkpoint as that run's own listing does
                    base = resolve_run(base)
                if base and base not in out:
                    out.append(base)

            ckpts = [str(d) for _, d in list_checkpoints(p)]
            if not ckpts:
                raise AhaError(f"{m}: run folder has no checkpoints")
            out += ckpts
        else:
            out.append(m)
    return out


def evaluate_model(model_name: str, examples: list[Example], cfg: EvalConfig, reward_set) -> tuple[dict, list[dict]]:
    import torch

    device = pick_device(cfg.device)
    model, tok = load_model(model_name, dtype=cfg.dtype, device=device)
    engine = make_engine(cfg.engine, model, tok, max_batch=cfg.max_batch)
    k = cfg.samples
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    torch.manual_seed(cfg.seed)
    prompts = [encode_prompt(render_prompt(e.prompt, tok, cfg.template, cfg.system_prompt, cfg.few_shot, cfg.prefill), tok)
               for e in examples]
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), desc=f"eval {Path(model_name).name}", dynamic_ncols=True)
    done, t0 = {}, time.perf_counter()
    ks = sorted({kk for kk in (cfg.pass_k or [2**i for i in range(0, 12)]) if kk <= k} | {1})
    # All problems in one call: the engine keeps its batch full (finished rows take the next problems) and
    # hands back each problem's samples as they complete.
    for i, group in engine.stream(prompts, k, sampling):
        ex = examples[i]
        group = with_prefill(group, cfg.prefill)
        _, parts = reward_set.score(group, [ex] * k)
        verdicts = [float(v) for v in parts["accuracy"]]
        answers = [extract_answer(c.text) for c in group]
        winner = majority_vote(answers, make_equivalence(ex, reward_set))
        done[i] = {
            "id": ex.id, "prompt": ex.prompt, "answer": ex.answer,
            "completions": [c.text for c in group], "extracted": answers, "correct": verdicts,
            "format": [float(v) for v in parts.get("format", [0.0] * k)],
            "format_r1": [float(v) for v in parts.get("format_r1", [0.0] * k)],
            "lengths": [len(c.completion_ids) for c in group],
            "finished": [c.finished for c in group],
            "reflections": [reflection_count(c.text) for c in group],
            "cons_answer": answers[winner] if winner is not None else None,
            "cons_correct": verdicts[winner] if winner is not None else 0.0,
            "pass_at": {str(kk): pass_at_k(k, int(sum(v >= 1.0 for v in verdicts)), kk) for kk in ks},
        }
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    records = [done[i] for i in range(len(examples))]
    seconds = time.perf_counter() - t0
    p1, se = mean_and_se([sum(r["correct"]) / k for r in records])
    lengths = [n for r in records for n in r["lengths"]]
    ntok = sum(lengths)
    summary = {
        "model": model_name, "task": cfg.task, "split": cfg.split, "limit": cfg.limit, "problems": len(records),
        "samples": k,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
        "prompt": {k: getattr(cfg, k) for k in PROMPT_KEYS},
        "pass@1": p1, "pass@1_se": se,
        f"cons@{k}": sum(r["cons_correct"] for r in records) / max(len(records), 1),
        **{f"pass@{kk}": sum(r["pass_at"][str(kk)] for r in records) / max(len(records), 1) for kk in ks if kk > 1},
        "format_rate": sum(f >= 1.0 for r in records for f in r["format"]) / max(len(lengths), 1),
        "r1_form_rate": sum(f >= 1.0 for r in records for f in r.get("format_r1", [])) / max(len(lengths), 1),
        "length_mean": ntok / max(len(lengths), 1), "length_max": max(lengths, default=0),
        "truncated": sum(not f for r in records for f in r["finished"]) / max(len(lengths), 1),
        "reflection_per_1k_tokens": 1000.0 * sum(sum(r["reflections"]) for r in records) / max(ntok, 1),
        "seconds": seconds, "tokens_per_s": ntok / max(seconds, 1e-9),
    }
    del model, engine
    return summary, records


def markdown_table(summaries: list[dict]) -> str:
    if not summaries:
        return ""
    k = summaries[0]["samples"]
    cols = ["pass@1", f"cons@{k}"] + [c for c in summaries[0] if c.startswith("pass@") and c not in ("pass@1", "pass@1_se")]
    cols += ["format_rate", "r1_form_rate", "length_mean", "truncated", "reflection_per_1k_tokens", "seconds"]
    head = "| model | problems | " + " | ".join(cols) + " |"
    sep = "|---|---|" + "---|" * len(cols)
    lines = [head, sep]
    for s in summaries:
        cells = []
        for c in cols:
            v = s.get(c, float("nan"))
            if c == "pass@1":
                cells.append(f"{v:.3f} ± {s['pass@1_se']:.3f}")
            elif c in ("length_mean", "seconds", "reflection_per_1k_tokens"):
                cells.append(f"{v:.1f}")
            else:
                cells.append(f"{v:.3f}")
        lines.append(f"| {s['model']} | {s['problems']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PROMPT_KEYS = ("template", "system_prompt", "few_shot", "prefill")


def run_prompt_settings(model: str) -> dict:
    """The prompt settings a run folder trained with ({} for anything else)."""
    cfg_path = Path(model) / "config.yaml"
    if not (Path(model) / "checkpoints").is_dir() or not cfg_path.exists():
        return {}
    import yaml

    tree = yaml.safe_load(cfg_path.read_text()) or {}
    return {k: tree[k] for k in PROMPT_KEYS if k in tree}


def evaluate(cfg: EvalConfig) -> list[dict]:
    check(cfg)
    split = cfg.split if cfg.split != "auto" else ("all" if is_file_task(cfg.task) else "eval")
    cfg = dataclasses.replace(cfg, split=split)
    examples = load_task(cfg.task, cfg.data, split)
    available = len(examples)
    if cfg.limit:
        examples = examples[: cfg.limit]
    print(f"aha eval: {len(examples)} problems of {cfg.task} (split {split}"
          + (f", the first {len(examples)} of {available} by limit" if len(examples) < available else "") + ")",
          file=sys.stderr)
    reward_set = RewardSet(RewardsConfig(weights={"accuracy": 1.0, "format": 0.0, "format_r1": 0.0},
                                         code_isolation=cfg.code_isolation))
    sandbox = {}
    if any(e.task == "code" for e in examples):  # refuse before loading a model, and say which one ran
        from aha.sandbox import isolation

        sandbox = {"code_isolation": isolation(cfg.code_isolation)}
    out = Path(cfg.out_dir)
    summaries = []
    jobs = []  # (model, config with the prompt settings it is evaluated under)
    for m in cfg.model:
        prompt = run_prompt_settings(m) if cfg.prompt_from_run else {}
        for name in expand_models([m]):
            job = (name, dataclasses.replace(cfg, **prompt))
            if job not in jobs:  # a base model shared by several runs is evaluated once per prompt format
                jobs.append(job)
    for i, (name, model_cfg) in enumerate(jobs):
        summary, records = evaluate_model(name, examples, model_cfg, reward_set)
        summary.update(sandbox)
        summaries.append(summary)
        sub = out / (f"model_{i}" if len(jobs) > 1 else "")
        atomic_write_jsonl(sub / "samples.jsonl", records)
        atomic_write_text(sub / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "summary.json", json.dumps(summaries, indent=2))
    table = markdown_table(summaries)
    atomic_write_text(out / "summary.md", table + "\n")
    print(table)
    return summaries


def run(cfg: EvalConfig) -> Path:
    """The eval stage: `aha eval` writing summary.json and samples.jsonl into cfg.out_dir."""
    evaluate(cfg)
    return Path(cfg.out_dir)
