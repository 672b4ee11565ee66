"""Language-consistency reward (R1 §2.3.3): the share of the reasoning's words in the target language.

R1 adds this reward because RL-trained chains of thought drift between languages. "Words" are runs of
letters; in scripts written without spaces (CJK ideographs, kana, hangul syllables) each character counts
as one word, as R1 does for Chinese. A word counts for the target language when all its letters are in
that language's script ranges (SCRIPTS; add an entry to support another language). The reasoning is the
`<think>` part (up to `<answer>` when `</think>` is missing), or the whole text when there is none; tag
names are markup, not words. Reasoning with no words at all (pure arithmetic) has nothing to mix and scores 1.

Both rules close a reward hack seen in recipes/r1.yaml's final stage: when "answer" inside `<answer>` counted
as an English word and word-free reasoning scored 0, `23 - 60 = 8` scored 0 inside `<think>…</think>` and 1
once the model dropped `</think>`, so six RL steps taught it to drop the tag.
"""

from __future__ import annotations

import re

from aha.errors import AhaError, closest
from aha.rewards.extract import ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, split_think

# Unicode ranges per target language (inclusive). Latin covers ASCII letters and Latin-1/Extended-A/B
# so that "naïve" or "Schrödinger" stay English words.
SCRIPTS: dict[str, list[tuple[int, int]]] = {
    "en": [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F)],
    "zh": [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F)],
    "ja": [(0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF)],
    "ko": [(0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F)],
    "ru": [(0x400, 0x4FF)],
}

# Characters that are one word each (scripts without spaces between words).
_CHAR_WORDS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
# A word: one char-word character, or a run of other letters (\w minus digits and underscore).
_WORD = re.compile(f"[{_CHAR_WORDS}]|(?:(?![{_CHAR_WORDS}])[^\\W\\d_])+")
# Runs of letters of any script. Most runs are plain ASCII words, counted without the slower _WORD split.
_RUN = re.compile(r"[^\W\d_]+")
_ASCII_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _script_class(lang: str) -> re.Pattern[str]:
    ranges = "".join(f"{chr(a)}-{chr(b)}" for a, b in SCRIPTS[lang])
    return re.compile(f"[{ranges}]+")


_CLASSES: dict[str, tuple[re.Pattern[str], bool]] = {}


def check_language(lang: str) -> str:
    """`lang` when SCRIPTS knows it, else AhaError."""
    if lang not in SCRIPTS:
        raise AhaError(f"unknown language '{lang}' for the language reward{closest(lang, SCRIPTS)}")
    return lang


def language_share(text: str, lang: str = "en") -> float:
    """Share in [0, 1] of the words of `text` written in `lang`'s script; 0 when there are no words."""
    entry = _CLASSES.get(lang)
    if entry is None:
        cls = _script_class(check_language(lang))
        entry = _CLASSES[lang] = (cls, cls.fullmatch(_ASCII_LETTERS) is not None)
    cls, ascii_is_target = entry
    runs = _RUN.findall(text)
    n_ascii = sum(map(str.isascii, runs))
    total, target = n_ascii, (n_ascii if ascii_is_target else 0)
    if n_ascii < len(runs):
        full = cls.fullmatch
        for run in runs:
            if not run.isascii():
                words = _WORD.findall(run)
                total += len(words)
                target += sum(1 for w in words if full(w))
    return target / total if total else 0.0


_TAG = re.compile(r"</?(?:think|answer)>")


def language_reward(text: str, lang: str = "en") -> float:
    """`language_share` of the reasoning: the `<think>` part, ending at `<answer>` when `</think>` is missing
    (the whole text when there is no think part); tags removed. 1.0 when the reasoning has no words."""
    reasoning, _ = split_think(text)
    if THINK_OPEN not in text and THINK_CLOSE not in text:
        reasoning = text
    elif THINK_CLOSE not in text and ANSWER_OPEN in reasoning:
        reasoning = reasoning[:reasoning.find(ANSWER_OPEN)]
    reasoning = _TAG.sub(" ", reasoning)
    return language_share(reasoning, lang) if _RUN.search(reasoning) else 1.0
