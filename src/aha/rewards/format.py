"""Format rewards (R1 §2.2.2): the completion must be `<think> reasoning </think> <answer> answer </answer>`.

`format_strict` is R1's rule, read strictly: the whole text is exactly one think block followed by one
answer block with a non-empty answer, and NOTHING after `</answer>` (whitespace aside). Other verifiers
(open-r1's regex with `re.match`) accept trailing text; we do not, because text after the answer is where
a policy learns to keep talking (and hedge) after committing. A template that prefills `<think>` puts it
back in front of the completion before scoring (`aha.data.templates.with_prefill`), so the rule is the same.

`format_r1` is R1's final output form (§2.3.1, cold start onward): the think block, then a non-empty
readable summary, then the answer block. `format_strict` gives it 0 (text between `</think>` and
`<answer>`); use `format_r1` for stages whose outputs carry a summary.

`format_partial` is shaping for small models that rarely write tags: 0.25 for each of the four tags
that appears exactly once, in any order. Both are plain `str.count`/`find`: linear time.
"""

from __future__ import annotations

from aha.rewards.extract import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def _blocks(text: str) -> tuple[str, str, str] | None:
    """(reasoning, between, answer) of `<think>reasoning</think>between<answer>answer</answer>` filling the
    whole text (whitespace aside), each tag exactly once and in that order; None for any other shape."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return None
    s = text.strip()
    if not (s.startswith(THINK_OPEN) and s.endswith(ANSWER_CLOSE)):
        return None
    close, open_answer = s.find(THINK_CLOSE), s.find(ANSWER_OPEN)
    if open_answer < close:
        return None
    return (s[len(THINK_OPEN):close], s[close + len(THINK_CLOSE):open_answer],
            s[open_answer + len(ANSWER_OPEN):-len(ANSWER_CLOSE)])


def format_strict(text: str) -> float:
    """1.0 when `text` is `<think>…</think>` then `<answer>…</answer>` (non-empty answer) and nothing else
    but whitespace; each tag exactly once. Else 0.0."""
    parts = _blocks(text)
    return 1.0 if parts and not parts[1].strip() and parts[2].strip() else 0.0


def format_partial(text: str) -> float:
    """0.25 for each of `<think>`, `</think>`, `<answer>`, `</answer>` present exactly once: in [0, 1]."""
    return sum(0.25 for tag in TAGS if text.count(tag) == 1)


def format_r1(text: str) -> float:
    """1.0 when `text` is `<think>reasoning</think>`, a non-empty summary, then `<answer>answer</answer>` at the
    end; each tag exactly once, non-empty reasoning and answer. Else 0.0."""
    parts = _blocks(text)
    return 1.0 if parts and all(x.strip() for x in parts) else 0.0
