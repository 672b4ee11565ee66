"""Math answers (MATH, AIME, NuminaMath): equivalence decided by HuggingFace's math-verify.

R1 checks the final answer with rules; math-verify is the rule set open-r1 uses (LaTeX and plain
expressions, fractions, percentages, sets, intervals, equations `x = 5`, thousands separators). Two
lessons are built in:
- Extract first. math-verify's own extraction finds nothing in `<answer>42</answer>` (no LaTeX
  environment, no "the answer is"), so we take the answer with `extract_answer` and wrap plain text in
  `$…$` before parsing. Text that already carries `$`, `\\(`, `\\[` or `\\boxed` is passed as is: wrapping
  it again breaks the environment, and math-verify's own handling turns "$4$ or $5$" into the set {4, 5}
  (a hedge scores 0).
- math-verify's time limits use `signal.alarm`, which raises inside threads and is silently off in some
  workers (the anchor bug: every MATH problem scored 0 in worker processes). We call it with its limits
  disabled (`parsing_timeout=None`, `timeout_seconds=None`) and enforce our own limit around the whole
  reward (aha.rewards.guard).

A gold answer that does not parse to a math object is a data error: `GoldError`, scored 0 by the guard
and reported once; it is never rewarded.
"""

from __future__ import annotations

import re
from functools import lru_cache

from aha.rewards.base import GoldError
from aha.rewards.extract import extract_answer

# Answers longer than this are not final answers; parsing them costs time and invites hacks.
MAX_ANSWER_CHARS = 1000
_GOLD_FAILED = object()
# Plain integers, optionally with thousands separators: compared exactly without sympy (the common case
# for AIME/GSM8K-style golds; math-verify reads "1,234" as 1234 and "1,2345" as a set, and so do we).
_PLAIN_INT = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d{1,100})")
_LATEX_MARKERS = ("$", "\\(", "\\[", "\\boxed")


def _mv():
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # Silence the once-per-process "timeout is disabled" warning: disabling it is deliberate (see above).
    for mod in (math_verify.parser, math_verify.grader):
        if hasattr(mod, "TIMEOUT_WARNING_SHOWN"):
            mod.TIMEOUT_WARNING_SHOWN = True
    return math_verify


def warmup() -> None:
    """Import math-verify, sympy and the LaTeX parser and parse once, outside any time limit: the first
    call costs about a second, which must not be charged to a completion's time budget."""
    mv = _mv()
    mv.verify(mv.parse("$\\frac{1}{2}$", parsing_timeout=None), mv.parse("$0.5$", parsing_timeout=None),
              timeout_seconds=None)


# Plain words: inside `$…$` LaTeX reads "Sunday" as the product s*u*n*d*a*y, which equals any anagram
# ("dunsay"); as `\text{Sunday}` it is one symbol.
_WORDS = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z]+)*")


def _wrap(text: str) -> str:
    if any(m in text for m in _LATEX_MARKERS):
        return text
    if _WORDS.fullmatch(text):
        return f"$\\text{{{text}}}$"
    return f"${text}$"


def _parse(text: str) -> list:
    mv = _mv()
    return mv.parse(_wrap(text), parsing_timeout=None)


def _has_math_object(parsed: list) -> bool:
    from sympy import Basic, MatrixBase

    return any(isinstance(p, (Basic, MatrixBase)) for p in parsed)


@lru_cache(maxsize=8192)
def _parse_gold_cached(gold: str):
    parsed = _parse(gold)
    if not _has_math_object(parsed):
        # A bare-text fallback is not enough: string comparison against an unparsed gold is how a
        # verifier ends up rewarding junk. Try the raw text once (math-verify's own extraction).
        parsed = _mv().parse(gold, parsing_timeout=None)
        if not _has_math_object(parsed):
            return _GOLD_FAILED
    return parsed


def parse_gold(gold: str) -> list:
    """math-verify's parse of the gold answer (cached per process); GoldError when it yields no math
    object."""
    gold = str(gold).strip()
    if not gold:
        raise GoldError("empty gold answer")
    parsed = _parse_gold_cached(gold)
    if parsed is _GOLD_FAILED:
        raise GoldError(f"math-verify cannot parse gold answer {gold[:80]!r}")
    return parsed


def _plain_int(text: str) -> int | None:
    text = text.strip()
    return int(text.replace(",", "")) if _PLAIN_INT.fullmatch(text) else None


def math_equal(gold: str, answer: str) -> bool:
    """Whether `answer` (already extracted) is equivalent to `gold` according to math-verify (two plain
    integers are compared exactly, without sympy)."""
    answer = answer.strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        parse_gold(gold)
        return False
    g, a = _plain_int(gold), _plain_int(answer)
    if g is not None and a is not None:
        return g == a
    want = parse_gold(gold)
    got = _parse(answer)
    if not got:
        return False
    return bool(_mv().verify(want, got, timeout_seconds=None))


def math_accuracy(text: str, gold: str) -> float:
    """1.0 when the extracted answer of `text` is equivalent to `gold`, else 0.0. GoldError for a bad gold
    (checked first, so a bad gold is reported even when the completion has no answer)."""
    parse_gold(gold)
    answer = extract_answer(text)
    if not answer:
        return 0.0
    return 1.0 if math_equal(gold, answer) else 0.0
