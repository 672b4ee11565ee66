"""Every place aha reaches into transformers beyond its public model API, in one module: when transformers
moves one of these, this is the file to change.

- `cache_kwarg`: the name a model's forward takes its KV cache by (`cache` in transformers 5, which deprecates
  `past_key_values`).
- `attention_implementation` / `attention_name`: the config's private `_attn_implementation`, set for a block and
  restored (packed rows attend one block at a time; checkpointed layers recompute with the kernel they ran with).
- `register_attention`: an attention kernel of ours in transformers' `AttentionInterface`, registered when first
  used, not at import.
- `head_replaced`: a model's output head swapped for the identity for one forward (the chunked LM head).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator

import torch

_REGISTERED: set[str] = set()


def cache_kwarg(model) -> str:
    """The name a model's forward takes its KV cache by: `cache` (transformers 5.x deprecates and will drop
    `past_key_values`), or `past_key_values` for models that only know that."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a peft wrapper
    params = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def attention_name(model_or_config) -> str | None:
    """The attention implementation a model (or its config) runs with: sdpa, eager, flash_attention_2, ..."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "_attn_implementation", None)


@contextlib.contextmanager
def attention_implementation(config, name: str) -> Iterator[None]:
    """The model config's attention implementation set to `name` inside the block, restored after it."""
    configured = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = configured


def register_attention(name: str, fn: Callable) -> None:
    """`fn` as the attention kernel `name` in transformers' AttentionInterface (once per process)."""
    if name not in _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(name, fn)
        _REGISTERED.add(name)


@contextlib.contextmanager
def head_replaced(owner: torch.nn.Module, name: str) -> Iterator[torch.nn.Module]:
    """`owner.name` (the LM head) replaced by the identity inside the block, so that the forward returns the
    head's input; yields the head."""
    head = getattr(owner, name)
    setattr(owner, name, torch.nn.Identity())
    try:
        yield head
    finally:
        setattr(owner, name, head)
