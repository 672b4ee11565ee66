"""vLLM rollout engine for GPUs (colocated: vLLM shares the training GPU and receives the policy's weights
after every update). The only module in aha that touches a third-party engine's internals.

Status: written against vLLM's public `LLM.generate` API and the colocate weight-loading path that TRL
uses with vLLM 0.7-0.10 (`model_executor.driver_worker.model_runner.model.load_weights`); it has never run
on a GPU in this repository. `tests/test_rollout_vllm.py` checks its bookkeeping on the CPU against a stand-in
`LLM` (prefix cache reset after every weight sync, sampled log-probs recorded) and runs it for real under
`-m gpu`.

Two things make its rollouts differ from the trainer's policy, and both are handled: prefix caching would
serve prompts from keys and values computed with the previous weights, so the cache is reset after every
sync; and vLLM samples from its own bf16 numbers, so every sampled token's log-prob is recorded
(`Completion.logprobs`) for the trainer's truncated importance correction (`grpo.tis_cap`).
"""

from __future__ import annotations

from aha.errors import AhaError
from aha.rollout.base import Completion, SamplingConfig


class VLLMEngine:
    def __init__(self, model, tokenizer, max_batch: int = 512, gpu_memory_utilization: float = 0.3):
        try:
            from vllm import LLM
        except ImportError:
            raise AhaError("rollout.engine=vllm needs vLLM on a CUDA machine: `pip install vllm`") from None
        self.tokenizer = tokenizer
        path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", "")
        if not path:
            raise AhaError("rollout.engine=vllm needs a model loaded from a folder (its config and tokenizer)")
        self.llm = LLM(model=path, dtype="bfloat16", gpu_memory_utilization=gpu_memory_utilization,
                       max_num_seqs=max_batch, enable_prefix_caching=True)
        self.sync_weights(model)

    def sync_weights(self, model) -> None:
        try:
            target = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError as e:  # vLLM moved its internals: fail loudly rather than sample stale weights
            raise AhaError(f"this vLLM version does not expose the colocated model ({e}); pin vllm<=0.10") from None
        target.load_weights(((name, p.detach()) for name, p in model.state_dict().items()))
        self.llm.reset_prefix_cache()  # cached keys and values were computed with the old weights

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                top_k=sampling.top_k or -1, max_tokens=sampling.max_new_tokens,
                                stop=list(sampling.stop), include_stop_str_in_output=True, logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        groups = []
        for p, out in zip(prompts, outputs):
            groups.append([Completion(text=o.text, completion_ids=tuple(o.token_ids), prompt_ids=tuple(p),
                                      finished=o.finish_reason != "length", logprobs=sampled_logprobs(o))
                           for o in out.outputs])
        return groups


    def stream(self, prompts: list[list[int]], n: int, sampling: SamplingConfig):
        """(prompt index, group) pairs; vLLM schedules the whole call itself, so they come when it ends."""
        yield from enumerate(self.generate(prompts, n, sampling))


def sampled_logprobs(output) -> tuple[float, ...]:
    """The log-prob of each sampled token of a vLLM CompletionOutput (`logprobs=0` asks for exactly those:
    one {token_id: Logprob} dict per position)."""
    if output.logprobs is None or len(output.logprobs) != len(output.token_ids):
        raise AhaError("vLLM returned no log-prob for every sampled token; the importance correction needs them")
    return tuple(float(pos[tok].logprob) for tok, pos in zip(output.token_ids, output.logprobs))
