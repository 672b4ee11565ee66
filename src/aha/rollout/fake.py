"""A scripted rollout engine for tests: returns given texts, tokenised, in order (cycling)."""

from __future__ import annotations

from itertools import cycle

from aha.rollout.base import Completion, SamplingConfig


class ScriptedEngine:
    def __init__(self, tokenizer, texts: list[str]):
        self.tokenizer = tokenizer
        self._texts = cycle(texts)
        self.calls = 0

    def sync_weights(self, model) -> None:
        pass

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        self.calls += 1
        groups = []
        for p in prompts:
            group = []
            for _ in range(n):
                text = next(self._texts)
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: sampling.max_new_tokens]
                finished = len(ids) < sampling.max_new_tokens
                group.append(Completion(text=text, completion_ids=tuple(ids), prompt_ids=tuple(p), finished=finished))
            groups.append(group)
        return groups

    def stream(self, prompts: list[list[int]], n: int, sampling: SamplingConfig):
        yield from enumerate(self.generate(prompts, n, sampling))
