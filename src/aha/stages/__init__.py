"""The stages of the R1 system, one table for the command line and the pipeline.

A stage is a function `run(cfg) -> output folder` whose first parameter is annotated with its config
dataclass; `STAGES` maps a kind (the command, `kind:` in a pipeline recipe) to it. Add an entry to register a
stage, from aha or from outside it ("my_pkg.my_stage:run"): `aha KIND` and pipeline recipes then know it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aha import plugins
from aha.errors import AhaError, closest


@dataclass(frozen=True)
class Stage:
    run: str | Callable[[Any], Path]
    """The stage's function, or "module:function" (imported when the stage is used)."""
    help: str = ""
    """One line for `aha KIND --help`."""


STAGES: dict[str, Stage | str | Callable[[Any], Path]] = {
    "train": Stage("aha.training.grpo_loop:train", "GRPO with rule rewards"),
    "sft": Stage("aha.stages.sft:run", "supervised fine-tuning"),
    "sample": Stage("aha.stages.sample:run", "rejection sampling"),
    "coldstart": Stage("aha.stages.coldstart:run", "cold-start data in R1's output form (then SFT)"),
    "distill": Stage("aha.stages.distill:run", "distillation: teacher -> sample -> sft on a student"),
    "rm": Stage("aha.stages.rm:run", "reward model on preference pairs (Bradley-Terry loss)"),
    "eval": Stage("aha.stages.evaluate:run", "evaluation by the R1 protocol"),
}
"""Stage kind -> Stage (or just its function or "module:function")."""


def stage_entry(kind: str) -> tuple[type, Callable[[Any], Path], str]:
    """(config class, run function, help) of a stage kind; AhaError for an unknown kind or a missing module."""
    if kind not in STAGES:
        raise AhaError(f"unknown stage kind '{kind}'{closest(kind, STAGES)}; one of {', '.join(STAGES)}")
    entry = STAGES[kind]
    stage = entry if isinstance(entry, Stage) else Stage(entry)
    try:
        fn = plugins.resolve(stage.run)
    except AhaError as e:
        raise AhaError(f"stage kind '{kind}' needs {stage.run}, which is not available ({e})") from None
    params = list(inspect.signature(fn).parameters)
    cls = typing.get_type_hints(fn).get(params[0]) if params else None
    if cls is None or not dataclasses.is_dataclass(cls):
        raise AhaError(f"stage kind '{kind}': {fn.__name__}'s first parameter must be an annotated dataclass config")
    return cls, fn, stage.help
