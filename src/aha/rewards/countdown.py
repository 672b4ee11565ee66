"""Countdown (TinyZero's R1-Zero replication task): combine the given numbers into the target.

The extracted answer must be an arithmetic expression that uses every given number exactly once (as a
multiset: a number given twice must appear twice), only binary `+ - * /` and parentheses, and equals the
target exactly. Evaluation is our own `ast` walker over `fractions.Fraction`: never `eval`, never sympy
(reasoning-gym's countdown scorer calls sympy's `parse_expr`, which runs `eval` on the model's text).

Choices (see docs/rewards.md):
- `×`/`·` and `÷` are read as `*` and `/`; `−` as `-`. A trailing `= <target>` is allowed (models like
  writing the equation); any other `=` fails.
- Unary minus/plus are rejected: the game combines numbers with binary operations only, and a sign
  would let `-(a - b)` stand in for `b - a` or reach negative targets the game does not allow.
- `**`, `//`, `%`, names, calls, floats, and literals with more digits than any given number are
  rejected; expressions longer than MAX_EXPR_CHARS are rejected before parsing.
- Division by zero scores 0; `/` is exact rational division (6/4 stays 3/2).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from aha.rewards.base import GoldError
from aha.rewards.extract import extract_answer, unbox

MAX_EXPR_CHARS = 512
_INT_LITERAL = re.compile(r"-?[0-9]{1,32}")
_ALLOWED_CHARS = frozenset("0123456789+-*/() ")
_TRANSLATE = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "\t": " ", "\n": " "})
_OPS = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__}


class _Reject(Exception):
    """The expression is not a legal countdown expression."""


def normalize_expression(answer: str, target: int) -> str | None:
    """The bare expression: symbols translated, `\\boxed{}`/`$` unwrapped, a trailing `= target` removed;
    None when something other than the target follows `=`."""
    s = unbox(answer).translate(_TRANSLATE).replace("\\times", "*").replace("\\div", "/").strip()
    if "=" in s:
        lhs, _, rhs = s.rpartition("=")
        rhs = rhs.strip()
        # ASCII digits only: str.isdigit() accepts "²", which int() then rejects.
        if "=" in lhs or not _INT_LITERAL.fullmatch(rhs) or int(rhs) != target:
            return None
        s = lhs.strip()
    return s


def _walk(node: ast.AST, literals: list[int], max_digits: int) -> Fraction:
    if isinstance(node, ast.Expression):
        return _walk(node.body, literals, max_digits)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if len(str(node.value)) > max_digits:
            raise _Reject("literal larger than any given number")
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp):
        left = _walk(node.left, literals, max_digits)
        right = _walk(node.right, literals, max_digits)
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise _Reject("division by zero")
            return left / right
        op = _OPS.get(type(node.op))
        if op is None:
            raise _Reject(f"operator {type(node.op).__name__} not allowed")
        return op(left, right)
    raise _Reject(f"{type(node).__name__} not allowed")


def evaluate(expr: str, numbers: Sequence[int]) -> Fraction | None:
    """The exact value of a legal countdown expression over `numbers`, or None when it is illegal
    (wrong characters or nodes, a number reused or missing, division by zero, too long)."""
    if not expr or len(expr) > MAX_EXPR_CHARS or not set(expr) <= _ALLOWED_CHARS:
        return None
    if "**" in expr or "//" in expr:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    literals: list[int] = []
    max_digits = max((len(str(abs(n))) for n in numbers), default=1)
    try:
        value = _walk(tree, literals, max_digits)
    except (_Reject, RecursionError, ZeroDivisionError):
        return None
    if Counter(literals) != Counter(numbers):
        return None
    return value


def gold_fields(numbers: object, target: object) -> tuple[list[int], int]:
    """Validated (numbers, target); GoldError when they are missing or not integers."""
    if not isinstance(numbers, (list, tuple)) or not numbers:
        raise GoldError(f"countdown needs a non-empty list of numbers, got {numbers!r:.80}")
    if not all(type(n) is int for n in numbers) or type(target) is not int:
        raise GoldError(f"countdown numbers and target must be integers, got {numbers!r:.80} -> {target!r:.20}")
    return list(numbers), target


def countdown_accuracy(text: str, numbers: Sequence[int], target: int) -> float:
    """1.0 when the extracted answer is a legal expression over `numbers` equal to `target`, else 0.0."""
    nums, goal = gold_fields(numbers, target)
    answer = extract_answer(text)
    if not answer:
        return 0.0
    expr = normalize_expression(answer, goal)
    if expr is None:
        return 0.0
    value = evaluate(expr, nums)
    return 1.0 if value is not None and value == goal else 0.0


def solve(numbers: Sequence[int], target: int, max_numbers: int = 5) -> str | None:
    """An expression reaching `target` with all `numbers`, or None (used by the selftest when a countdown
    row has no gold expression). Exhaustive over pairwise combinations, so only for small inputs."""
    if len(numbers) > max_numbers or not numbers:
        return None
    seen: set[tuple] = set()

    def rec(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == target else None
        key = tuple(sorted(v for v, _ in items))
        if key in seen:
            return None
        seen.add(key)
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j:
                    continue
                (a, ea), (b, eb) = items[i], items[j]
                rest = [items[k] for k in range(len(items)) if k not in (i, j)]
                cands = [(a + b, f"({ea} + {eb})"), (a - b, f"({ea} - {eb})"), (a * b, f"({ea} * {eb})")]
                if b != 0:
                    cands.append((a / b, f"({ea} / {eb})"))
                for v, e in cands:
                    found = rec(rest + [(v, e)])
                    if found:
                        return found
        return None

    return rec([(Fraction(n), str(n)) for n in numbers])
