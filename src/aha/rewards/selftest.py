"""The verifiers' self-test on gold answers: each gold wrapped as `<think>…</think><answer>GOLD</answer>`
must score accuracy 1, a perturbed gold (first integer n -> 9 followed by n + 1; countdown: the target + 1) must
score 0, and too many golds that do not parse or do not score 1 fail loudly. The anchors: a verifier that
scored every MATH problem 0 in worker processes, and one that gave 1.0 whenever the gold did not parse. The
trainer runs `selftest` before step 1; `aha score selftest=true` runs it on a file or built-in golds.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from aha.data.example import Example
from aha.errors import AhaError
from aha.rewards.countdown import evaluate, normalize_expression, solve
from aha.rollout.base import Completion

_INT = re.compile(r"\d+")


def int_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


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
    if not int_list(numbers) or type(target) is not int:
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
