"""`aha score`: score a JSONL of completions offline, or self-test the verifiers on gold answers.

Scoring writes every input row back with `reward` (the weighted total) and one field per reward
component, atomically (a temporary file renamed into place; a row holding a lone UTF-16 surrogate is
written with JSON `\\uXXXX` escapes rather than crash the write after all the scoring), and prints the
mean of each component and the gold parse-failure rate. The self-test wraps each gold answer as `<think>…</think><answer>GOLD</answer>`
(must score accuracy 1) and a perturbed gold (first integer n -> 9 followed by n + 1; countdown: the target + 1) (must score 0),
and fails loudly when too many golds do not parse or do not score 1: the anchors are a verifier that
scored every MATH problem 0 in worker processes, and one that gave 1.0 whenever the gold did not parse.
The trainer runs `selftest` before step 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aha.config import Fraction, NonNegInt, PositiveFloat
from aha.data.example import Example
from aha.errors import AhaError, closest
from aha.rewards.config import RewardsConfig
from aha.rewards.countdown import evaluate, normalize_expression, solve
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


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


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
            if not _int_list(numbers):
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


# -- self-test -----------------------------------------------------------------------------------
_INT = re.compile(r"\d+")


def perturb(gold: str) -> str | None:
    """`gold` with its first integer n replaced by "9" + (n + 1) ("\\frac{1}{2}" -> "\\frac{92}{2}",
    "0.5" -> "91.5", "1 0\\n0 1" -> "92 0\\n0 1"), or None without digits. Adding 1 to the last digit would
    fall inside the tolerance of scorers that compare a few significant figures or allow an absolute
    error; the leading 9 alone is ignored by grid parsers that keep only 0s and 1s."""
    m = _INT.search(gold)
    if m is None or len(m.group()) > 1000:  # int() refuses very long digit strings
        return None
    return gold[: m.start()] + "9" + str(int(m.group()) + 1) + gold[m.end() :]


def _wrap(answer: str) -> Completion:
    return Completion(text=f"<think>Self-test: the gold answer.</think>\n<answer>{answer}</answer>")


def _countdown_gold(ex: Example) -> str | None:
    numbers, target = ex.metadata.get("numbers"), ex.metadata.get("target")
    if not _int_list(numbers) or type(target) is not int:
        return None
    expr = normalize_expression(ex.answer, target) if ex.answer else None
    if expr is not None and evaluate(expr, numbers) == target:
        return ex.answer
    return solve(numbers, target)


def _gold_and_negative(ex: Example) -> tuple[str | None, tuple[Completion, Example] | None]:
    """(gold answer text, or None when it cannot be checked; (perturbed completion, its example) or None)."""
    task = ex.task
    if task == "code":
        return None, None  # a canonical solution needs the sandbox and its own harness
    if task in ("countdown", "rg:countdown", "rg:puzzle24"):
        cd = ex
        if task != "countdown":  # routed reasoning-gym entries: the same check on a countdown-shaped copy
            entry = ex.metadata.get("entry") or {}
            meta = dict(entry.get("metadata") or {})
            if task == "rg:puzzle24":
                meta["target"] = 24
            cd = dataclasses.replace(ex, task="countdown", answer=str(entry.get("answer", "")), metadata=meta)
        gold = _countdown_gold(cd)
        if gold is None:
            return None, None
        wrong = dataclasses.replace(cd, metadata={**cd.metadata, "target": cd.metadata["target"] + 1})
        return gold, (_wrap(gold), wrong)
    gold = ex.answer
    if task.startswith("rg:"):
        entry = ex.metadata.get("entry")
        if not isinstance(entry, dict) or entry.get("answer") is None:
            return None, None  # datasets without a single oracle answer (graph_color, rush_hour, ...)
        gold = str(entry["answer"])
    bad = perturb(gold)
    return gold, ((_wrap(bad), ex) if bad is not None else None)


def selftest(examples: list[Example], reward_set, max_parse_failure: float = 0.01) -> dict:
    """Score each example's wrapped gold (must be accuracy 1) and a perturbed gold (must be 0; for
    reasoning-gym, below 1) through `reward_set`'s accuracy path (its workers included). Returns a
    report; raises AhaError when the gold parse-failure rate, the share of golds not scoring 1, or the
    share of perturbed golds scoring as correct exceeds `max_parse_failure`."""
    pos_c, pos_e, neg_c, neg_e = [], [], [], []
    skipped = 0
    for ex in examples:
        if "accuracy" not in reward_set.weights_for(ex.kind):
            skipped += 1  # a routing kind trained without accuracy (e.g. general prompts) has no gold to check
            continue
        gold, negative = _gold_and_negative(ex)
        if gold is None:
            skipped += 1
            continue
        pos_c.append(_wrap(gold))
        pos_e.append(ex)
        if negative is not None:
            neg_c.append(negative[0])
            neg_e.append(negative[1])
    report: dict[str, Any] = {"examples": len(examples), "checked": len(pos_c), "skipped": skipped}
    if not pos_c:
        report.update(gold_parse_failures=0, parse_failure_rate=0.0, gold_failures=0, gold_failure_rate=0.0,
                      negatives_checked=0, negative_failures=0, negative_failure_rate=0.0, failed_ids=[])
        return report
    stats = dict(reward_set.stats)  # the self-test's own timeouts and failures are not training's
    try:
        pos = reward_set.component("accuracy", pos_c, pos_e)
        pos_status = reward_set.last_status.get("accuracy", [])
        neg = reward_set.component("accuracy", neg_c, neg_e) if neg_c else []
    finally:
        reward_set.stats.update(stats)
    parse_fail = sum(1 for s in pos_status if s == "gold")
    not_one = [i for i, v in enumerate(pos) if v < 1.0]
    lenient = [i for i, v in enumerate(neg) if (v >= 1.0 if neg_e[i].task.startswith("rg:") else v > 0.0)]
    n = len(pos_c)
    report.update(
        gold_parse_failures=parse_fail,
        parse_failure_rate=parse_fail / n,
        gold_failures=len(not_one),
        gold_failure_rate=len(not_one) / n,
        negatives_checked=len(neg_c),
        negative_failures=len(lenient),
        negative_failure_rate=len(lenient) / len(neg_c) if neg_c else 0.0,
        failed_ids=[pos_e[i].id for i in not_one[:20]],
        lenient_ids=[neg_e[i].id for i in lenient[:20]],
    )
    problems = []
    if report["parse_failure_rate"] > max_parse_failure:
        problems.append(f"{parse_fail}/{n} gold answers do not parse")
    if report["gold_failure_rate"] > max_parse_failure:
        shown = ", ".join(f"{pos_e[i].id or i}: {pos_e[i].answer[:40]!r}" for i in not_one[:3])
        problems.append(f"{len(not_one)}/{n} wrapped gold answers do not score 1 ({shown})")
    if report["negative_failure_rate"] > max_parse_failure:
        shown = ", ".join(f"{neg_e[i].id or i}" for i in lenient[:3])
        problems.append(f"{len(lenient)}/{len(neg_c)} perturbed answers score as correct ({shown})")
    if problems:
        raise AhaError(f"reward self-test failed (limit {max_parse_failure:.1%}): " + "; ".join(problems))
    return report


# Gold answers in the shapes each verifier must handle, for `aha score selftest=true task=math|number`
# without an input file: these verifiers have no data set of their own to draw golds from.
BUILTIN_GOLDS: dict[str, tuple[str, ...]] = {
    "math": ("42", "-7", "1,450,000", r"\frac{1}{2}", r"-\frac{3}{4}", "0.75", r"\sqrt{2}/2", r"3\sqrt{3}",
             r"\{1, 2\}", "[-2, 7]", "(1, 2]", "(3, 4)", "x^2 + 1", r"\frac{\pi}{4}", r"50\%", "2^{10}",
             "10^{-3}", r"\text{Sunday}", "x = 5", r"\text{(C)}"),
    "number": ("72", "18", "-3", "0.5", "1,450,000", "3/4", "12345678901234567890123", "#### 1234"),
}


def selftest_examples(task: str, load) -> list[Example]:
    """The examples `aha score selftest=true` checks when there is no input file. `task` names a verifier
    (as it does for scoring): math and number have no data of their own, so they get `BUILTIN_GOLDS`;
    `rg:<dataset>` loads the reasoning-gym dataset `<dataset>`; any other name (countdown, a reasoning-gym
    dataset, a .jsonl, hf:NAME) is loaded as a task with `load(name)`."""
    if task in BUILTIN_GOLDS:
        return [Example(prompt="(built-in gold)", answer=g, task=task, id=f"{task}-builtin-{i}")
                for i, g in enumerate(BUILTIN_GOLDS[task])]
    if task == "code":
        raise AhaError("task 'code': the self-test skips code (its golds need the sandbox); give input=<file>.jsonl "
                       "or another task")
    return load(task[3:] if task.startswith("rg:") else task)


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
    from aha.io import atomic_write_text, read_jsonl
    from aha.rewards.rewardset import RewardSet

    if not input and selftest:
        # `aha score selftest=true task=chain_sum`: the task's own gold answers (first 200 problems)
        from aha.data.tasks import TaskConfig, load_task
        from aha.rewards.rewardset import RewardSet

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
    from aha.rewards.registry import REGISTRY

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
