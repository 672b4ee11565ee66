"""The rollout-engine contract: small enough to fake in tests, implemented by HF and vLLM engines."""

from __future__ import annotations

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

    def sync_weights(self, model) -> None:
        """Make the engine sample from `model`'s current weights."""
        ...
