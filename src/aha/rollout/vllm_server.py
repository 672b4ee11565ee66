"""vLLM in server mode: generation on GPUs of its own, the trainer's weights pushed to it after every update.

For users whose generation does not fit beside training (`rollout.engine=vllm` colocates vLLM with the
trainer on the same GPU). Two commands, as with TRL's `trl vllm-serve`:

    CUDA_VISIBLE_DEVICES=1 aha vllm-serve model=Qwen/Qwen2.5-1.5B port=8000            # the generation GPU(s)
    CUDA_VISIBLE_DEVICES=0 aha train recipes/r1_zero_qwen_gpu.yaml rollout.engine=vllm_server \\
        rollout.server_url=http://localhost:8000                                         # the training GPU(s)

The server answers HTTP with JSON (Python's own http.server: no web framework to install): `/health`,
`/generate` (prompt token ids in, each completion's text, token ids, sampled log-probs and finish reason out),
`/init_weight_sync`, `/update_weight`, `/reset_prefix_cache`. Weights travel over NCCL, not HTTP: at the first
sync the trainer (rank 0 of a two-sided group) and every vLLM worker join a process group of their own (vLLM's
`StatelessProcessGroup` and `PyNcclCommunicator`, as in vLLM's RLHF example), then for each weight the trainer
posts its name, dtype and shape and broadcasts the tensor; each worker receives it and loads it with the
model's own `load_weights`. The server queues the weight updates in order on one thread, so that an HTTP reply
never waits for a broadcast the client has not started. After the last weight the prefix cache is reset (its
keys and values were computed with the old weights). Under torchrun every process sends its own prompts and
rank 0 alone pushes the gathered weights.

Status: the HTTP protocol, the queue and the engine's bookkeeping are tested on the CPU against stand-ins for
vLLM (`tests/test_rollout_vllm_server.py`); the NCCL transfer and vLLM itself have never run in this
repository (no GPU): `-m gpu` has the test that would run them.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import torch

from aha import dist
from aha.config import PositiveFloat, PositiveInt, Probability
from aha.errors import AhaError
from aha.rollout.base import Completion, SamplingConfig


# ----------------------------------------------------------------------------------------- the trainer's side
class VLLMServerEngine:
    """A `RolloutEngine` whose generation happens in an `aha vllm-serve` process."""

    def __init__(self, model, tokenizer, max_batch: int = 512, url: str = "http://localhost:8000",
                 timeout_s: float = 600.0, sync_port: int = 51216, communicator=None):
        self.tokenizer = tokenizer
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.sync_port = sync_port
        self.comm = communicator
        """The trainer's end of the weight-transfer group (made at the first sync; tests pass a stand-in)."""
        self.workers = int(self._post("/health", {})["workers"])
        self.sync_weights(model)

    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise AhaError(f"rollout.server_url: {self.url}{path} answered {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise AhaError(f"rollout.server_url: no aha vllm-serve answers at {self.url} ({getattr(e, 'reason', e)}); "
                           "start one with `aha vllm-serve model=...`") from None

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        body = {"prompts": [list(p) for p in prompts], "n": n, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "top_k": sampling.top_k, "max_tokens": sampling.max_new_tokens,
                "stop": list(sampling.stop)}
        groups = self._post("/generate", body)["groups"]
        if len(groups) != len(prompts) or any(len(g) != n for g in groups):
            raise AhaError(f"rollout.server_url: {self.url} returned {len(groups)} groups for {len(prompts)} prompts")
        return [[Completion(text=c["text"], completion_ids=tuple(c["token_ids"]), prompt_ids=tuple(p),
                            finished=c["finish_reason"] != "length", logprobs=tuple(c["logprobs"]))
                 for c in group] for p, group in zip(prompts, groups)]

    def stream(self, prompts: list[list[int]], n: int, sampling: SamplingConfig):
        yield from enumerate(self.generate(prompts, n, sampling))

    def sync_weights(self, model) -> None:
        """Push every weight of `model` (whole: the trainer's rollout copy) to the server; rank 0 only."""
        if not dist.is_main():
            return
        if self.comm is None:
            self.comm = self._connect()
        for name, tensor in model.state_dict().items():
            t = tensor.detach()
            self._post("/update_weight", {"name": name, "dtype": str(t.dtype).removeprefix("torch."),
                                          "shape": list(t.shape)})
            self.comm.broadcast(t.to(self.comm.device) if hasattr(self.comm, "device") else t, src=0)
        self._post("/reset_prefix_cache", {})  # waits for the queued updates, then drops stale keys and values

    def _connect(self):
        host = urllib.parse.urlparse(self.url).hostname or "localhost"
        self._post("/init_weight_sync", {"host": host, "port": self.sync_port, "world_size": self.workers + 1})
        try:
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup
        except ImportError:
            raise AhaError("rollout.engine=vllm_server pushes weights with vLLM's NCCL communicator: "
                           "`pip install vllm` on the training machine too") from None
        group = StatelessProcessGroup.create(host=host, port=self.sync_port, rank=0, world_size=self.workers + 1)
        return PyNcclCommunicator(group, device=torch.device("cuda", torch.cuda.current_device()))


# ----------------------------------------------------------------------------------------- the server
@dataclass
class ServeConfig:
    model: str = "smollm2-135m-instruct"
    """The model to serve: registry name, .gguf file, HF folder or run folder (its newest checkpoint); the
    trainer's weights replace its own at the trainer's first sync."""
    host: str = "0.0.0.0"
    port: PositiveInt = 8000
    tensor_parallel_size: PositiveInt = 1
    """GPUs one copy of the model spans (vLLM's tensor parallelism)."""
    gpu_memory_utilization: Probability = 0.9
    max_model_len: int = 0
    """Longest prompt + completion (0: the model's own limit)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    timeout_s: PositiveFloat = 600.0
    """How long a weight update waits for the trainer's broadcast."""


class WeightSyncWorker:
    """Mixed into every vLLM worker (`worker_extension_cls`): the receiving end of the weight transfer."""

    def init_weight_sync(self, host: str, port: int, world_size: int) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        rank = get_world_group().rank + 1  # the trainer is rank 0
        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
        self.weight_comm = PyNcclCommunicator(group, device=self.device)

    def update_weight(self, name: str, dtype: str, shape: list[int]) -> None:
        weight = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
        self.weight_comm.broadcast(weight, src=0)
        self.model_runner.model.load_weights(weights=[(name, weight)])


class Server:
    """The HTTP side of `aha vllm-serve` around a vLLM `LLM` (or a stand-in with the same methods)."""

    def __init__(self, llm, workers: int, host: str = "0.0.0.0", port: int = 8000):
        self.llm = llm
        self.workers = workers
        self.lock = threading.Lock()  # one generate at a time: vLLM's LLM is not thread-safe
        self.updates: queue.Queue = queue.Queue()  # weight updates, in order, on one thread
        self.errors: list[str] = []
        threading.Thread(target=self._apply_updates, daemon=True).start()
        self.http = ThreadingHTTPServer((host, port), self._handler())
        self.port = self.http.server_address[1]

    def _apply_updates(self) -> None:
        while True:
            job, done = self.updates.get()
            try:
                if job is not None:
                    self.llm.collective_rpc(job[0], args=job[1])
            except Exception as e:  # noqa: BLE001  (reported to the trainer at its next request)
                self.errors.append(f"{job[0]}: {type(e).__name__}: {e}")
            finally:
                done.set()

    def _queued(self, name: str, args: tuple) -> threading.Event:
        done = threading.Event()
        self.updates.put(((name, args), done))
        return done

    def _drain(self) -> None:
        done = threading.Event()
        self.updates.put((None, done))
        done.wait()
        if self.errors:
            raise RuntimeError("; ".join(self.errors))

    def generate(self, body: dict) -> dict:
        from vllm import SamplingParams

        params = SamplingParams(n=int(body["n"]), temperature=float(body["temperature"]), top_p=float(body["top_p"]),
                                top_k=int(body["top_k"]) or -1, max_tokens=int(body["max_tokens"]),
                                stop=list(body["stop"]), include_stop_str_in_output=True, logprobs=0)
        return self.complete(body["prompts"], params)

    def complete(self, prompts: list[list[int]], params) -> dict:
        self._drain()  # never sample from half-updated weights
        with self.lock:
            outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return {"groups": [[{"text": o.text, "token_ids": list(o.token_ids), "finish_reason": o.finish_reason,
                             "logprobs": [float(pos[t].logprob) for t, pos in zip(o.token_ids, o.logprobs or [])]}
                            for o in out.outputs] for out in outputs]}

    def route(self, path: str, body: dict) -> dict:
        if path == "/health":
            return {"workers": self.workers}
        if path == "/generate":
            return self.generate(body)
        if path == "/init_weight_sync":  # the workers join the group in the background; the trainer joins next
            self._queued("init_weight_sync", (str(body["host"]), int(body["port"]), int(body["world_size"])))
            return {}
        if path == "/update_weight":  # queued: the worker then waits for the trainer's broadcast
            self._queued("update_weight", (str(body["name"]), str(body["dtype"]), [int(s) for s in body["shape"]]))
            return {}
        if path == "/reset_prefix_cache":
            self._drain()
            self.llm.reset_prefix_cache()
            return {}
        raise KeyError(path)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802  (http.server's name)
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                    reply, code = server.route(self.path, body), 200
                except KeyError as e:
                    reply, code = {"error": f"unknown path or field {e}"}, 404
                except Exception as e:  # noqa: BLE001  (the trainer gets the reason in one line)
                    reply, code = {"error": f"{type(e).__name__}: {e}"}, 500
                data = json.dumps(reply).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # quiet: one line per request would drown the output
                pass

        return Handler

    def serve_forever(self) -> None:
        self.http.serve_forever()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def serve(cfg: ServeConfig) -> None:
    """`aha vllm-serve`: load the model into vLLM and answer until interrupted."""
    try:
        from vllm import LLM
    except ImportError:
        raise AhaError("aha vllm-serve needs vLLM on a CUDA machine: `pip install vllm`") from None
    from aha.models import resolve

    llm = LLM(model=str(resolve(cfg.model)), dtype=cfg.dtype, tensor_parallel_size=cfg.tensor_parallel_size,
              gpu_memory_utilization=cfg.gpu_memory_utilization, enable_prefix_caching=True,
              max_model_len=cfg.max_model_len or None,
              worker_extension_cls="aha.rollout.vllm_server.WeightSyncWorker")
    server = Server(llm, cfg.tensor_parallel_size, cfg.host, cfg.port)
    print(f"aha vllm-serve: {cfg.model} on {cfg.host}:{server.port} ({cfg.tensor_parallel_size} GPU(s))", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
