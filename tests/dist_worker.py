"""`aha`'s command line as torchrun starts it, for tests/test_dist.py: `torchrun ... tests/dist_worker.py train k=v ...`.

Two things are replaced, so that a run is the same whichever process samples which group: the rollout
engine returns completions chosen by the prompt (`PromptEngine`, no model), and AHA_TEST_FAIL=RANK:STEP:HOW
makes process RANK fail as optimizer step STEP begins (HOW: `raise` an error, `kill` itself with SIGKILL, or
`hang`: sleep, so that the others wait in a collective until its timeout).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from aha.rollout.base import Completion, SamplingConfig

TEXTS = ["<think> 1 </think> <answer> 3 </answer>", "no tags at all", "<think> x </think>",
         "<answer> 0 </answer>", "<think> 2 + 1 </think> <answer> 5 </answer>"]


class PromptEngine:
    """Completion j of a prompt is TEXTS[(sum of the prompt's ids + j) % len(TEXTS)]: the same rollouts for a
    prompt in any process, in any batch."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def sync_weights(self, model) -> None:
        pass

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        groups = []
        for p in prompts:
            group = []
            for j in range(n):
                text = TEXTS[(sum(p) + j) % len(TEXTS)]
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: sampling.max_new_tokens]
                group.append(Completion(text=text, completion_ids=tuple(ids), prompt_ids=tuple(p),
                                        finished=len(ids) < sampling.max_new_tokens))
            groups.append(group)
        return groups


def install() -> None:
    """Replace the engine and arm AHA_TEST_FAIL (in this process)."""
    from aha.training import grpo_loop, sft_loop

    grpo_loop.make_engine = lambda name, model, tokenizer, **kw: PromptEngine(tokenizer)
    fail = os.environ.get("AHA_TEST_FAIL")
    if not fail:
        return
    rank, step, how = fail.split(":")
    if os.environ.get("RANK", "0") != rank:
        return
    for cls in (grpo_loop.GRPOTrainer, sft_loop.SFTTrainer):
        def step_or_fail(self, _step=cls.step):
            if self.step_no + 1 == int(step):
                print(f"dist_worker: failing at {time.time()}", file=sys.stderr, flush=True)
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if how == "hang":
                    time.sleep(3600)
                raise RuntimeError(f"injected failure at step {step}")
            return _step(self)
        cls.step = step_or_fail


if __name__ == "__main__":
    from aha.cli import main

    install()
    sys.exit(main(sys.argv[1:]))
