"""The record every task loader yields and every reward and stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One problem. `prompt` is the bare question (templates are applied later); `answer` is the
    gold answer as text; `task` names the verifier that decides correctness; `kind` routes the
    example to a reward set (R1's final stage mixes `reasoning` and `general` prompts)."""

    prompt: str
    answer: str
    task: str = "math"
    """Verifier kind: `math`, `number`, `countdown`, `code` or `rg:<reasoning-gym dataset>`."""
    kind: str = "reasoning"
    """Routing label: which reward set applies (see RewardsConfig.by_kind)."""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    """Task-specific gold fields: countdown `numbers` and `target`, the reasoning-gym entry, tests for code."""
    id: str = ""
    """Stable identifier (source file and line, or dataset name and index)."""
