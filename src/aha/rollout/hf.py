"""The reference rollout engine on Hugging Face transformers: our own decode loop over a KV cache.

Why not `model.generate`: it keeps decoding rows that already finished (~40% of decode tokens
wasted on short GRPO groups) and samples with `torch.multinomial`. Here each prompt is prefilled
once (the prefix all prompts share, once for all) and its cache repeated G times; Llama-family models
then decode with `aha.rollout.fast_decode`; finished rows are dropped from the batch (and from the cache)
as soon as they end; sampling draws one uniform number per row and finds it in the cumulative
distribution (an exponential race, argmax p/E, drew a random number per vocabulary entry: 12% of
decode time, 15x the cost of this draw). Left padding keeps every row's last token aligned.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicCache

from aha.rollout import fast_decode
from aha.rollout.base import Completion, SamplingConfig, shared_prefix_len


def sample_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None,
                uniform: torch.Tensor | None = None):
    """(n, V) logits -> (n,) token ids, with temperature, top-k and top-p (nucleus) filtering. `uniform`: the
    (n,) random numbers in [0, 1) to draw with (drawn here when not given)."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float()
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= sampling.top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    if uniform is None:
        uniform = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64, device=logits.device)
    return inverse_cdf(torch.softmax(logits, dim=-1), uniform)


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor, block: int = 256) -> torch.Tensor:
    """(n, V) probabilities, (n,) uniform numbers in [0, 1) -> (n,) indices: for each row the first index whose
    cumulative probability exceeds uniform x total, i.e. a draw from the row's distribution.

    In two levels, in float64 (so that a rare token keeps its share): the sums of blocks of 256 entries locate
    the block, a cumulative sum over that one block locates the entry. A float64 cumulative sum over the whole
    vocabulary cost 18 ms for 64 rows of SmolLM2's 49,152 logits, 60% of a 64-row draw; this takes ~2 ms.
    Entries of probability 0 are never drawn."""
    n, V = probs.shape
    blk = min(block, V)
    nb = -(-V // blk)
    if nb * blk != V:
        probs = torch.nn.functional.pad(probs, (0, nb * blk - V))
    blocks = probs.view(n, nb, blk)
    cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # (n, nb)
    target = uniform.to(torch.float64).unsqueeze(-1) * cdf[:, -1:]  # (n, 1)
    b = torch.searchsorted(cdf, target, right=True).clamp_(max=nb - 1)  # the block where the draw lands
    before = torch.where(b > 0, cdf.gather(-1, (b - 1).clamp(min=0)), 0.0)
    inner = blocks.gather(1, b.unsqueeze(-1).expand(n, 1, blk)).squeeze(1)  # (n, blk)
    within = torch.searchsorted(inner.cumsum(-1, dtype=torch.float64) + before, target, right=True)
    # Rounding between the block's sum and its cumulative sum can put the target past the block's last entry:
    # take the block's last entry of non-zero probability then.
    last = torch.where(inner > 0, torch.arange(blk, device=probs.device), 0).amax(-1, keepdim=True)
    return (b * blk + torch.minimum(within, last)).squeeze(-1)


def cache_kwarg(model) -> str:
    """The name a model's forward takes its KV cache by: `cache` (transformers 5.x deprecates and will drop
    `past_key_values`), or `past_key_values` for models that only know that."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a peft wrapper
    params = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class HFEngine:
    """Batched sampling from a transformers causal LM (the policy itself: no weight copy needed)."""

    def __init__(self, model, tokenizer, max_batch: int = 64, compact_finished: float = 0.0,
                 fast_decode: bool = True, share_prefix: bool = True, record_logprobs: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        """Most sequences decoded at once; larger requests are split."""
        self.compact_finished = compact_finished
        """Finished rows leave the decode batch (a copy of the whole KV cache) once this share of the batch
        has finished; until then they decode padding that is thrown away. 0: at once."""
        self.fast_decode = fast_decode
        """Decode Llama-family models with `aha.rollout.fast_decode` (same numbers, less overhead); other
        models, or False, decode through transformers."""
        self.share_prefix = share_prefix
        """Prefill the tokens all prompts of a call begin with once, not once per prompt."""
        self.record_logprobs = record_logprobs
        """Keep each sampled token's log-prob (temperature 1, as the trainer computes them) in
        `Completion.logprobs`, for the trainer's importance correction when this copy of the weights differs
        from the trainer's (a bf16 copy). One log-softmax per decode step."""
        self.eos_ids = {i for i in [tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)]
                        if i is not None for i in (i if isinstance(i, list) else [i])}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)

    def sync_weights(self, model) -> None:
        self.model = model

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        per_call = max(1, self.max_batch // max(n, 1))
        groups: list[list[Completion]] = []
        for i in range(0, len(prompts), per_call):
            groups += self._generate(prompts[i:i + per_call], n, sampling)
        return groups

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        cache = DynamicCache()  # filled in place by every forward call
        use = {cache_kwarg(model): cache, "use_cache": True}
        # Tokens all prompts begin with (system prompt, worked example) are prefilled once, in one row.
        shared = shared_prefix_len(prompts) if self.share_prefix else 0
        if shared:
            model(input_ids=torch.tensor([prompts[0][:shared]], device=device),
                  position_ids=torch.arange(shared, device=device)[None], logits_to_keep=1, **use)
            cache.batch_repeat_interleave(len(prompts))
        rest = [p[shared:] for p in prompts]
        width = max(len(p) for p in rest)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.ones((len(prompts), shared + width), dtype=torch.long)  # [shared prefix | left pad | rest]
        for r, p in enumerate(rest):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, shared:shared + width - len(p)] = 0
        ids, mask = ids.to(device), mask.to(device)
        positions = shared + (mask[:, shared:].cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **use)
        # Only the last position's logits (P x V per prompt would be wasted). Each prompt is prefilled once
        # (its shared prefix once for all), then the cache fans out to G rows per prompt.
        logits = out.logits[:, -1, :].repeat_interleave(n, dim=0)
        if n > 1:
            cache.batch_repeat_interleave(n)
        mask = mask.repeat_interleave(n, dim=0)
        next_pos = positions[:, -1].repeat_interleave(n, dim=0) + 1
        decoder = None
        if self.fast_decode and fast_decode.supports(model):
            decoder = fast_decode.Decoder(model, cache, mask, sampling.max_new_tokens, shared=shared)
            cache = use = None
        total = len(prompts) * n
        alive = torch.arange(total, device=device)  # row index into the outputs for each cache row
        tokens: list[list[int]] = [[] for _ in range(total)]
        logps: list[list[float]] = [[] for _ in range(total)]
        finished = [False] * total
        stops = [s for s in sampling.stop if s]
        tail = max((len(s) for s in stops), default=0) + 8
        live = [True] * total  # per cache row: still generating
        for step in range(sampling.max_new_tokens):
            # One number per output row, drawn for all rows every step: a row's tokens do not depend on
            # which other rows are still in the batch (so compaction settings do not change the samples).
            nxt = sample_next(logits, sampling, uniform=torch.rand(total, dtype=torch.float64, device=device)[alive])
            nxt_list = nxt.tolist()
            lp_list = (torch.log_softmax(logits.float(), dim=-1).gather(1, nxt[:, None]).squeeze(1).tolist()
                       if self.record_logprobs else None)
            for j, (row, tok) in enumerate(zip(alive.tolist(), nxt_list)):
                if not live[j]:
                    continue
                tokens[row].append(tok)
                if lp_list is not None:
                    logps[row].append(lp_list[j])
                done = tok in self.eos_ids
                if not done and stops:
                    text_tail = self.tokenizer.decode(tokens[row][-8:], skip_special_tokens=False)[-tail:]
                    done = any(s in text_tail for s in stops)
                if done:
                    finished[row] = True
                    live[j] = False
            n_live = sum(live)
            if not n_live or step == sampling.max_new_tokens - 1:
                break
            if n_live < len(live) and len(live) - n_live >= self.compact_finished * len(live):
                keep = [j for j, a in enumerate(live) if a]
                if decoder is not None:
                    keep = decoder.select(keep)  # its own row order
                else:
                    cache.batch_select_indices(torch.tensor(keep, device=device))
                idx = torch.tensor(keep, device=device)
                alive, nxt, mask, next_pos = alive[idx], nxt[idx], mask[idx], next_pos[idx]
                live = [True] * n_live
            if decoder is not None:
                logits = decoder.step(nxt, next_pos)
            else:
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                out = model(input_ids=nxt.unsqueeze(-1), attention_mask=mask, position_ids=next_pos.unsqueeze(-1),
                            **use)
                logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        if was_training:
            model.train()
        groups = []
        for g, p in enumerate(prompts):
            group = []
            for k in range(n):
                row = g * n + k
                ids_row = tokens[row]
                text_ids = ids_row[:-1] if ids_row and ids_row[-1] in self.eos_ids else ids_row
                group.append(Completion(text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                                        completion_ids=tuple(ids_row), prompt_ids=tuple(p), finished=finished[row],
                                        logprobs=tuple(logps[row]) if self.record_logprobs else None))
            groups.append(group)
        return groups
