"""Reasoning-gym tasks (`task = "rg:<dataset>"`): the dataset's own scorer on the extracted answer.

Each procedural dataset ships `score_answer(answer, entry)`; we call it on the stripped extracted
answer with the example's entry, and any exception scores 0. Scorers that run the model's text as code
are REFUSED (an AhaError naming the dataset and the reason), found by reading the installed source
(grep `eval(`, `exec(`, `parse_expr`, `sympify`) of reasoning-gym 0.1.25:

- countdown, puzzle24: sympy `parse_expr` (which calls `eval`) on the answer; aha scores them with its
  own countdown verifier instead (ROUTED; see aha.rewards.countdown).
- polynomial_multiplication, simple_integration, intermediate_integration: sympy `parse_expr` on the answer.
- binary_matrix, n_queens, spiral_matrix, string_insertion: `eval(answer)` for partial credit when the
  answer is not an exact match (`__import__('os').system(...)` would run).
- composite: dispatches to arbitrary sub-dataset scorers (and cannot be built without a config).

Boards of arc_agi/rearc entries that went through JSON (lists) are turned back into tuples before
scoring (TUPLE_BOARDS), or the scorer would never match them. `number_sorting` evals the GOLD answer only (when it is not JSON); it stays allowed. The scorer comes
from the dataset's default config (`reasoning_gym.get_score_answer_fn`), built once per process.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from aha.errors import AhaError, closest
from aha.rewards.base import GoldError
from aha.rewards.countdown import countdown_accuracy
from aha.rewards.extract import extract_answer

_EVAL = "its scorer calls eval() on the model's answer"
_PARSE_EXPR = "its scorer runs sympy parse_expr (eval) on the model's answer"
REFUSED: dict[str, str] = {
    "countdown": _PARSE_EXPR + "; aha scores rg:countdown with its own verifier (task 'countdown')",
    "puzzle24": _PARSE_EXPR + "; aha scores rg:puzzle24 with its own countdown verifier (target 24)",
    "polynomial_multiplication": _PARSE_EXPR,
    "simple_integration": _PARSE_EXPR,
    "intermediate_integration": _PARSE_EXPR,
    "binary_matrix": _EVAL,
    "n_queens": _EVAL,
    "spiral_matrix": _EVAL,
    "string_insertion": _EVAL,
    "composite": "it dispatches to arbitrary sub-dataset scorers; use the sub-datasets' names",
}
"""Datasets whose own scorer aha will not run, with the reason."""

ROUTED = ("countdown", "puzzle24")
"""Datasets aha scores with its own countdown verifier from the entry's `numbers` (and `target`)."""


def dataset_names() -> list[str]:
    """All dataset names the installed reasoning-gym registers."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


@cache
def rg_scorer(name: str):
    """The `score_answer(answer, entry)` of dataset `name`; AhaError when refused or unknown."""
    if name in REFUSED:
        raise AhaError(f"reasoning-gym dataset '{name}' is refused: {REFUSED[name]}")
    names = dataset_names()
    if name not in names:
        raise AhaError(f"unknown reasoning-gym dataset '{name}'{closest(name, names)}")
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(name)


def prepare(name: str) -> None:
    """Build (and cache) the scorer for `name`, or the countdown verifier for routed names."""
    if name not in ROUTED:
        rg_scorer(name)


# Entries whose metadata compares boards as tuples of tuples (`answer_board == metadata["output"]`). A
# JSON round trip (the task loader stores JSON-able entries) turns them into lists, and then even the
# gold answer scores 0.05: the tuples are restored before scoring.
TUPLE_BOARDS = ("arc_agi", "rearc")


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _restore_tuples(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    meta = entry.get("metadata")
    if name not in TUPLE_BOARDS or not isinstance(meta, dict):
        return entry
    fixed = {k: _tuples(v) if k in ("input", "output") else v for k, v in meta.items()}
    return {**entry, "metadata": fixed}


def _entry(metadata: dict[str, Any]) -> dict[str, Any]:
    entry = metadata.get("entry") if isinstance(metadata, dict) else None
    if not isinstance(entry, dict):
        raise GoldError("reasoning-gym example has no metadata['entry'] dict")
    return entry


def rg_score(text: str, name: str, metadata: dict[str, Any]) -> float:
    """The dataset's own graded score in [0, 1] for the extracted answer of `text` (reasoning-gym scorers
    give partial credit, e.g. chain_sum scores `len(gold)/len(answer)` when the gold is a substring of the
    answer); 0 when there is no answer or the scorer raises. Routed datasets use aha's countdown verifier.
    A shaping signal only (the `partial_credit` reward): `rg_accuracy` is the verdict."""
    entry = _entry(metadata)
    if name in ROUTED:
        meta = entry.get("metadata") or {}
        target = 24 if name == "puzzle24" else meta.get("target")
        return countdown_accuracy(text, meta.get("numbers"), target)
    scorer = rg_scorer(name)
    entry = _restore_tuples(name, entry)
    answer = extract_answer(text)
    if not answer:
        return 0.0
    try:
        value = float(scorer(answer, entry))
    except Exception:  # the scorer is third-party code on model text: any failure is a wrong answer
        return 0.0
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


def rg_accuracy(text: str, name: str, metadata: dict[str, Any]) -> float:
    """The binary verdict: 1.0 when the dataset's scorer gives the answer full marks, else 0.0. Partial
    credit (`-280` for gold `-28` scores 0.75 in chain_sum) is a wrong answer here."""
    return 1.0 if rg_score(text, name, metadata) >= 1.0 else 0.0
