"""Format rewards (R1 §2.2.2): the completion must be `<think> reasoning </think> <answer> answer </answer>`.

`format_strict` is R1's rule, read strictly: the whole text is exactly one think block followed by one
answer block with a non-empty answer, and NOTHING after `</answer>` (whitespace aside). Other verifiers
(open-r1's regex with `re.match`) accept trailing text; we do not, because text after the answer is where
a policy learns to keep talking (and hedge) after committing. A template that prefills `<think>` puts it
back in front of the completion before scoring (`aha.data.templates.with_prefill`), so the rule is the same.

`format_partial` is shaping for small models that rarely write tags: 0.25 for each of the four tags
that appears exactly once, in any order. Both are plain `str.count`/`find`: linear time.
"""

from __future__ import annotations

from aha.rewards.extract import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def format_strict(text: str) -> float:
    """1.0 when `text` is `<think>…</think>` then `<answer>…</answer>` (non-empty answer) and nothing else
    but whitespace; each tag exactly once. Else 0.0."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return 0.0
    s = text.strip()
    if not (s.startswith(THINK_OPEN) and s.endswith(ANSWER_CLOSE)):
        return 0.0
    think_close = s.find(THINK_CLOSE)
    answer_open = s.find(ANSWER_OPEN)
    if answer_open < think_close:
        return 0.0
    if s[think_close + len(THINK_CLOSE) : answer_open].strip():
        return 0.0
    answer = s[answer_open + len(ANSWER_OPEN) : len(s) - len(ANSWER_CLOSE)]
    return 1.0 if answer.strip() else 0.0


def format_partial(text: str) -> float:
    """0.25 for each of `<think>`, `</think>`, `<answer>`, `</answer>` present exactly once: in [0, 1]."""
    return sum(0.25 for tag in TAGS if text.count(tag) == 1)
