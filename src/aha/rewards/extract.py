"""Pull the final answer and the reasoning out of a completion.

R1's template asks for `<think> reasoning </think> <answer> answer </answer>`; the answer is the content
of the LAST `<answer>…</answer>` pair (a model may quote the tags while thinking), else the last
`\\boxed{…}` anywhere (the MATH convention, which small instruct models use without being asked), else
nothing; `final_answer` narrows an answer that contains a `\\boxed{…}` to the box. Everything here is
linear in the text length: plain `str.find`/`rfind` and one brace scan, no backtracking regex, so a 1 MB
completion costs milliseconds.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_BOXED = "\\boxed{"


def answer_tag_content(text: str) -> str | None:
    """The content of the last complete `<answer>…</answer>` pair, or None."""
    close = text.rfind(ANSWER_CLOSE)
    if close < 0:
        return None
    open_ = text.rfind(ANSWER_OPEN, 0, close)
    if open_ < 0:
        return None
    return text[open_ + len(ANSWER_OPEN) : close]


# A backslash escapes the next character (`\\{` is a literal brace in set notation); otherwise braces nest.
# Alternation of fixed-width branches: the engine never backtracks, one pass over the text.
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)


def _matching_close(text: str, open_brace: int) -> int:
    """Index of the `}` closing the `{` at `open_brace`, or -1."""
    depth = 0
    for m in _BRACE_TOKENS.finditer(text, open_brace):
        c = m.group()
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{…}` whose braces balance, or None.

    Scanning from each candidate separately would be quadratic on `\\boxed{\\boxed{\\boxed{…` junk, so the
    braces are matched once, left to right, from the first candidate on (a stack of open positions)."""
    first = text.find(_BOXED)
    if first < 0:
        return None
    last = text.rfind(_BOXED)
    if last == first:
        close = _matching_close(text, first + len(_BOXED) - 1)
        return text[first + len(_BOXED) : close] if close >= 0 else None
    match: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKENS.finditer(text, first):
        c = m.group()
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            match[stack.pop()] = m.start()
    pos = last
    while pos >= 0:
        brace = pos + len(_BOXED) - 1
        if brace in match:
            return text[brace + 1 : match[brace]]
        pos = text.rfind(_BOXED, 0, pos)
    return None


def extract_answer(text: str) -> str | None:
    """The final answer: the stripped content of the last `<answer>…</answer>`, else of the last balanced
    `\\boxed{…}`, else None. An empty answer comes back as "" (present but empty), not None."""
    if not isinstance(text, str):
        return None
    tagged = answer_tag_content(text)
    if tagged is not None:
        return tagged.strip()
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else None


def final_answer(text: str) -> str | None:
    """What the verifiers compare: `extract_answer(text)`, narrowed to the content of its `\\boxed{…}` when
    it has exactly one, balanced (`<answer>First … so the result is \\boxed{42}.</answer>` -> "42": the box
    is the answer, the text around it is explanation). Several boxes are left to the verifier as they are,
    so `\\boxed{4} or \\boxed{5}` stays a hedge rather than becoming its last box."""
    answer = extract_answer(text)
    if answer and answer.count(_BOXED) == 1:
        boxed = last_boxed(answer)
        if boxed is not None:
            return boxed.strip()
    return answer


def unbox(answer: str) -> str:
    """`\\boxed{X}` → `X` and `$X$` → `X` when they wrap the whole answer (models box inside the tags)."""
    s = answer.strip()
    for _ in range(3):  # a few layers at most: `$\\boxed{X}$`
        if s.startswith(_BOXED) and s.endswith("}") and _matching_close(s, len(_BOXED) - 1) == len(s) - 1:
            s = s[len(_BOXED) : -1].strip()
        elif len(s) >= 2 and s[0] == "$" and s[-1] == "$" and "$" not in s.strip("$"):
            s = s.strip("$").strip()
        else:
            break
    return s


def split_think(text: str) -> tuple[str, str]:
    """(reasoning, rest). The reasoning is what lies between `<think>` and the first `</think>`; with no
    `<think>` before the close (a template that prefilled it), everything before `</think>`; with an open
    `<think>` and no close (truncated), everything after it. No think part at all: ("", text)."""
    close = text.find(THINK_CLOSE)
    if close < 0:
        open_ = text.find(THINK_OPEN)
        if open_ < 0:
            return "", text
        return text[open_ + len(THINK_OPEN) :], ""
    open_ = text.rfind(THINK_OPEN, 0, close)
    start = open_ + len(THINK_OPEN) if open_ >= 0 else 0
    return text[start:close], text[close + len(THINK_CLOSE) :]
