"""GRPO as pure tensor math: group advantages, the clipped surrogate, the k3 KL, loss aggregation.

No model, no I/O: every function here is checked in tests against numbers computed by hand.
Variants are parameters:
- GRPO (DeepSeekMath/R1): advantages divided by the group std; sequence-mean of token-means.
- Dr.GRPO: `scale_by_std=False` and `loss_agg="seq_mean_token_sum_norm"` (a constant normaliser).
- DAPO: clip-higher (`eps_high > eps_low`) and `loss_agg="token_mean"`.
Shapes: N = B*G sequences, T = completion tokens (right-padded, `mask` marks real tokens).
"""

from __future__ import annotations

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


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor | None, advantages: Tensor, mask: Tensor,
              ref_logprobs: Tensor | None = None, kl_coef: float = 0.0, eps_low: float = 0.2,
              eps_high: float = 0.2, loss_agg: str = "seq_mean_token_mean", num_sequences: float | None = None,
              num_tokens: float | None = None, max_tokens: int | None = None) -> LossTerms:
    """The GRPO objective for one (micro-)batch: clipped surrogate + kl_coef * k3 KL, aggregated.

    old_logprobs=None means mu=1: the rollouts came from these very weights, so the ratio is 1 by
    construction and we use logprobs.detach() instead of a second forward pass.
    """
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    per_token, low, high = clipped_surrogate(logprobs, old, advantages, eps_low, eps_high)
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
    return LossTerms(loss=loss, policy_loss=float(policy), kl=kl,
                     clip_low=float((low.float() * m).sum() / n), clip_high=float((high.float() * m).sum() / n))


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(target) per position without materialising a full-vocabulary log-softmax:
    gather the target logit, subtract logsumexp. logits (N, T, V), targets (N, T) -> (N, T) float32."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: Tensor) -> Tensor:
    """Per-position entropy of softmax(logits), (N, T, V) -> (N, T). For monitoring only."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)
