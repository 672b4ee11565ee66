"""GSM8K-style `number` answers: the final number of the extracted answer must equal the gold number.

Numbers are compared exactly as fractions built from their decimal text (`18.0` == `18`, `0.50` == `1/2`,
huge integers stay exact), never with a float tolerance. Dollar signs, thousands separators and units
are ignored; a percent sign is ignored too (GSM8K golds are written without it: "25%" means 25).
The answer must be extracted (answer tags or `\\boxed{}`): R1 rewards the answer, not the last number
of the reasoning.
"""

from __future__ import annotations

import re
from fractions import Fraction

from aha.rewards.base import GoldError
from aha.rewards.extract import extract_answer

# Longest numeric token considered: longer ones are junk (and Fraction/int parsing of 10^6 digits is slow).
MAX_NUMBER_CHARS = 64

# A signed number with optional thousands groups, decimals, or a simple a/b fraction. Every branch is
# anchored on digits with no nested quantifiers, so `finditer` is linear.
_NUMBER = re.compile(
    r"(?<![\w.])([-−]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s*/\s*(\d+)(?!\.\d))?"
)


def last_number(text: str) -> Fraction | None:
    """The last number in `text` as an exact Fraction, or None."""
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    if last is None or len(last.group(0)) > MAX_NUMBER_CHARS:
        return None
    sign, whole, frac, denom = last.groups()
    try:
        value = Fraction(whole.replace(",", "") + (frac or ""))
        if denom is not None:
            d = int(denom)
            if d == 0:
                return None
            value /= d
    except (ValueError, ZeroDivisionError):
        return None
    return -value if sign else value


def _clean(text: str) -> str:
    # LaTeX spellings of the same thing: \frac{a}{b}, \$, {,} thousands, \! spacing.
    text = text.replace("{,}", ",").replace("\\!", "").replace("\\$", "$").replace("\\%", "%")
    return re.sub(r"\\[dt]?frac\{(\d+)\}\{(\d+)\}", r"\1/\2", text)


def gold_number(gold: str) -> Fraction:
    """The gold number (the last number of the gold text, so a raw `... #### 72` works); GoldError if none."""
    value = last_number(_clean(str(gold)))
    if value is None:
        raise GoldError(f"gold answer {str(gold)[:80]!r} contains no number")
    return value


def number_accuracy(text: str, gold: str) -> float:
    """1.0 when the last number of the extracted answer equals the gold number exactly, else 0.0."""
    want = gold_number(gold)
    answer = extract_answer(text)
    if not answer:
        return 0.0
    got = last_number(_clean(answer))
    return 1.0 if got is not None and got == want else 0.0
