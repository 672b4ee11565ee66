"""`aha score`: score a JSONL of completions offline, or self-test the verifiers on gold answers.

Scoring writes every input row back with `reward` (the weighted total) and one field per reward
component, atomically (a temporary file renamed into place; a row holding a lone UTF-16 surrogate is
written with JSON `\\uXXXX` escapes rather than crash the write after all the scoring), and prints the
mean of each component and the gold parse-failure rate. The self-test (aha.rewards.selftest) wraps each gold answer as `<think>…</think><answer>GOLD</answer>`
(must score accuracy 1) and a perturbed gold (first integer n -> 9 followed by n + 1; countdown: the target + 1) (must score 0),
and fails loudly when too many golds do not parse or do not score 1: the anchors are a verifier that
scored every MATH problem 0 in worker processes, and one that gave 1.0 whenever the gold did not parse.
The trainer runs `selftest` before step 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aha.config import Fraction, NonNegInt, PositiveFloat
from aha.data.example import Example
from aha.data.tasks import TaskConfig, load_task
from aha.errors import AhaError, closest
from aha.io import atomic_write_text, read_jsonl
from aha.rewards.config import RewardsConfig
from aha.rewards.registry import REGISTRY
from aha.rewards.rewardset import RewardSet
from aha.rewards.selftest import BUILTIN_GOLDS, int_list, perturb, selftest, selftest_examples  # noqa: F401
from aha.rollout.base import Completion


@dataclass
class ScoreConfig:
    """Offline scoring of completions, or the verifier self-test."""

    input: str = ""
    """JSONL file. Scoring: rows with `completion` and gold fields (`answer`; countdown `numbers` and
    `target`; reasoning-gym `entry`). Self-test: rows of examples (the same gold fields)."""
    output: str = ""
    """Where scored rows go (default: <input>.scored.jsonl next to the input)."""
    task: str = "math"
    """Verifier for rows without a `task` field: math, number, countdown, code or rg:<dataset>. Self-test
    without `input`: math and number check built-in gold answers; countdown and rg:<dataset> the
    reasoning-gym dataset's; any other task name (a reasoning-gym dataset, a .jsonl, hf:NAME) its data."""
    rewards: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    """Rewards to compute, each `name` or `name:weight` (weight 1 when omitted); `reward` is the weighted sum."""
    selftest: bool = False
    """Check the verifiers instead: gold answers must score 1 and perturbed golds 0."""
    max_parse_failure: Fraction = 0.01
    """Largest tolerated share of gold answers that fail to parse or to score 1 (self-test fails above it)."""
    workers: NonNegInt = 0
    """Processes for verification (0: in this process)."""
    timeout_s: PositiveFloat = 2.0
    """Time limit per completion for verifiers; a timeout scores 0."""
    language: str = "en"
    """Target language of the `language` reward."""


def parse_rewards(items: list[str]) -> dict[str, float]:
    """["accuracy", "format:0.5"] -> {"accuracy": 1.0, "format": 0.5}."""
    weights: dict[str, float] = {}
    for item in items:
        name, _, w = str(item).strip().partition(":")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise AhaError(f"rewards: '{item}': weight '{w}' is not a number") from None
        if not math.isfinite(weight):
            raise AhaError(f"rewards: '{item}': weight must be finite")
        weights[name.strip()] = weight
    if not weights:
        raise AhaError("rewards: empty list")
    return weights


def example_from_score_row(row: dict, default_task: str, where: str, needs_gold: bool) -> Example:
    """The Example a scoring row describes; AhaError "file:line: field …" for a bad gold field."""
    task = row.get("task", default_task)
    if not isinstance(task, str) or not task:
        raise AhaError(f"{where}: field 'task' must be a non-empty string")
    kind = str(row.get("kind", "reasoning"))
    rid = str(row.get("id", where))
    prompt = row.get("prompt", row.get("question", row.get("problem", "")))
    prompt = prompt if isinstance(prompt, str) else str(prompt)
    answer = row.get("answer", "")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    meta: dict[str, Any] = dict(row["metadata"]) if isinstance(row.get("metadata"), dict) else {}
    if task == "countdown":
        numbers, target = row.get("numbers", meta.get("numbers")), row.get("target", meta.get("target"))
        if needs_gold:
            if not int_list(numbers):
                raise AhaError(f"{where}: field 'numbers' must be a non-empty list of integers, got {numbers!r:.60}")
            if type(target) is not int:
                raise AhaError(f"{where}: field 'target' must be an integer, got {target!r:.40}")
        meta.update(numbers=numbers, target=target)
    elif task.startswith("rg:"):
        entry = row.get("entry", meta.get("entry"))
        if needs_gold and not isinstance(entry, dict):
            raise AhaError(f"{where}: field 'entry' (the reasoning-gym entry) must be an object")
        meta.update(entry=entry, dataset=task[3:])
        if not answer and isinstance(entry, dict):
            answer = str(entry.get("answer", ""))
    elif task == "code":
        for k in ("tests", "entry_point"):
            if k in row:
                meta[k] = row[k]
    elif needs_gold:
        if "answer" not in row:
            raise AhaError(f"{where}: missing field 'answer' (the gold answer)")
        if not isinstance(answer, str):
            raise AhaError(f"{where}: field 'answer' must be a string or number, got {type(answer).__name__}")
    if not isinstance(answer, str):
        answer = str(answer)
    return Example(prompt=prompt, answer=answer, task=task, kind=kind, metadata=meta, id=rid)


def _completion_of(row: dict, where: str) -> Completion:
    if "completion" not in row:
        raise AhaError(f"{where}: missing field 'completion'")
    text = row["completion"]
    if not isinstance(text, str):
        raise AhaError(f"{where}: field 'completion' must be a string, got {type(text).__name__}")
    ids = row.get("completion_ids")
    ids = tuple(ids) if isinstance(ids, list) and all(type(i) is int for i in ids) else ()
    return Completion(text=text, completion_ids=ids, finished=bool(row.get("finished", True)))


def jsonl_line(row: dict) -> str:
    """One output line. Non-ASCII text is written as itself (UTF-8), except in a row holding a lone UTF-16
    surrogate (a completion cut inside a character: "\\ud800"), which UTF-8 cannot encode: that row is
    written with `ensure_ascii=True`, so the surrogate becomes the JSON escape `\\ud800` and reads back
    exactly; nothing is replaced or dropped."""
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(row, ensure_ascii=True)
    return line + "\n"


# -- scoring -------------------------------------------------------------------------------------
def default_output(input_path: str) -> str:
    p = Path(input_path)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return str(p.with_name(f"{stem}.scored.jsonl"))


def run_score(input: str, output: str = "", task: str = "math", rewards: list[str] | None = None,
              selftest: bool = False, max_parse_failure: float = 0.01, workers: int = 0,
              timeout_s: float = 2.0, language: str = "en", echo=print) -> dict:
    """Score `input` into `output` (or self-test the verifiers on it) and return the summary."""
    if not input and selftest:
        # `aha score selftest=true task=chain_sum`: the task's own gold answers (first 200 problems)

        examples = selftest_examples(task, lambda name: load_task(name, TaskConfig(size=200, eval_size=0))[:200])
        cfg = RewardsConfig(weights={"accuracy": 1.0}, language=language, timeout_s=timeout_s, workers=workers)
        with RewardSet(cfg) as reward_set:
            report = selftest_fn(examples, reward_set, max_parse_failure)
        echo(f"self-test of task '{task}' on {report['checked']} of {report['examples']} examples: gold parse failures "
             f"{report['gold_parse_failures']} ({report['parse_failure_rate']:.1%}), golds not scoring 1 "
             f"{report['gold_failures']}, perturbed scoring as correct {report['negative_failures']}/"
             f"{report['negatives_checked']}: OK")
        return report
    if not input:
        raise AhaError("input: a JSONL file is required (or selftest=true with a loadable task)")
    if not 0.0 <= max_parse_failure <= 1.0:
        raise AhaError(f"max_parse_failure must be within [0, 1], got {max_parse_failure}")
    weights = parse_rewards(rewards if rewards is not None else ["accuracy", "format"])

    for name in weights:
        if name not in REGISTRY:
            raise AhaError(f"rewards: unknown reward '{name}'{closest(name, REGISTRY)}; known: {', '.join(REGISTRY)}")
    needs_gold = bool({"accuracy", "code"} & set(weights)) or selftest
    rows: list[dict] = []
    examples: list[Example] = []
    completions: list[Completion] = []
    for lineno, row in read_jsonl(input):
        where = f"{input}:{lineno}"
        examples.append(example_from_score_row(row, task, where, needs_gold))
        if not selftest:
            completions.append(_completion_of(row, where))
        rows.append(row)
    if not rows:
        raise AhaError(f"{input}: no rows")
    cfg = RewardsConfig(weights=weights if not selftest else {"accuracy": 1.0}, language=language,
                        timeout_s=timeout_s, workers=workers)
    with RewardSet(cfg) as reward_set:
        if selftest:
            report = selftest_fn(examples, reward_set, max_parse_failure)
            echo(f"self-test on {report['checked']} of {report['examples']} examples ({report['skipped']} skipped): "
                 f"gold parse failures {report['gold_parse_failures']} ({report['parse_failure_rate']:.1%}), "
                 f"golds not scoring 1 {report['gold_failures']}, perturbed scoring as correct "
                 f"{report['negative_failures']}/{report['negatives_checked']}: OK")
            return report
        reward_set.prepare(examples)
        totals, parts = reward_set.score(completions, examples)
        status = reward_set.last_status
        stats = dict(reward_set.stats)
    out_path = output or default_output(input)
    scored = []
    for i, row in enumerate(rows):
        new = dict(row)
        new["reward"] = totals[i]
        for name, values in parts.items():
            new[name] = values[i]
        scored.append(new)
    atomic_write_text(Path(out_path), "".join(jsonl_line(r) for r in scored))
    n = len(rows)
    gold_fail = sum(1 for s in status.get("accuracy", []) if s == "gold")
    summary = {
        "rows": n,
        "output": out_path,
        "reward": sum(totals) / n,
        "means": {name: sum(v) / n for name, v in parts.items()},
        "gold_parse_failures": gold_fail,
        "parse_failure_rate": gold_fail / n,
        "timeouts": stats["timeouts"],
        "errors": stats["errors"],
    }
    echo(f"scored {n} rows -> {out_path}")
    echo(f"  {'reward':16} {summary['reward']:.4f}")
    for name, mean in summary["means"].items():
        echo(f"  {name:16} {mean:.4f}")
    echo(f"gold parse failures: {gold_fail}/{n} ({summary['parse_failure_rate']:.1%})"
         f"  timeouts: {stats['timeouts']}  errors: {stats['errors']}")
    if summary["parse_failure_rate"] > max_parse_failure:
        echo(f"warning: gold parse-failure rate above max_parse_failure ({max_parse_failure:.1%}): check the data")
    return summary


selftest_fn = selftest  # run_score's `selftest` flag shadows the function's name inside it


def run_score_config(cfg: ScoreConfig) -> dict:
    """`aha score` entry point: run_score with a ScoreConfig's fields."""
    return run_score(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
