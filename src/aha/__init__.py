"""aha: the DeepSeek-R1 training system (GRPO, rule rewards, R1-Zero, the R1 stages, distillation,
evaluation), small enough to read and to run on a laptop CPU.

As a library: `aha.train(recipe_or_config, **keys) -> run folder`, and the same for `sft`, `sample`,
`coldstart`, `distill`, `rm`, `evaluate` and `run_stage(kind, ...)` (see aha.api). The configs:
`aha.TrainConfig`, `aha.SFTConfig`, ... Importing aha is cheap: these load on first use.
"""

__version__ = "0.1.0"

_API = ("train", "sft", "sample", "coldstart", "distill", "rm", "evaluate", "run_stage")
_CONFIGS = {"TrainConfig": "aha.training.config", "SFTConfig": "aha.training.config", "LoRAConfig": "aha.training.config",
            "SampleConfig": "aha.stages.sample", "EvalConfig": "aha.stages.evaluate", "RMConfig": "aha.stages.rm",
            "DistillConfig": "aha.stages.distill", "ColdStartConfig": "aha.stages.coldstart",
            "RewardsConfig": "aha.rewards.config"}

__all__ = [*_API, *_CONFIGS]


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module("aha.api"), name)
    if name in _CONFIGS:
        return getattr(importlib.import_module(_CONFIGS[name]), name)
    raise AttributeError(f"module 'aha' has no attribute {name!r}")
