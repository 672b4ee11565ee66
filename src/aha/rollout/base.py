"""The rollout-engine contract: small enough to fake in tests, implemented by HF and vLLM engines."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k filtering."""
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ("</answer>",)
    """Generation of a completion also ends when its text ends with one of these strings."""


@dataclass(frozen=True)
class Completion:
    text: str
    completion_ids: tuple[int, ...] = ()
    prompt_ids: tuple[int, ...] = ()
    finished: bool = True
    """False when cut off at max_new_tokens (truncated)."""
    logprobs: tuple[float, ...] | None = field(default=None, compare=False)
    """Per-token sampling log-probs, when the engine has them cheaply."""

    @property
    def num_tokens(self) -> int:
        """Completion length in tokens; for text-only completions (offline scoring), a word count."""
        return len(self.completion_ids) if self.completion_ids else len(self.text.split())


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        """n completions for each prompt (token ids), grouped per prompt."""
        ...

    def stream(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> Iterator[tuple[int, list[Completion]]]:
        """The same completions as (prompt index, group) pairs, each as soon as its group is done (an engine
        that finishes a call at once yields them all at the end)."""
        ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights."""
        ...


def shared_prefix_len(prompts, min_len: int = 8) -> int:
    """Tokens that all `prompts` begin with (a system prompt, a worked example), leaving each prompt at least
    one token of its own; 0 when that is shorter than `min_len` or there is only one prompt."""
    prompts = [tuple(p) for p in prompts]
    if len(set(prompts)) < 2:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return n if n >= min_len else 0
