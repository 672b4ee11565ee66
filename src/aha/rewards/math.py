"""Math answers (MATH, AIME, NuminaMath): equivalence decided by HuggingFace's math-verify.

R1 checks the final answer with rules; math-verify is the rule set open-r1 uses (LaTeX and plain
expressions, fractions, percentages, sets, intervals, equations `x = 5`, thousands separators). Three
lessons are built in:
- Extract first. math-verify's own extraction finds nothing in `<answer>42</answer>` (no LaTeX
  environment, no "the answer is"), so we take the answer with `final_answer` (the answer tags, narrowed
  to a single `\\boxed{}` inside them) and parse its math wrapped in `$…$`.
- Parse the answer whole; never mine it. math-verify is built to find an answer anywhere in a completion:
  on 500 characters of junk it returns the rightmost fragment that parses, a stray `5` (5 of 250 fuzzed
  junk answers scored 1 for gold 5). The answer is therefore its math delimiters' content (prose around
  them allowed) or the whole text less a lead-in ("The answer is"), parsed with the LaTeX extractor only;
  text that is not one piece of math scores 0 (`answer_math`). A collection of several values never
  equals a gold that is one value. Golds are trusted data and keep math-verify's lenient parse.
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
from aha.rewards.extract import final_answer
from aha.rewards.number import join_digit_groups

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


# -- normalizing an answer's math --------------------------------------------------------------------
_UNICODE = str.maketrans({"−": "-", "≤": "\\le ", "≥": "\\ge ", "∞": "\\infty ", "°": "^\\circ ", "√": "\\sqrt "})
_LE = r"(?:<=|\\leqslant|\\leq|\\le|\\lt|<)"
_GE = r"(?:>=|\\geqslant|\\geq|\\ge|\\gt|>)"
_STRICT = ("<", ">", "\\lt", "\\gt")
_REL_WORDS = re.compile(r"\\[lg](?:e|t|eq|eqslant)\b|[<>=]")
_BOUND = r"([^<>=]+?)"
_VAR = r"([A-Za-z])"
_CHAINS = [  # (pattern, orientation): a <= x <= b, b >= x >= a, and the one-sided forms
    (re.compile(rf"{_BOUND}\s*({_LE})\s*{_VAR}\s*({_LE})\s*{_BOUND}"), "lo op x op hi"),
    (re.compile(rf"{_BOUND}\s*({_GE})\s*{_VAR}\s*({_GE})\s*{_BOUND}"), "hi op x op lo"),
    (re.compile(rf"{_VAR}\s*({_LE})\s*{_BOUND}"), "x op hi"),
    (re.compile(rf"{_VAR}\s*({_GE})\s*{_BOUND}"), "x op lo"),
    (re.compile(rf"{_BOUND}\s*({_LE})\s*{_VAR}"), "lo op x"),
    (re.compile(rf"{_BOUND}\s*({_GE})\s*{_VAR}"), "hi op x"),
]


def _bound_ok(b: str) -> bool:
    b = b.strip()
    return bool(b) and not _REL_WORDS.search(b) and not re.fullmatch(r"[A-Za-z]", b)


def _interval_of_inequality(text: str) -> str:
    """`-2 \\le x \\le 7` -> `[-2, 7]`, `-2 < x <= 7` -> `(-2, 7]`, `x > 3` -> `(3, \\infty)`: an inequality in
    one variable (one letter) written as the interval it describes; a strict `<` gives an open end. Other
    text is returned unchanged."""
    s = text.strip()
    for pattern, form in _CHAINS:
        m = pattern.fullmatch(s)
        if m is None:
            continue
        g = m.groups()
        if form == "lo op x op hi":
            lo, op_lo, _, op_hi, hi = g
        elif form == "hi op x op lo":
            hi, op_hi, _, op_lo, lo = g
        elif form == "x op hi":
            _, op_hi, hi = g
            lo, op_lo = "-\\infty", "<"
        elif form == "x op lo":
            _, op_lo, lo = g
            hi, op_hi = "\\infty", "<"
        elif form == "lo op x":
            lo, op_lo, _ = g
            hi, op_hi = "\\infty", "<"
        else:  # "hi op x"
            hi, op_hi, _ = g
            lo, op_lo = "-\\infty", "<"
        if not (_bound_ok(lo) and _bound_ok(hi)):
            return text
        left = "(" if op_lo in _STRICT else "["
        right = ")" if op_hi in _STRICT else "]"
        return f"{left}{lo.strip()}, {hi.strip()}{right}"
    return text


def _normalize(math: str) -> str:
    """The spellings both sides share: Unicode signs as LaTeX, space-separated thousands groups joined
    (aha.rewards.number.join_digit_groups), an inequality in one variable as its interval."""
    return _interval_of_inequality(join_digit_groups(math.translate(_UNICODE)))


# Math delimiters of an answer that mixes prose and math: "The answer is $\\frac{1}{2}$."
_DELIMITED = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
# Around the math only words and light punctuation: no digits, no operators, no stray symbols.
# One character at a time (each matches one branch only), so the match is linear.
_PROSE = re.compile(r"(?:[^\W\d_]|[\s.,:;!?'\"()-])*")
_ADJACENT_NUMBERS = re.compile(r"\d(?:\s|\\[,;: !])+\d")
# A lead-in before plain math: two or more words ("the answer is 5"), or words and a colon or comma
# ("Answer: 5", "Therefore, x = 5").
# Words have two letters or more, so a variable (`x = 5`) is never taken for one.
_LEAD_IN = re.compile(r"(?:(?:[A-Za-z]{2,}[ \t,]+){2,}|[A-Za-z]{2,}(?:[ \t]+[A-Za-z]{2,})*[ \t]*[:,]\s*)(?=\S)")


def answer_math(answer: str) -> str | None:
    """The math of an extracted answer as ONE LaTeX string, or None when the answer is not one piece of
    math. Math-verify is built to find an answer somewhere in a whole completion: given 500 characters of
    junk, it returns the rightmost fragment that parses (a stray `5`). The answer tags already told us
    where the answer is, so the answer must be the math: the math delimiters' content when the rest is
    prose (several delimited pieces are joined with commas, so a hedge "$4$ or $5$" is the set {4, 5});
    otherwise the whole text, less a lead-in of words ("The answer is") and a final period."""
    pieces = [next(g for g in m.groups() if g is not None) for m in _DELIMITED.finditer(answer)]
    if pieces:
        if not _PROSE.fullmatch(_DELIMITED.sub(" ", answer)):
            return None
        math = ", ".join(p.strip() for p in pieces)
    else:
        if _WORDS.fullmatch(answer):
            return f"\\text{{{answer}}}"
        m = _LEAD_IN.match(answer)
        math = answer[m.end():] if m else answer
    math = _normalize(math.strip().removesuffix(".").strip())
    # Two numbers side by side after thousands groups are joined (`1 2`, `12 345 67`): LaTeX reads them as
    # a mixed number, 1 + 2 = 3. Not one number; no answer.
    if not math or _ADJACENT_NUMBERS.search(math):
        return None
    return math


def _parse_answer(answer: str) -> list:
    """math-verify's parse of the answer's math as a whole (LaTeX only: no mining for fragments)."""
    from math_verify import LatexExtractionConfig

    math = answer_math(answer)
    if math is None:
        return []
    parsed = _mv().parse(f"${math}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    return [p for p in parsed if not isinstance(p, str)]


def _size(obj) -> int:
    """How many values `obj` stands for: a finite set or tuple its distinct elements, a list its length,
    an interval of positive length or another set or a system of relations 2 (many), a relation `x = S`
    the size of S, anything else 1."""
    from sympy import Eq, FiniteSet, Interval, Set, Tuple
    from sympy.logic.boolalg import BooleanFunction

    if isinstance(obj, Eq):
        return _size(obj.rhs)
    if isinstance(obj, (FiniteSet, Tuple, list, tuple)):
        return len(set(obj)) if isinstance(obj, FiniteSet) else len(obj)
    if isinstance(obj, Interval):
        return 1 if obj.start == obj.end else 2
    if isinstance(obj, (Set, BooleanFunction)):
        return 2
    return 1


def _has_math_object(parsed: list) -> bool:
    from sympy import Basic, MatrixBase

    return any(isinstance(p, (Basic, MatrixBase)) for p in parsed)


@lru_cache(maxsize=8192)
def _parse_gold_cached(gold: str):
    parsed = _parse(_normalize(gold))
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
    text = join_digit_groups(text.strip())
    return int(text.replace(",", "")) if _PLAIN_INT.fullmatch(text) else None


def math_equal(gold: str, answer: str) -> bool:
    """Whether `answer` (already extracted) is equivalent to `gold` according to math-verify (two plain
    integers are compared exactly, without sympy). The answer's math is parsed as a whole
    (`answer_math`); a collection of several values (a set, tuple, list, interval, system of relations)
    never equals a gold that is one value, even when it contains it."""
    answer = answer.strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        parse_gold(gold)
        return False
    g, a = _plain_int(gold), _plain_int(answer)
    if g is not None and a is not None:
        return g == a
    want = [w for w in parse_gold(gold) if not isinstance(w, str)]
    got = _parse_answer(answer)
    if not got:
        return False
    if all(_size(w) == 1 for w in want) and any(_size(p) > 1 for p in got):
        return False
    return bool(_mv().verify(want, got, timeout_seconds=None))


def math_accuracy(text: str, gold: str) -> float:
    """1.0 when the extracted answer of `text` is equivalent to `gold`, else 0.0. GoldError for a bad gold
    (checked first, so a bad gold is reported even when the completion has no answer)."""
    parse_gold(gold)
    answer = final_answer(text)
    if not answer:
        return 0.0
    return 1.0 if math_equal(gold, answer) else 0.0
