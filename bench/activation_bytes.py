"""Bytes a decoder layer keeps for the backward pass, per token: the numbers behind
`aha.training.batch.ACTIVATION_BYTES_PER_WIDTH`, the activation estimate of `gradient_checkpointing: auto`.

    .venv/bin/python bench/activation_bytes.py

Random Qwen2-shaped models of 1 and 2 layers (the widths of Qwen2.5-0.5B, SmolLM2-135M and two others), a row
of 512 tokens under bf16 autocast, full fine-tuning and LoRA rank 16 (as the trainers run it:
`aha.training.lora.for_autocast`); autograd's saved-tensor hooks count every tensor the decoder keeps for
backward, each storage once, the weights (and their casts) left out. Prints KB a token against the estimate.
Seconds on the CPU; no weights needed.
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from aha.training import lora
from aha.training.batch import ACTIVATION_BYTES_PER_WIDTH
from aha.training.config import LoRAConfig

SHAPES = [  # name, hidden, MLP width, heads, key/value heads
    ("Qwen2.5-0.5B", 896, 4864, 14, 2), ("SmolLM2-135M", 576, 1536, 9, 3), ("wide", 2048, 5632, 16, 4),
    ("MLP-heavy", 512, 4096, 8, 8)]


def saved_per_token(model, tokens: int = 512) -> float:
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape[::-1]) for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights and tuple(t.shape) not in shapes:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = torch.randint(0, 100, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            base.model(input_ids=ids)
    return sum(seen.values()) / tokens


def main() -> None:
    per_hidden, per_mlp = ACTIVATION_BYTES_PER_WIDTH
    for name, hidden, mlp, heads, kv in SHAPES:
        for layers in (1, 2):
            cfg = Qwen2Config(vocab_size=128, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                              num_attention_heads=heads, num_key_value_heads=kv)
            full = saved_per_token(Qwen2ForCausalLM(cfg))
            adapted = lora.apply(Qwen2ForCausalLM(cfg), LoRAConfig(rank=16))
            lora.for_autocast(adapted, torch.bfloat16)
            with_lora = saved_per_token(adapted)
            estimate = layers * (per_hidden * hidden + per_mlp * mlp)
            print(f"{name:13s} {layers} layer(s): full {full / 1024:6.1f} KB a token, LoRA {with_lora / 1024:6.1f}, "
                  f"estimate {estimate / 1024:6.1f}", flush=True)


if __name__ == "__main__":
    main()
