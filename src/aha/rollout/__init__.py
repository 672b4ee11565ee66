"""Rollout engines: `hf` (reference, CPU/GPU), `vllm` (GPU, optional), `fake` (scripted, tests)."""

from aha import plugins
from aha.errors import AhaError, closest
from aha.rollout.base import Completion, RolloutEngine, SamplingConfig

__all__ = ["ENGINES", "Completion", "RolloutEngine", "SamplingConfig", "make_engine"]

ENGINES: dict[str, object] = {
    "hf": "aha.rollout.hf:HFEngine",
    "vllm": "aha.rollout.vllm:VLLMEngine",
    "vllm_server": "aha.rollout.vllm_server:VLLMServerEngine",
}
"""Engine name -> its class, or "module:Class" (imported when first used): `cls(model, tokenizer, **kwargs)`
implementing `RolloutEngine`. Add an entry to register an engine; every command that samples (train, eval,
sample, coldstart, distill) builds its engine here."""


def make_engine(name: str, model, tokenizer, **kwargs) -> RolloutEngine:
    if name not in ENGINES:
        raise AhaError(f"rollout.engine: unknown engine '{name}'{closest(name, list(ENGINES))}; one of "
                       f"{', '.join(ENGINES)}")
    return plugins.resolve(ENGINES[name])(model, tokenizer, **kwargs)
