"""`aha coldstart`: a small set of readable long-CoT samples in R1's output form, then (optionally) SFT on it.

R1's output form (§2.3.1): `<think>reasoning</think>`, a readable summary, then the answer (here inside
`<answer>…</answer>`, as the accuracy reward reads it). Three sources:

- `rollouts`: an R1-Zero run's correct rollouts (`run/rollouts/step_*.jsonl`) rewritten into that form. The
  paper had annotators post-process R1-Zero outputs; we rewrite by rule (`to_r1_form`): the reasoning is
  kept, tidied, and followed by a one-line summary (its last step and the answer).
- `few_shot`: `aha sample` with long-CoT demonstrations as earlier turns (the paper's "few-shot prompting
  with a long CoT as an example"), the `r1` template and the `r1` format filter.
- `file`: the user's `{prompt, completion}` JSONL; completions not in the form are dropped and counted.

Then the same readability filters as `aha sample` (language consistency, repetition, duplicates, at most
`max_per_prompt` per prompt), `size` samples at most, written to `coldstart.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aha.config import Invalid, PositiveInt, check
from aha.errors import AhaError
from aha.io import atomic_write_jsonl, atomic_write_text, read_jsonl
from aha.rewards.extract import extract_answer, split_think
from aha.rewards.language import language_reward
from aha.rollout.base import Completion
from aha.runs import newest_model
from aha.stages import sample as sample_stage
from aha.stages import sft as sft_stage
from aha.stages.sample import FilterConfig, SampleConfig
from aha.stages.sft import SFTConfig

DEMOS = [
    {"prompt": "What is 27 + 48?",
     "completion": "<think>\nI need to add 27 and 48. Let me split the numbers into tens and ones.\n"
                   "Tens: 20 + 40 = 60. Ones: 7 + 8 = 15.\nThen 60 + 15 = 75.\n"
                   "Wait, let me check another way: 27 + 50 = 77, and 77 - 2 = 75. Both ways give 75.\n</think>\n"
                   "Adding tens and ones separately gives 60 + 15 = 75.\n<answer>75</answer>"},
    {"prompt": "What is 93 - 56?",
     "completion": "<think>\nI need 93 minus 56. Subtract the tens first: 93 - 50 = 43.\nThen subtract the ones: "
                   "43 - 6 = 37.\nLet me verify by adding back: 37 + 56 = 93. Correct.\n</think>\n"
                   "Subtracting 50 and then 6 from 93 leaves 37.\n<answer>37</answer>"},
]
"""Built-in long-CoT demonstrations in R1's form for `source: few_shot` (used when sample.demos is empty)."""


def _cold_start_sampling() -> SampleConfig:
    return SampleConfig(template="r1", prefill="<think>", temperature=0.7, max_new_tokens=256,
                        filters=FilterConfig(format="r1"))


@dataclass
class ColdStartConfig:
    source: Literal["rollouts", "few_shot", "file"] = "rollouts"
    """Where the samples come from: an R1-Zero run's correct rollouts, few-shot prompting, or a file."""
    run: str = ""
    """source=rollouts: the R1-Zero run folder (reads rollouts/step_*.jsonl)."""
    input: str = ""
    """source=file: JSONL of {prompt, completion} with completions in R1's form."""
    size: PositiveInt = 200
    """Most samples kept (R1 used thousands; a few hundred suit a CPU)."""
    filters: FilterConfig = field(default_factory=lambda: FilterConfig(format="r1", max_per_prompt=1))
    """Readability filters for the rollouts and file sources (few_shot uses sample.filters)."""
    sample: SampleConfig = field(default_factory=_cold_start_sampling)
    """source=few_shot: sampling settings (model, task, ...); demos default to the built-in long-CoT examples."""
    train: bool = False
    """Then fine-tune on the samples with `sft` (its input and out_dir are set by this stage)."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """SFT settings when train is true."""
    out_dir: str = "runs/coldstart"
    """Output folder: coldstart.jsonl, report.json, sample/ (few_shot), sft/ (train)."""
    seed: int = 0

    def check(self) -> None:
        if self.source == "rollouts" and not self.run:
            raise Invalid("run", "source=rollouts needs the R1-Zero run folder (run=runs/...)")
        if self.source == "file" and not self.input:
            raise Invalid("input", "source=file needs a JSONL of {prompt, completion} (input=...)")


# ----------------------------------------------------------------------------------------- rewriting

_BLANKS = re.compile(r"\n\s*\n+")


def tidy(reasoning: str) -> str:
    """Whitespace-normalised reasoning: stripped lines, no runs of blank lines, no consecutive repeated lines."""
    lines = [" ".join(line.split()) for line in _BLANKS.sub("\n", reasoning.strip()).splitlines()]
    return "\n".join(line for i, line in enumerate(lines) if line and (i == 0 or line != lines[i - 1]))


def to_r1_form(completion: str) -> str | None:
    """An R1-Zero completion rewritten into R1's form (reasoning, a one-line summary, the answer); None when it
    has no reasoning or no answer to rewrite."""
    reasoning, _ = split_think(completion)
    answer = extract_answer(completion)
    reasoning = tidy(reasoning)
    if not reasoning or not answer:
        return None
    last = reasoning.splitlines()[-1].rstrip(".")
    summary = f"{last}, so the answer is {answer}." if last.endswith(answer) else f"{last}. The answer is {answer}."
    return f"<think>\n{reasoning}\n</think>\n{summary}\n<answer>{answer}</answer>"


# ----------------------------------------------------------------------------------------- sources


def _need(row: dict, name: str, where: str):
    if name not in row:
        raise AhaError(f"{where}: missing field '{name}'")
    return row[name]


def rollout_candidates(run_dir: str) -> tuple[list[dict], Counter]:
    """Correct, finished rollouts of an R1-Zero run rewritten into R1's form, and what was dropped."""
    files = sorted(Path(run_dir).glob("rollouts/step_*.jsonl"))
    if not files:
        raise AhaError(f"{run_dir}: no rollouts/step_*.jsonl (an `aha train` run folder with log.rollouts_every > 0)")
    out, dropped = [], Counter()
    for path in files:
        for lineno, row in read_jsonl(path):
            where = f"{path}:{lineno}"
            prompt, completion = _need(row, "prompt", where), _need(row, "completion", where)
            if float(_need(row, "accuracy", where)) < 1.0 or row.get("finished") is False:
                dropped["correct"] += 1
                continue
            text = to_r1_form(completion)
            if text is None:
                dropped["format"] += 1
                continue
            out.append({"prompt": prompt, "completion": text, "answer": str(row.get("answer", "")),
                        "accuracy": 1.0, "source": where})
    return out, dropped


def file_candidates(path: str) -> list[dict]:
    rows = []
    for lineno, row in read_jsonl(path):
        sample = sft_stage.sample_from_row(row, f"{path}:{lineno}")
        if sample.messages:
            raise AhaError(f"{path}:{lineno}: field 'prompt' is needed (cold-start samples are prompt/completion pairs)")
        rows.append({"prompt": sample.prompt, "completion": sample.completion, "answer": str(row.get("answer", "")),
                     "accuracy": float(row.get("accuracy", 1.0)), "source": f"{path}:{lineno}"})
    if not rows:
        raise AhaError(f"{path}: no samples (the file is empty)")
    return rows


def filter_candidates(rows: list[dict], f: FilterConfig) -> tuple[list[dict], Counter]:
    """`aha sample`'s filters per prompt (text-only: lengths are word counts)."""
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r)
    kept, dropped = [], Counter()
    for group in by_prompt.values():
        comps = [Completion(text=r["completion"]) for r in group]
        idx, why = sample_stage.select(comps, [r["accuracy"] for r in group],
                                       [language_reward(c.text, f.language) for c in comps], f)
        kept += [group[i] for i in idx]
        dropped.update(why)
    return kept, dropped


def few_shot_rows(cfg: ColdStartConfig, out: Path) -> tuple[list[dict], dict]:
    demos = cfg.sample.demos
    if not demos:
        demos = str(out / "demos.jsonl")
        atomic_write_jsonl(Path(demos), DEMOS)
    done = sample_stage.run(dataclasses.replace(cfg.sample, demos=demos, out_dir=str(out / "sample")))
    rows = [row for _, row in read_jsonl(done / "samples.jsonl")]
    return rows, json.loads((done / "report.json").read_text())


# ----------------------------------------------------------------------------------------- the stage


def run(cfg: ColdStartConfig) -> Path:
    """Build coldstart.jsonl (and fine-tune on it when `train`); returns out_dir."""
    check(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.source == "few_shot":
        rows, report = few_shot_rows(cfg, out)
    else:
        if cfg.source == "rollouts":
            candidates, dropped = rollout_candidates(cfg.run)
        else:
            candidates, dropped = file_candidates(cfg.input), Counter()
        rows, why = filter_candidates(candidates, cfg.filters)
        dropped.update(why)
        report = {"candidates": sum(dropped.values()) + len(rows), "dropped": dict(dropped)}
    random.Random(cfg.seed).shuffle(rows)
    rows = rows[: cfg.size]
    report.update({"source": cfg.source, "kept": len(rows)})
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    if not rows:
        raise AhaError(f"{cfg.run or cfg.input or out}: no cold-start sample passed the filters "
                       f"(dropped: {report.get('dropped')}); see {out / 'report.json'}")
    data = out / "coldstart.jsonl"
    atomic_write_jsonl(data, [{k: r[k] for k in ("prompt", "completion", "answer") if k in r} for r in rows])
    if cfg.train:
        run_dir = sft_stage.run(dataclasses.replace(cfg.sft, input=str(data), out_dir=str(out / "sft")))
        report["model"] = str(newest_model(run_dir))
        atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    return out
