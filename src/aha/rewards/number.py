"""GSM8K-style `number` answers: the final number of the extracted answer must equal the gold number.

Numbers are compared exactly as fractions built from their decimal text (`18.0` == `18`, `0.50` == `1/2`,
huge integers stay exact), never with a float tolerance. Dollar signs, thousands separators and units
are ignored; a percent sign is ignored too (GSM8K golds are written without it: "25%" means 25).
Digit groups may be separated by commas or by spaces (`1 000`, `12 345 678`, also no-break, thin and
narrow spaces and LaTeX `\\,`), but only as thousands groups: one to three digits, then groups of exactly
three, so `1 2` stays two numbers and `12 345 67` is not joined.
The answer must be extracted (answer tags or `\\boxed{}`; a `\\boxed{}` inside the answer tags is the
answer): R1 rewards the answer, not the last number of the reasoning.
"""

from __future__ import annotations

import re
from fractions import Fraction

from aha.rewards.base import GoldError
from aha.rewards.extract import final_answer

# Longest numeric token considered: longer ones are junk (and Fraction/int parsing of 10^6 digits is slow).
MAX_NUMBER_CHARS = 64

# A signed number with optional thousands groups, decimals, or a simple a/b fraction. Every branch is
# anchored on digits with no nested quantifiers, so `finditer` is linear.
_NUMBER = re.compile(
    r"(?<![\w.])([-−]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s*/\s*(\d+)(?!\.\d))?"
)


# Thousands groups separated by a space (plain, no-break U+00A0, thin U+2009, narrow no-break U+202F) or
# LaTeX's thin space `\,`: 1-3 digits, then groups of exactly 3. Not after a digit, a decimal point, a comma
# or a digit and a separator, and not followed by another digit or separator+digit, so `1 2`, `1234 567`,
# `0.123 456`, `1 2 345` and `12 345 67` are left alone.
_SEP = r"(?: |\u00a0|\u2009|\u202f|\\,)"
_SPACED_GROUPS = re.compile(
    rf"(?<![\d.,])(?<!\d[ \u00a0\u2009\u202f])(?<!\d\\,)(\d{{1,3}})((?:{_SEP}\d{{3}})+)(?!\d|{_SEP}\d)"
)


def join_digit_groups(text: str) -> str:
    """`1 000` -> `1000`, `12 345 678` -> `12345678`, `1\\,000` -> `1000`; other digit runs unchanged."""
    return _SPACED_GROUPS.sub(lambda m: m.group(1) + re.sub(r"\D", "", m.group(2)), text)


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
    text = join_digit_groups(text)
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
    answer = final_answer(text)
    if not answer:
        return 0.0
    got = last_number(_clean(answer))
    return 1.0 if got is not None and got == want else 0.0
