"""Training passes under bf16 autocast that take their linear layers' bf16 weights from the rollout copy.

Under autocast every training pass casts each fp32 master weight to bf16 afresh (autocast caches a cast only
within one autocast region, and each micro-batch is a region of its own) and keeps the casts alive until the
pass's backward is done. GRPO already holds those very numbers: the rollout copy, whose bf16 weights are the
master weights rounded after the last update. `SharedCasts` makes the linear layers of the passes it wraps use
them: `F.linear(x, master)` becomes `x @ twin.T` with the gradient sent to `master` in fp32, as autocast sends
it through its cast. The same forward numbers (the twin is the cast, bit for bit); the weight gradient of a
layer used several times in one pass is summed in fp32 rather than autocast's bf16. No casts, and their
memory (2 bytes a weight while a pass's backward is pending), are made.

Holds only while the twins are the current master weights rounded: the trainer syncs the rollout copy after
every update when it shares it (`GRPOTrainer`). Gradient checkpointing recomputes layers in the backward pass,
which must then run within the mode too (the recomputed pass must save what the first one saved).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _TwinLinear(torch.autograd.Function):
    """F.linear(x, master, bias) computed with `twin`, master's bf16 rounding; gradients as under autocast."""

    @staticmethod
    def forward(ctx, x, master, twin, bias):
        xt = x.to(twin.dtype)
        ctx.save_for_backward(xt, twin)
        ctx.x_dtype, ctx.master_dtype = x.dtype, master.dtype
        return F.linear(xt, twin, bias.to(twin.dtype) if bias is not None else None)

    @staticmethod
    def backward(ctx, grad):
        xt, twin = ctx.saved_tensors
        want_x, want_w, _, want_b = ctx.needs_input_grad
        gx = (grad @ twin).to(ctx.x_dtype) if want_x else None
        flat = grad.reshape(-1, grad.shape[-1])
        gw = (flat.t() @ xt.reshape(-1, xt.shape[-1])).to(ctx.master_dtype) if want_w else None
        gb = flat.sum(0).to(ctx.master_dtype) if want_b else None
        return gx, gw, None, gb


class SharedCasts(TorchFunctionMode):
    """Within the mode, `F.linear` on a weight of `twins` (master -> its bf16 twin) computes with the twin
    (`_TwinLinear`) when autocast is on for the weight's device; everything else runs as it would."""

    def __init__(self, twins: dict[torch.Tensor, torch.Tensor]):
        super().__init__()
        self.twins = twins

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.linear:  # every op of the pass comes through here: the others straight on
            return func(*args, **kwargs)
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        twin = self.twins.get(weight) if isinstance(weight, torch.Tensor) else None
        if twin is None or not torch.is_autocast_enabled(weight.device.type):
            return func(*args, **kwargs)
        x = args[0] if args else kwargs["input"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        return _TwinLinear.apply(x, weight, twin, bias)


def linear_twins(model: torch.nn.Module, rounded: torch.nn.Module) -> dict[torch.Tensor, torch.Tensor]:
    """Each trainable linear weight of `model` -> the same weight in `rounded` (a bf16 copy of `model`), by name."""
    theirs = dict(rounded.named_parameters(remove_duplicate=False))
    twins = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
            twin = theirs.get(f"{name}.weight" if name else "weight")
            if twin is not None and twin.shape == module.weight.shape and twin.dtype == torch.bfloat16:
                twins[module.weight] = twin.detach()
    return twins
