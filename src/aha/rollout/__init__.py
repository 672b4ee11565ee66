"""Rollout engines: `hf` (reference, CPU/GPU), `vllm` (GPU, optional), `fake` (scripted, tests)."""

from aha.rollout.base import Completion, RolloutEngine, SamplingConfig

__all__ = ["Completion", "RolloutEngine", "SamplingConfig", "make_engine"]


def make_engine(name: str, model, tokenizer, **kwargs) -> RolloutEngine:
    from aha.errors import AhaError, closest

    if name == "hf":
        from aha.rollout.hf import HFEngine

        return HFEngine(model, tokenizer, **kwargs)
    if name == "vllm":
        from aha.rollout.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer, **kwargs)
    raise AhaError(f"rollout.engine: unknown engine '{name}'{closest(name, ['hf', 'vllm'])}")
