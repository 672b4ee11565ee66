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

import copy

import torch
from transformers.cache_utils import DynamicCache

from aha import runtime
from aha.rollout import fast_decode
from aha.rollout.base import Completion, SamplingConfig, shared_prefix_len
from aha.transformers_internals import cache_kwarg


def sample_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None,
                uniform: torch.Tensor | None = None):
    """(n, V) logits -> (n,) token ids, with temperature, top-k and top-p (nucleus) filtering. `uniform`: the
    (n,) random numbers in [0, 1) to draw with (drawn here when not given)."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    if uniform is None:
        uniform = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64, device=logits.device)
    logits = logits.float()
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < sampling.top_p < 1.0:
        return nucleus_sample(logits, sampling.top_p, uniform)
    return inverse_cdf(torch.softmax(logits, dim=-1), uniform)


def nucleus_sample(logits: torch.Tensor, top_p: float, uniform: torch.Tensor, candidates: int = 64) -> torch.Tensor:
    """A draw from each row's nucleus: the most probable tokens whose mass reaches `top_p` (the token that
    crosses it included), renormalised. Exact without sorting the vocabulary: the nucleus lies within the row's
    top `candidates` whenever their mass reaches top_p (checked per row: the rows where it does not try 16x as
    many, then the whole sorted row). A full sort of Qwen2.5's 152k logits for 64 rows took ~0.5 s a decode
    step on the 2-core CPU; the top 64 and one pass for the normaliser take a few ms."""
    n, V = logits.shape
    out = torch.empty(n, dtype=torch.long, device=logits.device)
    rows = torch.arange(n, device=logits.device)
    k = min(candidates, V)
    while len(rows):
        x = logits[rows]
        top, idx = torch.topk(x, k, dim=-1)  # sorted, most probable first
        w = torch.exp(top - top[:, :1])  # unnormalised probabilities of the candidates
        total = torch.exp(torch.logsumexp(x, dim=-1, keepdim=True) - top[:, :1])  # ... and of the whole row
        before = w.cumsum(-1) - w  # mass of the more probable candidates
        done = (before[:, -1:] + w[:, -1:] >= top_p * total).squeeze(-1) | (k == V)
        keep = w.masked_fill(before >= top_p * total, 0.0)
        pick = inverse_cdf(keep[done], uniform[rows[done]])
        out[rows[done]] = idx[done].gather(1, pick[:, None]).squeeze(1)
        rows, k = rows[~done], min(k * 16, V)
    return out


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor, block: int = 256) -> torch.Tensor:
    """(n, V) probabilities, (n,) uniform numbers in [0, 1) -> (n,) indices: for each row the first index whose
    cumulative probability exceeds uniform x total, i.e. a draw from the row's distribution.

    In two levels: the sums of blocks of up to 256 entries (in float32, their running total in float64) locate
    the block, a float64 cumulative sum over that one block locates the entry (so that a rare token keeps its
    share). A float64 cumulative sum over the whole
    vocabulary cost 18 ms for 64 rows of SmolLM2's 49,152 logits, 60% of a 64-row draw; this takes ~2 ms.
    Entries of probability 0 are never drawn."""
    n, V = probs.shape
    blk = min(block, V)
    while blk > 32 and V % blk:  # a block that divides the vocabulary: no padded copy (Qwen2.5's 151,936: 128)
        blk //= 2
    nb = -(-V // blk)
    if nb * blk != V:
        probs = torch.nn.functional.pad(probs, (0, nb * blk - V))
    blocks = probs.view(n, nb, blk)
    cdf = blocks.sum(-1).double().cumsum(-1)  # (n, nb): float32 block sums, 4x faster than accumulating in float64
    target = uniform.to(torch.float64).unsqueeze(-1) * cdf[:, -1:]  # (n, 1)
    b = torch.searchsorted(cdf, target, right=True).clamp_(max=nb - 1)  # the block where the draw lands
    before = torch.where(b > 0, cdf.gather(-1, (b - 1).clamp(min=0)), 0.0)
    inner = blocks.gather(1, b.unsqueeze(-1).expand(n, 1, blk)).squeeze(1)  # (n, blk)
    within = torch.searchsorted(inner.cumsum(-1, dtype=torch.float64) + before, target, right=True)
    # Rounding between the block's sum and its cumulative sum can put the target past the block's last entry:
    # take the block's last entry of non-zero probability then.
    last = torch.where(inner > 0, torch.arange(blk, device=probs.device), 0).amax(-1, keepdim=True)
    return (b * blk + torch.minimum(within, last)).squeeze(-1)


class _Transformers:
    """Decoding through the model's own forward and transformers' cache (any causal LM). Rows can leave the
    batch; new rows cannot join it (its cache has one length for every row)."""

    refills = False

    def __init__(self, model, cache, key_mask: torch.Tensor, max_new: int):
        self.model, self.cache, self.mask = model, cache, key_mask
        self.kwarg = cache_kwarg(model)

    def step(self, ids: torch.Tensor, positions: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(ids), 1)], dim=1)
        out = self.model(input_ids=ids.unsqueeze(-1), attention_mask=self.mask, position_ids=positions.unsqueeze(-1),
                         use_cache=True, **{self.kwarg: self.cache})
        return out.logits[:, -1, :]

    def select(self, keep: list[int]) -> list[int]:
        idx = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask = self.mask[idx]
        return keep


class _Lean:
    """Decoding with `fast_decode.Decoder` (Llama-family models): rows leave the batch, and new prompts join it
    in the slots finished rows left (continuous batching)."""

    refills = True

    def __init__(self, model, cache, key_mask: torch.Tensor, max_new: int, shared: int, width: int):
        self.decoder = fast_decode.Decoder(model, cache, key_mask, max_new, shared=shared, width=width,
                                           kernel=runtime.applied().decode_kernel)

    def step(self, ids: torch.Tensor, positions: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        return self.decoder.step(ids, positions, active=active)

    def select(self, keep: list[int]) -> list[int]:
        return self.decoder.select(keep)

    def admit(self, slots: list[int], cache, key_mask: torch.Tensor) -> None:
        self.decoder.admit(slots, cache, key_mask)


class _Rows:
    """The bookkeeping of one decode call: which completion each batch row decodes (`slot_row`, -1 when the row
    is free), every completion's tokens and log-probs so far, its own stream of random numbers, and how many of
    each prompt's completions are still decoding."""

    def __init__(self, engine: HFEngine, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                 seeds: list[int], device):
        self.engine, self.prompts, self.n, self.sampling, self.seeds, self.device = \
            engine, prompts, n, sampling, seeds, device
        self.max_new = sampling.max_new_tokens
        self.tokens: dict[int, list[int]] = {}
        self.logps: dict[int, list[float]] = {}
        self.finished: dict[int, bool] = {}
        self.left: dict[int, int] = {}  # prompt index -> its completions still decoding
        self.slot_row: list[int] = []
        self.uniforms = torch.empty((0, self.max_new), dtype=torch.float64)
        self.stops = [s for s in sampling.stop if s]
        self.tail = max((len(s) for s in self.stops), default=0) + 8
        # Sampling at temperature 1 from the whole distribution: one softmax serves the draw and the log-probs.
        self.plain = sampling.temperature == 1.0 and not sampling.top_k and not 0.0 < sampling.top_p < 1.0

    def place(self, prompt_ids: list[int], slots: list[int]) -> None:
        """The n completions of each of `prompt_ids` start in batch rows `slots` (n a prompt, in order)."""
        draws = []
        for i in prompt_ids:
            self.left[i] = self.n
            for k in range(self.n):
                row = i * self.n + k
                self.tokens[row], self.logps[row], self.finished[row] = [], [], False
                draws.append(torch.rand(self.max_new, generator=torch.Generator().manual_seed(self.seeds[row]),
                                        dtype=torch.float64))
        rows = [i * self.n + k for i in prompt_ids for k in range(self.n)]
        if not self.slot_row:
            self.slot_row, self.uniforms = rows, torch.stack(draws)
            return
        for j, row in zip(slots, rows):
            self.slot_row[j] = row
        self.uniforms[torch.tensor(slots)] = torch.stack(draws)

    def keep(self, order: list[int]) -> None:
        """The batch now holds the old rows `order`, in that order."""
        self.slot_row = [self.slot_row[j] for j in order]
        self.uniforms = self.uniforms[torch.tensor(order)]

    def take(self, slots: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Samples the next token of the batch rows `slots` (their logits), records it, frees rows that end;
        returns the sampled tokens."""
        e, max_new = self.engine, self.max_new
        picks = torch.tensor([len(self.tokens[self.slot_row[j]]) if self.slot_row[j] >= 0 else 0 for j in slots])
        u = self.uniforms[torch.tensor(slots), picks.clamp(max=max_new - 1)].to(self.device)
        lp = None
        if e.record_logprobs and self.plain:  # the draw's own probabilities are the temperature-1 ones
            probs = torch.softmax(logits.float(), dim=-1)
            nxt = inverse_cdf(probs, u)
            lp = torch.log(probs.gather(1, nxt[:, None]).squeeze(1)).tolist()
        else:
            nxt = sample_next(logits, self.sampling, uniform=u)
            if e.record_logprobs:
                lp = torch.log_softmax(logits.float(), dim=-1).gather(1, nxt[:, None]).squeeze(1).tolist()
        for pos, (j, tok) in enumerate(zip(slots, nxt.tolist())):
            row = self.slot_row[j]
            if row < 0:
                continue
            self.tokens[row].append(tok)
            if lp is not None:
                self.logps[row].append(lp[pos])
            done = tok in e.eos_ids
            if not done and self.stops:
                text_tail = e.tokenizer.decode(self.tokens[row][-8:], skip_special_tokens=False)[-self.tail:]
                done = any(s in text_tail for s in self.stops)
            self.finished[row] = done
            if done or len(self.tokens[row]) >= max_new:
                self.slot_row[j] = -1
                self.left[row // self.n] -= 1
        return nxt

    def groups_done(self):
        """(prompt index, its completions) of every prompt whose completions have all ended, once."""
        for i in [i for i, c in self.left.items() if c == 0]:
            del self.left[i]
            yield i, [self.engine._completion(self.prompts[i], self.tokens.pop(i * self.n + k),
                                              self.logps.pop(i * self.n + k), self.finished.pop(i * self.n + k))
                      for k in range(self.n)]


class HFEngine:
    """Batched sampling from a transformers causal LM (the policy itself: no weight copy needed).

    Llama-family models decode with continuous batching: up to `max_batch` rows decode at once, and when a
    prompt's completions have all been placed and rows finish, the next prompts are prefilled into the rows
    they left, so that a long completion no longer holds an otherwise empty batch (the tail of a call's
    longest completions). Other models decode `max_batch` rows at a time, the batch shrinking as rows finish.

    Each completion draws its random numbers from its own stream (seeded from torch's global generator at the
    start of the call), so a completion does not depend on which other rows share its batch, on `max_batch`
    or on `compact_finished` (with a batch-invariant model; real models' numbers differ by float rounding
    between batch sizes)."""

    def __init__(self, model, tokenizer, max_batch: int = 64, compact_finished: float = 0.0,
                 fast_decode: bool = True, share_prefix: bool = True, record_logprobs: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        """Most sequences decoded at once."""
        self.compact_finished = compact_finished
        """Finished rows leave the decode batch (a copy of the whole KV cache) once this share of the batch
        has finished and no prompt is waiting for their rows; until then they decode padding that is thrown
        away. 0: at once."""
        self.fast_decode = fast_decode
        """Decode Llama-family models with `aha.rollout.fast_decode` (same numbers, less overhead, continuous
        batching); other models, or False, decode through transformers."""
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
        groups: list[list[Completion] | None] = [None] * len(prompts)
        for i, group in self.stream(prompts, n, sampling):
            groups[i] = group
        return groups

    def stream(self, prompts: list[list[int]], n: int, sampling: SamplingConfig):
        """Yields (prompt index, its n completions) as each prompt's completions are all done, in the order they
        finish: callers can score and report progress while the rest decode."""
        seeds = torch.randint(0, 2**62, (len(prompts) * n,), dtype=torch.int64).tolist()
        if self.fast_decode and fast_decode.supports(self.model):
            yield from self._decode(prompts, list(range(len(prompts))), n, sampling, seeds)
            return
        per_call = max(1, self.max_batch // max(n, 1))
        for i in range(0, len(prompts), per_call):
            yield from self._decode(prompts, list(range(i, min(i + per_call, len(prompts)))), n, sampling, seeds)

    def _prefill(self, prompts: list[list[int]], shared: int, width: int, prefix, n: int):
        """Prefills `prompts` (their first `shared` tokens from the `prefix` cache) left-padded to `shared +
        width` columns; returns the cache fanned out to n rows a prompt, those rows' next-token logits, key
        mask and next positions."""
        device = next(self.model.parameters()).device
        m = len(prompts)
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            if m > 1:
                cache.batch_repeat_interleave(m)
        else:
            cache = DynamicCache()
        ids = torch.full((m, width), self.pad_id, dtype=torch.long)
        mask = torch.ones((m, shared + width), dtype=torch.long)  # [shared prefix | left pad | rest]
        for r, p in enumerate(prompts):
            rest = p[shared:]
            ids[r, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
            mask[r, shared:shared + width - len(rest)] = 0
        ids, mask = ids.to(device), mask.to(device)
        positions = shared + (mask[:, shared:].cumsum(-1) - 1).clamp(min=0)
        # Only the last position's logits (P x V per prompt would be wasted), kept by index, not `logits_to_keep=1`:
        # that slices a strided view of the hidden states, and torch 2.13's bf16 CPU linear on a strided input
        # took 14 s instead of 0.03 s for 8 rows of Qwen2.5-0.5B's head (machine A), and 2 minutes and +15 GB
        # for 64. The cache fans out to n rows.
        last = torch.tensor([ids.shape[1] - 1], device=device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=last,
                         use_cache=True, **{cache_kwarg(self.model): cache})
        logits = out.logits[:, -1, :].repeat_interleave(n, dim=0)
        if n > 1:
            cache.batch_repeat_interleave(n)
        return cache, logits, mask.repeat_interleave(n, dim=0), positions[:, -1].repeat_interleave(n, dim=0) + 1

    @torch.no_grad()
    def _decode(self, prompts: list[list[int]], order: list[int], n: int, sampling: SamplingConfig,
                seeds: list[int]):
        """Generates n completions for each prompt in `order` (indices into `prompts`), yielding each prompt's
        group when its last completion ends."""
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        max_new = sampling.max_new_tokens
        mine = [prompts[i] for i in order]
        # Tokens all prompts begin with (system prompt, worked example) are prefilled once, in one row; every
        # prompt then takes the same columns (prefix, left padding, its rest), so rows can replace each other.
        shared = shared_prefix_len(mine) if self.share_prefix else 0
        width = max(len(p) for p in mine) - shared
        prefix = None
        if shared:
            prefix = DynamicCache()
            model(input_ids=torch.tensor([mine[0][:shared]], device=device),
                  position_ids=torch.arange(shared, device=device)[None], logits_to_keep=1, use_cache=True,
                  **{cache_kwarg(model): prefix})
        lean = self.fast_decode and fast_decode.supports(model)
        queue = list(order)
        first = queue[:max(1, self.max_batch // n) if lean else len(queue)]
        del queue[:len(first)]
        # Each prefill pads its prompts to the longest of them only; the lean decoder keeps room for the widest
        # prompt of the call and right-aligns every prompt's rest at that column.
        cache, logits, mask, next_pos = self._prefill([prompts[i] for i in first], shared,
                                                      max(len(prompts[i]) for i in first) - shared, prefix, n)
        rows = (_Lean(model, cache, mask, max_new, shared, shared + width) if lean
                else _Transformers(model, cache, mask, max_new))
        del cache, mask

        book = _Rows(self, prompts, n, sampling, seeds, device)
        book.place(first, list(range(len(first) * n)))
        nxt = book.take(list(range(len(book.slot_row))), logits)
        try:
            while True:
                yield from book.groups_done()
                free = [j for j, r in enumerate(book.slot_row) if r < 0]
                if queue and rows.refills and len(free) >= n:  # the next prompts take the rows that finished
                    joining = queue[:len(free) // n]
                    del queue[:len(joining)]
                    slots = free[:len(joining) * n]
                    cache, new_logits, mask, pos = self._prefill([prompts[i] for i in joining], shared,
                                                             max(len(prompts[i]) for i in joining) - shared, prefix, n)
                    rows.admit(slots, cache, mask)
                    del cache
                    book.place(joining, slots)
                    idx = torch.tensor(slots, device=device)
                    next_pos[idx] = pos
                    nxt[idx] = book.take(slots, new_logits)
                    continue  # rows that ended at their first token free their slots again
                live = [j for j, r in enumerate(book.slot_row) if r >= 0]
                if not live:
                    break
                if not (queue and rows.refills) and len(live) < len(book.slot_row) and \
                        len(book.slot_row) - len(live) >= self.compact_finished * len(book.slot_row):
                    keep = rows.select(live)  # the rows in their new order, as old row numbers
                    book.keep(keep)
                    idx = torch.tensor(keep, device=device)
                    nxt, next_pos = nxt[idx], next_pos[idx]
                active = torch.tensor([r >= 0 for r in book.slot_row], device=device)
                logits = rows.step(nxt, next_pos, active)
                next_pos = next_pos + active
                nxt = book.take(list(range(len(book.slot_row))), logits)
        finally:
            if was_training:
                model.train()

    def _completion(self, prompt: list[int], ids: list[int], logps: list[float], finished: bool) -> Completion:
        text_ids = ids[:-1] if ids and ids[-1] in self.eos_ids else ids
        return Completion(text=self.tokenizer.decode(text_ids, skip_special_tokens=True), completion_ids=tuple(ids),
                          prompt_ids=tuple(prompt), finished=finished,
                          logprobs=tuple(logps) if self.record_logprobs else None)
