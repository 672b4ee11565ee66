"""Training batches from completions, and per-token log-probs of the completion tokens.

Layout of a batch row: [left pad | prompt | completion | right pad]. Every prompt ends at the same
column, so the completion region starts at one column for all rows and the LM head runs only on
completion positions (`logits_to_keep`): the prompt's logits are never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aha.grpo import token_entropy, token_logprobs
from aha.rollout.base import Completion


@dataclass
class Batch:
    input_ids: torch.Tensor  # (N, P+C)
    attention_mask: torch.Tensor  # (N, P+C)
    position_ids: torch.Tensor  # (N, P+C)
    completion_ids: torch.Tensor  # (N, C)
    completion_mask: torch.Tensor  # (N, C) 1 for real completion tokens
    prompt_width: int  # P

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                     self.completion_ids.to(device), self.completion_mask.to(device), self.prompt_width)


def collate(completions: list[Completion], pad_id: int) -> Batch:
    P = max(len(c.prompt_ids) for c in completions)
    C = max(1, max(len(c.completion_ids) for c in completions))
    n = len(completions)
    ids = torch.full((n, P + C), pad_id, dtype=torch.long)
    attn = torch.zeros((n, P + C), dtype=torch.long)
    cmask = torch.zeros((n, C), dtype=torch.float32)
    for r, c in enumerate(completions):
        p, k = len(c.prompt_ids), len(c.completion_ids)
        ids[r, P - p:P] = torch.tensor(c.prompt_ids, dtype=torch.long)
        attn[r, P - p:P] = 1
        if k:
            ids[r, P:P + k] = torch.tensor(c.completion_ids, dtype=torch.long)
            attn[r, P:P + k] = 1
            cmask[r, :k] = 1.0
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, attn, pos, ids[:, P:].clone(), cmask, P)


def completion_logprobs(model, batch: Batch, with_entropy: bool = False):
    """(N, C) log-probs of the completion tokens under `model` (and their entropy when asked)."""
    C = batch.completion_ids.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False, logits_to_keep=C + 1)
    logits = out.logits[:, :-1, :]  # position t predicts token t+1: keep P-1 .. P+C-2
    logp = token_logprobs(logits, batch.completion_ids)
    if not with_entropy:
        return logp, None
    with torch.no_grad():
        ent = token_entropy(logits.detach())
    return logp, ent
