"""LoRA training through `peft`: low-rank adapters on the linear layers, the base weights frozen.

What changes around it, and why:
- The KL reference is the base model itself, run with the adapters switched off (`reference`): no second copy
  of the weights.
- Rollouts come from a plain copy of the model whose weights are the merged ones (base + B @ A x scale),
  refreshed after every optimizer step (`merge_into`): the lean decode step and vLLM read plain weights, and
  the frozen base is never merged into and out of (which would drift it by a rounding each step).
- A checkpoint's weights are the merged model, so every later stage (`aha eval`, `aha sample`, SFT from it)
  loads it as any other model; the adapter is saved beside them (`adapter/`) for resuming.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from aha import dist
from aha.errors import AhaError
from aha.training.config import LoRAConfig

ADAPTER_DIR = "adapter"


def apply(model, cfg: LoRAConfig):
    """`model` wrapped with fresh adapters (B = 0, so the wrapped model computes what `model` did)."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.target_modules[0] if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    return get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                            target_modules=targets, task_type="CAUSAL_LM"))


def for_autocast(model, dtype: torch.dtype) -> int:
    """Ready `model` (adapters applied) to train under `dtype` autocast: every frozen linear weight (the adapted
    layers' base weights, the LM head) stored in `dtype`, and peft's cast of each adapter's input to the
    adapter's fp32 dtype switched off. Exact: autocast runs a linear layer in `dtype` and casts its inputs there
    anyway, but it caches the cast only for weights that train, so a frozen fp32 weight was cast again in every
    forward pass, and an activation already in `dtype` went to fp32 and back for each adapter. Measured on the
    2-core CPU with AMX at R1 lengths: dtype casts were 20% of the training passes' time (bench/grpo_vs_trl/
    README.md); the frozen weights take half the memory. The adapters keep fp32 master weights. Returns the
    number of weights converted."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    looked_up = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    converted = 0  # a head tied to the input embedding stays: the lookup would start the residual stream in bf16
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
        if isinstance(module, torch.nn.Linear):
            for p in module.parameters(recurse=False):
                if not p.requires_grad and p.is_floating_point() and p.dtype != dtype and id(p) not in looked_up:
                    p.data = p.data.to(dtype)
                    converted += 1
    return converted


def fuse(model) -> int:
    """Run every plain adapted linear layer of `model` as one fused product: base(x) + (x A^T)(s B)^T, the adapter's
    update added onto the base output inside `torch.addmm` with the scale s folded into B's (rank x out) weight.
    peft computes B(A x) as an output-wide tensor, scales it and adds it to the base output: two more passes
    over a (tokens x out) tensor forward and one backward, which at R1 lengths are among the elementwise ops
    that dominate a CPU training pass (bench/grpo_vs_trl/README.md). The same function; only the rounding of
    the sum differs (addmm accumulates it in the matmul). A layer with dropout, a DoRA-style variant or an
    adapter bias keeps peft's forward, and so does every call peft handles specially (adapters disabled, merged,
    mixed-adapter batches, several active adapters). One process: FSDP2 owns the forward of sharded modules.
    Returns the number of layers fused."""
    from peft.tuners.lora import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear) or not isinstance(module.base_layer, torch.nn.Linear):
            continue
        if any(not isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values()):
            continue
        if getattr(module, "lora_variant", None) or any(b.bias is not None for b in module.lora_B.values()):
            continue
        module.forward = _fused_forward.__get__(module)
        fused += 1
    return fused


def prepare(model, autocast: bool, fused: bool) -> None:
    """A LoRA model in one process readied to train: frozen weights in bf16 when training under bf16 autocast
    (`for_autocast`), adapters fused into their layers' matmuls when `fused` (`fuse`). Not for FSDP2, which shards
    the fp32 weights and owns the sharded modules' forward."""
    if autocast:
        for_autocast(model, torch.bfloat16)
    if fused:
        fuse(model)


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    active = self.active_adapters
    if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
            or active[0] not in self.lora_A):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    flat = x.reshape(-1, x.shape[-1])
    update = (self.lora_B[name].weight * self.scaling[name]).t()
    out = torch.addmm(self.base_layer(flat), torch.nn.functional.linear(flat, self.lora_A[name].weight), update)
    return out.view(*x.shape[:-1], out.shape[-1])


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


@contextlib.contextmanager
def reference(model):
    """`model` with its adapters switched off: the frozen base, the KL reference."""
    with model.disable_adapter():
        yield model


def merged_items(model):
    """(name, tensor) of the plain model (its own parameter names), every adapted weight merged; one merged
    tensor at a time, so that refreshing a copy never holds a second copy of all the weights. Sharded weights
    (FSDP2, several processes) are gathered whole, in the same order in every process."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapted = {f"{name}.base_layer.weight": module for name, module in base.named_modules()
               if isinstance(module, LoraLayer)}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        module = adapted.get(key)
        value = dist.full(value)
        if value.is_floating_point():  # frozen weights kept in bf16 (`for_autocast`): merged and saved in fp32
            value = value.float()
        if module is not None:
            value = value + sum(dist.full(module.get_delta_weight(a).detach()).float() for a in module.active_adapters)
        yield key.replace(".base_layer.", "."), value


def merged_state(model) -> dict[str, torch.Tensor]:
    """The state dict of the plain model with every adapted weight merged."""
    return dict(merged_items(model))


@torch.no_grad()
def merge_into(plain, model) -> None:
    """Copy `model`'s merged weights into `plain`, a model of the same architecture without adapters (any
    dtype)."""
    params = dict(plain.named_parameters())
    for key, value in merged_items(model):
        if key in params:
            params[key].copy_(value)


def save(model, folder: Path) -> None:
    """The merged model as a plain `save_pretrained` folder, and the adapter in `folder/adapter`."""
    write(model, folder, *gathered(model))


def gathered(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(the merged model's state, the adapter's state or None for peft's own) to save; sharded weights gathered
    (every process calls this, `write` runs in one)."""
    base = model.get_base_model()
    state = {k: v.contiguous() for k, v in merged_state(model).items()}
    tied = getattr(base.config, "tie_word_embeddings", False)
    if tied:  # stored once, as transformers does
        state.pop("lm_head.weight", None)
    adapter = None
    if dist.env().on:
        from peft import get_peft_model_state_dict

        adapter = {k: dist.full(v).detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    return state, adapter


def write(model, folder: Path, state: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor] | None) -> None:
    model.get_base_model().save_pretrained(folder, state_dict=state, safe_serialization=True)
    model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True,
                          **({"state_dict": adapter} if adapter is not None else {}))


def load_adapter(model, folder: Path) -> None:
    """Load the adapter weights saved by `save` into `model` (in place)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_DIR / "adapter_model.safetensors"
    if not path.exists():
        raise AhaError(f"{folder}: no LoRA adapter in this checkpoint (was it trained with lora.rank=0?)")
    if dist.env().on:
        return _load_sharded_adapter(model, load_file(str(path)), folder)
    result = set_peft_model_state_dict(model, load_file(str(path)))
    if getattr(result, "unexpected_keys", None):
        raise AhaError(f"{folder}: the adapter does not match the model (unexpected {result.unexpected_keys[:3]})")


def _load_sharded_adapter(model, saved: dict[str, torch.Tensor], folder: Path) -> None:
    """The saved adapter (peft's names, without the adapter's name) into a sharded model's adapters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    names = {}  # saved name -> the model's name
    for key in model.state_dict():
        if "lora_" in key:
            names[key.replace(".default.", ".")] = key
    unexpected = [k for k in saved if k not in names]
    if unexpected:
        raise AhaError(f"{folder}: the adapter does not match the model (unexpected {unexpected[:3]})")
    set_model_state_dict(model, {names[k]: v for k, v in saved.items()},
                         options=StateDictOptions(full_state_dict=True, strict=False))
