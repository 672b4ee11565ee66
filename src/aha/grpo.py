"""GRPO as pure tensor math: group advantages, the clipped surrogate, the k3 KL, loss aggregation.

No model, no I/O: every function here is checked in tests against numbers computed by hand.
Variants are parameters:
- GRPO (DeepSeekMath/R1): advantages divided by the group std; sequence-mean of token-means.
- Dr.GRPO: `scale_by_std=False` and `loss_agg="seq_mean_token_sum_norm"` (a constant normaliser).
- DAPO: clip-higher (`eps_high > eps_low`) and `loss_agg="token_mean"`.
Shapes: N = B*G sequences, T = completion tokens (right-padded, `mask` marks real tokens).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def group_advantages(rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4) -> Tensor:
    """(N,) rewards -> (N,) advantages, centred within each prompt's group of `group_size`.

    With `scale_by_std` (GRPO) they are divided by the group's sample std plus eps. A group whose
    rewards are all equal gets exactly zero advantage (never NaN).
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True, unbiased=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centered = centered / (std + eps)
    equal = (grouped.max(dim=1, keepdim=True).values - grouped.min(dim=1, keepdim=True).values) == 0
    return centered.masked_fill(equal, 0.0).view(-1)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - pi) - (ref - pi) - 1 >= 0. (N, T)."""
    delta = (ref_logprobs - logprobs).clamp(-20.0, 20.0)  # guards exp overflow on wild tokens
    return torch.exp(delta) - delta - 1.0


def clipped_surrogate(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, eps_low: float = 0.2,
                      eps_high: float = 0.2) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token PPO/GRPO loss  -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)  with r = exp(logp - old).

    advantages: (N,) broadcast over tokens. Returns (loss (N,T), clipped_low (N,T) bool, clipped_high (N,T) bool):
    the masks mark tokens where the clip bound is the active (gradient-blocking) term.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    clipped_low = (ratio < 1.0 - eps_low) & (adv < 0)
    clipped_high = (ratio > 1.0 + eps_high) & (adv > 0)
    return loss, clipped_low, clipped_high


def aggregate(per_token: Tensor, mask: Tensor, mode: str, num_sequences: float | None = None,
              num_tokens: float | None = None, max_tokens: int | None = None) -> Tensor:
    """Reduce a per-token loss (N, T) to a scalar; the axis on which GRPO, DAPO and Dr.GRPO differ.

    token_mean:               sum(loss*mask) / num_tokens             (DAPO: every token weighs the same)
    seq_mean_token_mean:      sum_i mean_t(loss_i) / num_sequences    (GRPO: every sequence weighs the same)
    seq_mean_token_sum_norm:  sum(loss*mask) / (max_tokens * num_sequences)   (Dr.GRPO: a constant normaliser)

    With gradient accumulation, pass the totals of the whole batch (num_sequences, num_tokens) so the
    sum over micro-batches equals the loss of the full batch.
    """
    mask = mask.to(per_token.dtype)
    n_seq = float(num_sequences if num_sequences is not None else per_token.shape[0])
    if mode == "token_mean":
        n_tok = float(num_tokens if num_tokens is not None else mask.sum().item())
        return (per_token * mask).sum() / max(n_tok, 1.0)
    if mode == "seq_mean_token_mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(n_seq, 1.0)
    if mode == "seq_mean_token_sum_norm":
        if not max_tokens:
            raise ValueError("seq_mean_token_sum_norm needs max_tokens (the generation budget)")
        return (per_token * mask).sum() / (max_tokens * max(n_seq, 1.0))
    raise ValueError(f"unknown loss aggregation '{mode}'; choose from {LOSS_AGGREGATIONS}")


def truncated_is_weights(trainer_logprobs: Tensor, sampler_logprobs: Tensor, cap: float = 2.0) -> Tensor:
    """(N, C) per-token weights min(pi_trainer / pi_sampler, cap) for rollouts sampled by another copy of the
    weights (vLLM, a bf16 copy): the surrogate assumes the samples came from the trainer's policy, so each
    token is reweighted by how much likelier the trainer finds it, truncated at `cap` to bound the variance
    (truncated importance sampling, as TRL applies by default with vLLM). No gradient flows through them."""
    return torch.exp(trainer_logprobs.detach() - sampler_logprobs).clamp(max=cap)


@dataclass
class LossTerms:
    loss: Tensor
    """The scalar to backpropagate."""
    policy_loss: float
    kl: float
    """Mean per-token k3 KL (0 when no reference)."""
    clip_low: float
    """Fraction of real tokens clipped at 1-eps_low."""
    clip_high: float
    tis_mean: float = 1.0
    """Mean truncated importance weight over real tokens (1 when the sampler is the trainer)."""
    tis_capped: float = 0.0
    """Fraction of real tokens whose weight hit the cap."""


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor | None, advantages: Tensor, mask: Tensor,
              ref_logprobs: Tensor | None = None, kl_coef: float = 0.0, eps_low: float = 0.2,
              eps_high: float = 0.2, loss_agg: str = "seq_mean_token_mean", num_sequences: float | None = None,
              num_tokens: float | None = None, max_tokens: int | None = None,
              sampler_logprobs: Tensor | None = None, tis_cap: float = 2.0) -> LossTerms:
    """The GRPO objective for one (micro-)batch: clipped surrogate (times the truncated importance weights
    when `sampler_logprobs` are given) + kl_coef * k3 KL, aggregated.

    old_logprobs=None means mu=1: the rollouts came from these very weights, so the ratio is 1 by
    construction and we use logprobs.detach() instead of a second forward pass. `sampler_logprobs` (N, C):
    the log-probs the rollout engine sampled with, when its copy of the weights differs from the trainer's.
    """
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    per_token, low, high = clipped_surrogate(logprobs, old, advantages, eps_low, eps_high)
    tis = None
    if sampler_logprobs is not None and tis_cap > 0:
        tis = truncated_is_weights(old, sampler_logprobs, tis_cap)
        per_token = per_token * tis
    kl_tok = None
    if ref_logprobs is not None and kl_coef:
        kl_tok = k3_kl(logprobs, ref_logprobs)
        per_token = per_token + kl_coef * kl_tok
    loss = aggregate(per_token, mask, loss_agg, num_sequences, num_tokens, max_tokens)
    m = mask.to(torch.float32)
    n = m.sum().clamp(min=1.0)
    with torch.no_grad():
        policy = aggregate(per_token - (kl_coef * kl_tok if kl_tok is not None else 0.0), mask, loss_agg,
                           num_sequences, num_tokens, max_tokens)
        kl = float((kl_tok * m).sum() / n) if kl_tok is not None else 0.0
        tis_mean = float((tis * m).sum() / n) if tis is not None else 1.0
        tis_capped = float(((tis >= tis_cap).float() * m).sum() / n) if tis is not None else 0.0
    return LossTerms(loss=loss, policy_loss=float(policy), kl=kl,
                     clip_low=float((low.float() * m).sum() / n), clip_high=float((high.float() * m).sum() / n),
                     tis_mean=tis_mean, tis_capped=tis_capped)


def selected_logprobs(logits: Tensor, rows: Tensor, targets: Tensor, with_entropy: bool = False):
    """(R, V) logits; (M,) row and (M,) target indices -> (M,) float32 log p(targets[m] | row rows[m]) and, when
    asked, the (R,) entropy of each row's distribution (no gradient: for monitoring). A row may be the source
    of several targets (a packed group's last prompt position predicts the first token of all its completions).

    One softmax per row serves the log-normaliser, the entropy and the backward pass: the gradient of log p(y)
    is onehot(y) - softmax, so backward is one pass over the saved softmax. In autograd's terms the same as
    `logits[rows, targets] - logsumexp(logits)[rows]`, which on the 2-core CPU took 0.44 s forward and backward
    for 700 rows of SmolLM2's 49,152-entry vocabulary plus 0.19 s for the entropy (a zero-filled gradient, two
    vocabulary-sized gradients added, five passes for the entropy); this takes ~0.2 s for all three. The
    softmax (R, V) is kept for backward where the logits were kept before: no more memory. Without gradient
    or entropy (reference passes) logsumexp is the faster way (79 vs 100 ms for those 700 rows)."""
    if not with_entropy and not (torch.is_grad_enabled() and logits.requires_grad):
        x = logits.float()
        return x[rows, targets] - torch.logsumexp(x, dim=-1)[rows], None
    return _SelectedLogProbs.apply(logits, rows, targets, with_entropy)


class _SelectedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, rows, targets, with_entropy):
        x = logits.float()
        probs = torch.softmax(x, dim=-1)
        top, arg = x.max(dim=-1, keepdim=True)
        # log-normaliser: the top logit minus the log of its probability (>= 1/V, so no precision lost)
        lse = (top - probs.gather(-1, arg).log()).squeeze(-1)
        logp = x[rows, targets] - lse[rows]
        ent = None
        if with_entropy:  # H = lse - sum p * x
            ent = lse - torch.linalg.vecdot(probs, x)
            ctx.mark_non_differentiable(ent)
        ctx.save_for_backward(probs, rows, targets)
        ctx.in_dtype = logits.dtype
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        probs, rows, targets = ctx.saved_tensors
        per_row = torch.zeros(probs.shape[0], dtype=probs.dtype, device=probs.device).index_add_(0, rows, grad_logp)
        grad = probs * per_row.neg_().unsqueeze(-1)
        grad.index_put_((rows, targets), grad_logp, accumulate=True)
        return grad.to(ctx.in_dtype), None, None, None


def head_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, rows: Tensor, targets: Tensor,
                  with_entropy: bool = False, chunk: int = 0, kernel: str = "eager"):
    """`selected_logprobs(hidden @ weight.T + bias, rows, targets, with_entropy)` from the LM head's input:
    (R, H) hidden states, the (V, H) head. With 0 < chunk < R the (R, V) logits never exist: the head runs
    `chunk` rows at a time, keeping only each row's log-normaliser, and the backward pass computes each chunk's
    logits again (one more head forward) to send its gradient into the hidden states and the head.

    Why: for long completions the logits fill the memory: a packed row of 4,096 positions against Qwen2.5's
    151,936-entry vocabulary is 2.5 GB of fp32 scores for the softmax kept for backward and as much again for
    its gradient; chunked, chunk x V (on the CPU, log-probs and gradients of those 4,096 positions: peak 5.8 ->
    2.6 GiB with chunks of 512, for 57% more time in the head; bench/head_memory.py). Under autocast the head's
    matmuls run in the autocast dtype, as `nn.Linear` would."""
    if chunk <= 0 or hidden.shape[0] <= chunk:
        return selected_logprobs(torch.nn.functional.linear(hidden, weight, bias), rows, targets, with_entropy)
    compiled = kernel == "compiled" or (kernel == "auto" and chunk * weight.shape[0] >= COMPILED_HEAD_MIN_SCORES)
    return _ChunkedHeadLogProbs.apply(hidden, weight, bias, rows, targets, with_entropy, chunk, compiled)


COMPILED_HEAD_MIN_SCORES = 1 << 24
"""`kernel="auto"`: chunks of at least this many (position x vocabulary) scores use the compiled kernels."""


def _lse_entropy(x: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """(R, V) logits (any float dtype) -> the (R,) log-normaliser in fp32, and the entropy lse - sum p * x."""
    x = x.float()
    top = x.amax(-1, keepdim=True)
    e = (x - top).exp()
    total = e.sum(-1)
    lse = total.log() + top.squeeze(-1)
    return lse, (lse - (e * x).sum(-1) / total if with_entropy else None)


def _logits_grad(x: Tensor, lse: Tensor, neg_weight: Tensor, rows: Tensor, targets: Tensor, grad: Tensor) -> Tensor:
    """The gradient on (R, V) logits `x` of sum_i grad_i log p(targets_i | row rows_i): onehot - softmax, each
    row's softmax weighted by `neg_weight` (minus the gradient its targets receive), in `x`'s dtype."""
    g = (x.float() - lse[:, None]).exp() * neg_weight[:, None]
    return g.index_put((rows, targets), grad, accumulate=True).to(x.dtype)


_compiled: dict[str, object] = {}


def head_kernel(fn, compiled: bool):
    """`fn` itself, or with `compiled` its `torch.compile`d form: the LM head's elementwise work over the
    vocabulary in one pass per row instead of one pass over all rows per op. In eager mode every op (the fp32
    copy, max, subtract, exp, sum, the entropy's product) streams (R, V) scores through memory: for Qwen2.5's
    151,936 entries that was ~30% of a LoRA training step at R1 lengths on the 2-core CPU with AMX; compiled,
    883 positions' log-normaliser and entropy take 0.07 s instead of 0.62 s and their gradient 0.12 s instead of
    0.29 s (bench/grpo_vs_trl/README.md). Compiling takes ~20 s once per process (inductor caches it on disk);
    when it fails (no C++ compiler, say) a one-line warning says so and `fn` runs eagerly."""
    if not compiled:
        return fn
    if fn.__name__ not in _compiled:
        _compiled[fn.__name__] = torch.compile(fn, dynamic=True)
    kernel = _compiled[fn.__name__]
    if kernel is None:
        return fn

    def run(*args):
        try:
            return kernel(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure: the eager function computes the same
            _compiled[fn.__name__] = None
            print(f"warning: the compiled LM-head kernel failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  f"running it eagerly (runtime.head_kernel=eager skips compiling)", file=sys.stderr)
            return fn(*args)

    return run


def _compute_dtype(t: Tensor, weight: Tensor) -> torch.dtype:
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype


class _ChunkedHeadLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, targets, with_entropy, chunk, compiled):
        dt = _compute_dtype(hidden, weight)
        R = hidden.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dt), weight.to(dt)
            b = bias.to(dt) if bias is not None else None
            lse = torch.empty(R, dtype=torch.float32, device=h.device)
            ent = torch.empty(R, dtype=torch.float32, device=h.device) if with_entropy else None
            picked = torch.empty(rows.shape[0], dtype=torch.float32, device=h.device)  # the target's logit
            normaliser = head_kernel(_lse_entropy, compiled)
            for s in range(0, R, chunk):
                x = torch.nn.functional.linear(h[s:s + chunk], w, b)  # the compute dtype: read once below
                lse[s:s + chunk], e = normaliser(x, with_entropy)
                if with_entropy:
                    ent[s:s + chunk] = e
                m = ((rows >= s) & (rows < s + chunk)).nonzero().squeeze(1)
                picked[m] = x[rows[m] - s, targets[m]].float()
        if with_entropy:
            ctx.mark_non_differentiable(ent)
        ctx.save_for_backward(hidden, weight, bias, rows, targets, lse)
        ctx.chunk, ctx.dt, ctx.compiled = chunk, dt, compiled
        return picked - lse[rows], ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, bias, rows, targets, lse = ctx.saved_tensors
        chunk, dt = ctx.chunk, ctx.dt
        R = hidden.shape[0]
        grad_logp = grad_logp.float()
        per_row = torch.zeros(R, dtype=torch.float32, device=hidden.device).index_add_(0, rows, grad_logp)
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dt), weight.to(dt)
            b = bias.to(dt) if bias is not None else None
            dh = torch.empty_like(h) if want_h else None
            dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
            db = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_b else None
            logits_grad = head_kernel(_logits_grad, ctx.compiled)
            neg = per_row.neg()
            for s in range(0, R, chunk):
                x = torch.nn.functional.linear(h[s:s + chunk], w, b)
                m = ((rows >= s) & (rows < s + chunk)).nonzero().squeeze(1)
                g = logits_grad(x, lse[s:s + chunk], neg[s:s + chunk], rows[m] - s, targets[m], grad_logp[m])
                if want_h:
                    dh[s:s + chunk] = g @ w
                if want_w:
                    if dt == torch.float32:
                        dw.addmm_(g.t(), h[s:s + chunk])
                    else:
                        dw += (g.t() @ h[s:s + chunk]).float()
                if want_b:
                    db += g.float().sum(0)
        return (dh.to(hidden.dtype) if want_h else None, dw.to(weight.dtype) if want_w else None,
                db.to(bias.dtype) if want_b else None, None, None, None, None, None)
