"""vLLM server mode on the CPU: the HTTP protocol between `VLLMServerEngine` (the trainer's side) and `Server`
(`aha vllm-serve`'s side), with stand-ins for vLLM's LLM and for the NCCL transfer. The real path (vLLM,
NCCL) runs under `-m gpu` only and has never run in this repository."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from aha.errors import AhaError
from aha.rollout.base import SamplingConfig
from aha.rollout.vllm_server import Server, VLLMServerEngine


class Wire:
    """Stands in for the NCCL group: the trainer's broadcast lands in the worker's receive, in order."""

    def __init__(self):
        self.tensors = []
        self.ready = threading.Semaphore(0)
        self.device = torch.device("cpu")

    def broadcast(self, tensor, src=0):
        self.tensors.append(tensor.clone())
        self.ready.release()


class StandInLLM:
    """vLLM's LLM as the server uses it: generate, collective_rpc to the workers' extension, reset_prefix_cache."""

    def __init__(self, wire: Wire):
        self.wire, self.calls, self.loaded = wire, [], {}

    def collective_rpc(self, method, args=()):
        self.calls.append(method)
        if method == "update_weight":  # the worker waits for the trainer's broadcast, then loads the weight
            name, dtype, shape = args
            assert self.wire.ready.acquire(timeout=10), "no broadcast came"
            t = self.wire.tensors.pop(0)
            assert list(t.shape) == shape and str(t.dtype) == f"torch.{dtype}"
            self.loaded[name] = t

    def reset_prefix_cache(self):
        self.calls.append("reset")

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append("generate")
        lp = lambda tok: {tok: SimpleNamespace(logprob=-0.5 * tok), 999: SimpleNamespace(logprob=-9.0)}  # noqa: E731
        return [SimpleNamespace(outputs=[SimpleNamespace(text=f"p{len(p['prompt_token_ids'])}", token_ids=[5, 6],
                                                         finish_reason="length" if k else "stop",
                                                         logprobs=[lp(5), lp(6)]) for k in range(params.n)])
                for p in prompts]


@pytest.fixture()
def served():
    wire = Wire()
    llm = StandInLLM(wire)
    server = Server(llm, workers=1, host="127.0.0.1", port=0)
    server.generate = lambda body: server.complete(body["prompts"], SimpleNamespace(n=body["n"]))  # no vLLM here
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, llm, wire
    server.close()


def test_weights_are_pushed_in_order_and_the_prefix_cache_reset_after_them(served):
    server, llm, wire = served
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 4, bias=False))
    engine = VLLMServerEngine(model, None, url=f"http://127.0.0.1:{server.port}", communicator=wire)
    assert llm.calls == ["update_weight"] * 3 + ["reset"]  # the engine's first sync, at construction
    assert list(llm.loaded) == ["0.weight", "0.bias", "1.weight"]
    with torch.no_grad():
        model[1].weight.add_(1.0)
    engine.sync_weights(model)
    assert torch.equal(llm.loaded["1.weight"], model[1].weight) and llm.calls[-1] == "reset"


def test_generate_returns_groups_with_the_sampled_logprobs(served):
    server, llm, wire = served
    engine = VLLMServerEngine(torch.nn.Linear(1, 1), None, url=f"http://127.0.0.1:{server.port}", communicator=wire)
    groups = engine.generate([[1, 2, 3], [4]], 2, SamplingConfig(max_new_tokens=8))
    assert [[c.text for c in g] for g in groups] == [["p3", "p3"], ["p1", "p1"]]
    assert [c.finished for c in groups[0]] == [True, False]  # finish_reason "length": truncated
    assert groups[1][0].prompt_ids == (4,) and groups[1][0].completion_ids == (5, 6)
    assert groups[0][0].logprobs == (-2.5, -3.0)


def test_an_unreachable_server_is_a_one_line_error():
    with pytest.raises(AhaError, match=r"rollout.server_url: no aha vllm-serve answers at http://127.0.0.1:9"):
        VLLMServerEngine(torch.nn.Linear(1, 1), None, url="http://127.0.0.1:9", communicator=Wire(), timeout_s=5)


def test_a_failed_weight_update_reaches_the_trainer(served):
    server, llm, wire = served
    llm.collective_rpc = lambda method, args=(): (_ for _ in ()).throw(RuntimeError("worker died"))
    with pytest.raises(AhaError, match=r"answered 500: .*update_weight: RuntimeError: worker died"):
        VLLMServerEngine(torch.nn.Linear(1, 1), None, url=f"http://127.0.0.1:{server.port}", communicator=wire)


@pytest.mark.gpu
def test_vllm_server_round_trip(tiny_model_dir):
    pytest.importorskip("vllm")
    if torch.cuda.device_count() < 1:
        pytest.skip("needs CUDA")
    from vllm import LLM

    from aha.models import load_model

    model, tok = load_model(tiny_model_dir)
    llm = LLM(model=tiny_model_dir, gpu_memory_utilization=0.3, enable_prefix_caching=True,
              worker_extension_cls="aha.rollout.vllm_server.WeightSyncWorker")
    server = Server(llm, workers=1, host="127.0.0.1", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    engine = VLLMServerEngine(model.cuda(), tok, url=f"http://127.0.0.1:{server.port}")
    groups = engine.generate([tok("Hi")["input_ids"]], 2, SamplingConfig(max_new_tokens=5))
    assert len(groups[0]) == 2 and all(len(c.logprobs) == len(c.completion_ids) for c in groups[0])
    server.close()
