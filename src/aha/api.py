"""aha as a Python library: every stage as a function `(config, *overrides, **keys) -> output folder`.

    import aha
    run = aha.train("recipes/r1_zero_smollm2.yaml", steps=30)           # a recipe, with overrides
    run = aha.train(aha.TrainConfig(steps=30, lora=aha.LoRAConfig(rank=16)))  # or a config object
    aha.evaluate(model=str(run), task="chain_sum", samples=4)             # keys only: the defaults + these

`config`: a recipe path, a config object (of the stage's class) or None (the defaults). `overrides`:
"dotted.key=value" strings as on the command line; `keys`: top-level keys as keyword arguments. The result
is the stage's output folder (a run folder's newest checkpoint is its model: `aha.runs.newest_model`).
Stages registered in `aha.stages.STAGES` from outside the package run the same way: `aha.run_stage(kind,
...)`. The configs are checked exactly as the command line checks them (one-line AhaError naming the key).
Process settings (`runtime.threads`, `runtime.malloc`: a recipe's `runtime:` section, or
`runtime={"malloc": "default"}`) are applied to this process before the stage runs, as the command line does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from aha import runtime
from aha.config import load_config, save_config
from aha.errors import AhaError
from aha.stages import stage_entry


def run_stage(kind: str, config: Any = None, /, *overrides: str, **keys: Any) -> Path:
    """Run the stage `kind` (train, sft, sample, coldstart, distill, rm, eval, or one registered in
    `aha.stages.STAGES`) and return its output folder."""
    cls, fn, _ = stage_entry(kind)
    words = [*overrides, *(f"{k}={_yaml_value(v)}" for k, v in keys.items())]
    runtime.apply(runtime.load(str(config) if isinstance(config, (str, os.PathLike)) else None, words))
    if config is None or isinstance(config, (str, os.PathLike)):
        cfg = load_config(cls, None if config is None else str(config), words)
    elif isinstance(config, cls):
        cfg = config
        if words:  # the object as a recipe, then the overrides, checked as the command line checks them
            with tempfile.TemporaryDirectory() as tmp:
                recipe = Path(tmp) / "config.yaml"
                save_config(config, recipe)
                cfg = load_config(cls, recipe, words)
    else:
        raise AhaError(f"aha.{kind}: config must be a recipe path or a {cls.__name__}, got {type(config).__name__}")
    out = fn(cfg)
    return Path(out) if out is not None else Path(cfg.out_dir)


def _yaml_value(v: Any) -> str:
    """A keyword argument's value as the command line writes it (YAML flow style)."""
    text = yaml.safe_dump(v, default_flow_style=True, width=1 << 30).strip()
    return text[:-3].strip() if text.endswith("...") else text


def train(config: Any = None, /, *overrides: str, **keys: Any) -> Path:
    """GRPO with rule rewards (`aha train`); returns the run folder."""
    return run_stage("train", config, *overrides, **keys)


def sft(config: Any = None, /, *overrides: str, **keys: Any) -> Path:
    """Supervised fine-tuning (`aha sft`); returns the run folder."""
    return run_stage("sft", config, *overrides, **keys)


def sample(config: Any = None, /, *overrides: str, **keys: Any) -> Path:
    """Rejection sampling (`aha sample`); returns the output folder (samples.jsonl, report.json)."""
    return run_stage("sample", config, *overrides, **keys)


def coldstart(config: Any = None, /, *overrides: str, **keys: Any) -> Path:
    """Cold-start data in R1's output form, then SFT (`aha coldstart`); returns the output folder."""
    return run_stage("coldstart", config, *overrides, **keys)


def distill(config: Any = None, /, *overrides: str, **keys: Any) -> Path:
    """Teacher -> sample -> SFT of a student (`aha distill`); returns the output folder."""
    return run_stage("distill", config, *overrides, **keys)


def rm(config: Any = None, /, *overrides: str, **keys: Any) -> Path:
    """A reward model on preference pairs (`aha rm`); returns the run folder."""
    return run_stage("rm", config, *overrides, **keys)


def evaluate(config: Any = None, /, *overrides: str, **keys: Any) -> Path:
    """The R1 evaluation protocol (`aha eval`); returns the output folder (summary.json, samples.jsonl)."""
    return run_stage("eval", config, *overrides, **keys)


__all__ = ["coldstart", "distill", "evaluate", "rm", "run_stage", "sample", "sft", "train"]
