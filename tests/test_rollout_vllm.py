"""The vLLM engine's bookkeeping on the CPU, against a stand-in for vLLM's `LLM` (what it calls, what it
returns): the prefix cache is reset after every weight sync, and every sampled token's log-prob is recorded.
The real engine runs under `-m gpu` only (never run in this repository: no GPU)."""

from types import SimpleNamespace

import pytest
import torch

from aha.errors import AhaError
from aha.rollout.base import SamplingConfig
from aha.rollout.vllm import VLLMEngine, sampled_logprobs


class StandInLLM:
    """Records the calls the engine makes; answers generate() like vLLM's LLM with `logprobs=0`."""

    def __init__(self):
        self.calls = []
        loaded = SimpleNamespace(load_weights=lambda weights: self.calls.append(("load", len(list(weights)))))
        runner = SimpleNamespace(model=loaded)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
            driver_worker=SimpleNamespace(model_runner=runner)))

    def reset_prefix_cache(self):
        self.calls.append(("reset",))

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(("generate", params.logprobs))
        lp = lambda tok, v: {tok: SimpleNamespace(logprob=v), 999: SimpleNamespace(logprob=-9.0)}  # noqa: E731
        out = SimpleNamespace(text="ab", token_ids=[5, 6], finish_reason="stop", logprobs=[lp(5, -0.5), lp(6, -1.25)])
        return [SimpleNamespace(outputs=[out] * params.n) for _ in prompts]


def engine_with(llm) -> VLLMEngine:
    engine = VLLMEngine.__new__(VLLMEngine)  # no vLLM here: the stand-in takes the LLM's place
    engine.llm, engine.tokenizer = llm, None
    return engine


def test_every_weight_sync_resets_the_prefix_cache():
    llm = StandInLLM()
    engine = engine_with(llm)
    engine.sync_weights(torch.nn.Linear(2, 2))
    engine.sync_weights(torch.nn.Linear(2, 2))
    assert llm.calls == [("load", 2), ("reset",), ("load", 2), ("reset",)]


def test_generate_records_each_sampled_tokens_logprob():
    pytest.importorskip("vllm", reason="SamplingParams comes from vLLM")
    llm = StandInLLM()
    groups = engine_with(llm).generate([[1, 2]], 2, SamplingConfig(max_new_tokens=4))
    assert llm.calls == [("generate", 0)]
    assert [c.logprobs for c in groups[0]] == [(-0.5, -1.25)] * 2


def test_sampled_logprobs_reads_the_sampled_token_and_refuses_missing_ones():
    pos = [{5: SimpleNamespace(logprob=-0.5), 7: SimpleNamespace(logprob=-2.0)}, {6: SimpleNamespace(logprob=-1.0)}]
    assert sampled_logprobs(SimpleNamespace(token_ids=[5, 6], logprobs=pos)) == (-0.5, -1.0)
    with pytest.raises(AhaError, match="log-prob"):
        sampled_logprobs(SimpleNamespace(token_ids=[5, 6], logprobs=None))


@pytest.mark.gpu
def test_vllm_engine_generates_groups(tiny_model_dir):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from aha.models import load_model
    from aha.rollout.vllm import VLLMEngine

    model, tok = load_model(tiny_model_dir)
    engine = VLLMEngine(model, tok)
    groups = engine.generate([tok("Hi")["input_ids"]], 3, SamplingConfig(max_new_tokens=5))
    assert len(groups) == 1 and len(groups[0]) == 3


