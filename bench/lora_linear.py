"""One LoRA linear layer's forward and backward: peft's as aha trains it (frozen weight in bf16 under autocast,
`aha.training.lora.for_autocast`) against `aha.training.lora.fuse` (`lora.fused`, the default), which folds the scale into B and
adds the adapter's product into the base output inside one GEMM (`torch.addmm`), so the output-wide `* scaling` and `+` passes (and
the backward's `* scaling`) disappear. The R1-length profile (bench/grpo_vs_trl/README.md) put peft's
scale/add among the elementwise ops that took 27% of the training passes.

    .venv/bin/python bench/lora_linear.py [--tokens N] [--repeats R]

Qwen2.5-0.5B's adapted shapes (q, k/v, o, gate/up, down), rank 16, bf16 autocast, N tokens in one row; the two
variants alternate and the medians are printed with the largest difference in the outputs and gradients.
No weights needed; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from aha.training import lora

SHAPES = [("q_proj", 896, 896), ("k/v_proj", 896, 128), ("o_proj", 896, 896), ("gate/up_proj", 896, 4864),
          ("down_proj", 4864, 896)]


def peft_layer(d_in: int, d_out: int, rank: int):
    from peft import LoraConfig, get_peft_model

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(d_in, d_out, bias=False)

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(One(), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["proj"]))
    layer = model.base_model.model.proj
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.02)
    lora.for_autocast(model, torch.bfloat16)
    return model


def timed(fn, x, grad) -> tuple[float, torch.Tensor, torch.Tensor]:
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x)
    out.backward(grad)
    return time.perf_counter() - t, out.detach().float(), x.grad.float()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    print("| layer (in x out) | peft fwd+bwd ms | fused fwd+bwd ms | ratio | max |out diff| | max |dx diff| |")
    print("|---|---|---|---|---|---|")
    for name, d_in, d_out in SHAPES:
        model = peft_layer(d_in, d_out, args.rank)
        fused = copy.deepcopy(model)
        assert lora.fuse(fused) == 1
        x = torch.randn(1, args.tokens, d_in, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(1, args.tokens, d_out, dtype=torch.bfloat16)
        variants = {"peft": model, "fused": fused}
        times: dict[str, list[float]] = {k: [] for k in variants}
        outs = {}
        for i in range(args.repeats + 1):  # alternate; the first round warms up
            for k, fn in variants.items():
                x.grad = None
                fn.zero_grad(set_to_none=True)
                dt, out, dx = timed(fn, x, grad)
                if i:
                    times[k].append(dt)
                outs[k] = (out, dx)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        d_out_ = (outs["peft"][0] - outs["fused"][0]).abs().max().item()
        d_dx = (outs["peft"][1] - outs["fused"][1]).abs().max().item()
        print(f"| {name} ({d_in} x {d_out}) | {med['peft']:.2f} | {med['fused']:.2f} | "
              f"{med['peft'] / med['fused']:.2f} | {d_out_:.3g} | {d_dx:.3g} |")


if __name__ == "__main__":
    main()
