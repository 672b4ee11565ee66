"""Training batches from completions, and per-token log-probs of the completion tokens.

`Batch`: rows [left pad | prompt | completion | right pad]. Every prompt ends at the same column, so the
completion region starts at one column for all rows and the LM head runs only on completion positions
(`logits_to_keep`): the prompt's logits are never materialised.

`PackedGroups`: completions packed end to end in one row, each prompt once before its completions, with a
block attention mask: no padding, and a group's prompt runs once for all its completions. Exact, gradients
included (each completion's gradient reaches its prompt's activations and sums there). With the R1 prompt and
a worked example, prompt tokens were ~60% of what a GRPO step's padded passes processed, and the padding
of ragged completions more than doubled the rest.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import _get_current_function_mode_stack
from torch.utils._device import DeviceContext
from transformers.cache_utils import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from aha import runtime
from aha.grpo import head_logprobs, selected_logprobs
from aha.rollout.base import Completion
from aha.transformers_internals import (
    attention_implementation,
    attention_name,
    cache_kwarg,
    head_replaced,
    register_attention,
)


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

    @property
    def tokens(self) -> int:
        """Real (prompt + completion) tokens the forward pass processes."""
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        return self.attention_mask.numel()


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


# Causal LMs whose forward is `lm_head(hidden_states[:, logits_to_keep])` and nothing after it (no logit
# soft-capping or scaling), so that the head can run outside the model (`kept_logprobs`).
PLAIN_HEAD_MODELS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "smollm3")


def _plain_head(model) -> tuple[torch.nn.Module, str] | None:
    """The module holding `model`'s LM head and the head's attribute name there, when the head may run
    outside the model; else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = model.config
    if (not isinstance(head, torch.nn.Linear) or getattr(cfg, "model_type", None) not in PLAIN_HEAD_MODELS
            or getattr(cfg, "final_logit_softcapping", None)):
        return None
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a peft wrapper
    name = next((name for name, m in owner.named_children() if m is head), None)
    return (owner, name) if name else None


AUTO_HEAD_ELEMENTS = 1 << 27
"""Unset `optim.logprob_chunk`: the head runs at most this many (position x vocabulary) scores at a time."""


def logprob_chunk(setting: int | None, model) -> int:
    """The head's chunk in positions: `setting` when given, else AUTO_HEAD_ELEMENTS / vocabulary."""
    if setting is not None:
        return setting
    vocab = model.get_output_embeddings().weight.shape[0]
    return max(256, AUTO_HEAD_ELEMENTS // vocab)


def kept_logprobs(model, run, rows: torch.Tensor, targets: torch.Tensor, with_entropy: bool = False,
                  chunk: int = 0):
    """Log-probs of `targets` (and entropies) from the logits that `run()`, a forward call of `model` with
    `logits_to_keep`, keeps: `rows` index them flattened to (R, V). With chunk > 0 the model returns its
    head's input instead and the head runs `chunk` positions at a time (`aha.grpo.head_logprobs`: the (R, V)
    logits never exist); models whose head is not plain (`PLAIN_HEAD_MODELS`) keep the whole logits."""
    found = _plain_head(model) if chunk > 0 else None
    if found is None:
        logits = run().logits
        return selected_logprobs(logits.reshape(-1, logits.shape[-1]), rows, targets, with_entropy)
    with head_replaced(*found) as head:
        hidden = run().logits
    return head_logprobs(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias, rows, targets, with_entropy,
                         chunk, runtime.applied().head_kernel)


def completion_logprobs(model, batch: Batch, with_entropy: bool = False, embed: InputEmbeddings | None = None,
                        chunk: int = 0):
    """(N, C) log-probs of the completion tokens under `model` (and their entropy when asked). `embed`: the
    pass's input embeddings (training passes), else the model looks its inputs up itself. `chunk`: see
    `kept_logprobs`."""
    N, C = batch.completion_ids.shape
    P = batch.prompt_width
    keep = torch.arange(P - 1, P + C - 1, device=batch.input_ids.device)  # position t predicts token t+1
    rows = torch.arange(N * C, device=batch.input_ids.device)
    logp, ent = kept_logprobs(
        model, lambda: model(**input_kwargs(batch.input_ids, embed), attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids, use_cache=False, logits_to_keep=keep),
        rows, batch.completion_ids.reshape(-1), with_entropy, chunk)
    return logp.view(N, C), (ent.view(N, C) if with_entropy else None)


@dataclass
class PackedGroups:
    """Completions packed end to end in ONE row, no padding: each prompt once, then its completions.

    Row layout `[prompt_a | a1 | a2 | ... | prompt_b | b1 | ...]`. A block attention mask lets each
    completion token see its own prompt and the earlier tokens of its own completion, nothing else; every
    completion's position ids continue from its prompt's end, exactly the positions it had when sampled. The
    LM head runs only on the positions whose logits are needed (each prompt's last token, which predicts the
    first token of all its completions, and every completion token but the last). Exact, gradients included:
    the same numbers as `Batch` up to float rounding, for the real tokens only (a padded group of ragged
    completions spends most of its work on padding: 2.3x the real tokens in the CPU benchmark's step)."""

    input_ids: torch.Tensor  # (1, L)
    position_ids: torch.Tensor  # (1, L)
    segment: torch.Tensor  # (L,) which prompt or completion each token belongs to
    owner: torch.Tensor  # (L,) the segment of each token's prompt
    keep: torch.Tensor  # (R,) positions whose logits are computed
    source: torch.Tensor  # (N, C) for each completion token: its row in the kept logits (0 for padding)
    completion_ids: torch.Tensor  # (N, C) right-padded, as in Batch
    completion_mask: torch.Tensor  # (N, C)
    prefix_len: int = 0
    """Leading prompt tokens left out of the row: they come as a `SharedPrefix`'s keys and values, seen by
    every token of the row."""

    def to(self, device) -> PackedGroups:
        return PackedGroups(*(t.to(device) for t in (self.input_ids, self.position_ids, self.segment, self.owner,
                                                    self.keep, self.source, self.completion_ids,
                                                    self.completion_mask)), prefix_len=self.prefix_len)

    @property
    def tokens(self) -> int:
        return self.input_ids.shape[1]

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.shape[1]

    def attention_mask(self, dtype: torch.dtype | None = None, window: int | None = None) -> torch.Tensor:
        """(1, 1, L, prefix_len + L): True (or 0.0 for a float `dtype`) where query q may attend to key k.
        `window`: a sliding-window layer's mask (a key at most window - 1 positions back)."""
        L = self.segment.shape[0]
        causal = torch.ones(L, L, dtype=torch.bool, device=self.segment.device).tril()
        seg_q, seg_k = self.segment.unsqueeze(1), self.segment.unsqueeze(0)
        allowed = causal & ((seg_k == seg_q) | (seg_k == self.owner.unsqueeze(1)))
        if self.prefix_len:
            allowed = torch.cat([allowed.new_ones(L, self.prefix_len), allowed], dim=1)
        if window:
            pos_q = self.position_ids[0]
            pos_k = torch.cat([torch.arange(self.prefix_len, device=pos_q.device), pos_q])
            allowed = allowed & (pos_q.unsqueeze(1) - pos_k.unsqueeze(0) < window)
        if dtype is None:
            return allowed[None, None]
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[None, None]

    def spans(self) -> list[tuple[int, int, int, int]]:
        """Each prompt and completion of the row as (start, end, context start, context end): its tokens see the
        shared prefix, the row's [context start, context end) (a completion: its prompt; a prompt: nothing)
        and, causally, themselves, which is all the block mask allows."""
        change = (torch.nonzero(self.segment[1:] != self.segment[:-1]).flatten() + 1).tolist()
        edges = [0, *change, self.segment.shape[0]]
        starts = torch.tensor(edges[:-1], device=self.segment.device)
        where: dict[int, tuple[int, int]] = {}
        out = []
        for (a, b), seg, own in zip(zip(edges[:-1], edges[1:]), self.segment[starts].tolist(),
                                    self.owner[starts].tolist()):
            where[seg] = (a, b)
            p0, p1 = (a, a) if own == seg else where[own]
            out.append((a, b, p0, p1))
        return out

    def blocks(self) -> list[tuple[int, int]]:
        """[start, end) of each prompt's run in the row (its prompt and completions): no token attends outside
        its own run (and the shared prefix)."""
        change = (torch.nonzero(self.owner[1:] != self.owner[:-1]).flatten() + 1).tolist()
        edges = [0, *change, self.owner.shape[0]]
        return list(zip(edges[:-1], edges[1:]))


def collate_groups(completions: list[Completion], pad_id: int, prefix_len: int = 0) -> PackedGroups:
    """Completions of any prompts; the completions of one prompt share one copy of it, in order of first
    appearance. `completion_ids`/`completion_mask` keep the caller's row order. `prefix_len`: leading tokens
    all prompts share, left out of the row (see `SharedPrefix`)."""
    by_prompt: dict[tuple, list[int]] = {}
    for r, c in enumerate(completions):
        by_prompt.setdefault(c.prompt_ids, []).append(r)
    C = max(1, max(len(c.completion_ids) for c in completions))
    ids: list[int] = []
    pos: list[int] = []
    seg: list[int] = []
    owner: list[int] = []
    keep: list[int] = []
    source = torch.zeros((len(completions), C), dtype=torch.long)
    n_seg = 0
    for prompt, rows in by_prompt.items():
        p_seg, P = n_seg, len(prompt)
        if prompt[:prefix_len] != completions[0].prompt_ids[:prefix_len] or P <= prefix_len:
            raise ValueError(f"prompt does not continue the shared prefix of {prefix_len} tokens")
        n_seg += 1
        ids += prompt[prefix_len:]
        pos += range(prefix_len, P)
        seg += [p_seg] * (P - prefix_len)
        owner += [p_seg] * (P - prefix_len)
        last_prompt_row = len(keep)
        keep.append(len(ids) - 1)
        for r in rows:
            comp = completions[r].completion_ids
            if not comp:
                continue
            start = len(ids)
            ids += comp
            pos += range(P, P + len(comp))
            seg += [n_seg] * len(comp)
            owner += [p_seg] * len(comp)
            n_seg += 1
            source[r, 0] = last_prompt_row
            source[r, 1:len(comp)] = torch.arange(len(keep), len(keep) + len(comp) - 1)
            keep += range(start, start + len(comp) - 1)
    comp_ids = torch.full((len(completions), C), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(completions), C), dtype=torch.float32)
    for r, c in enumerate(completions):
        if c.completion_ids:
            comp_ids[r, :len(c.completion_ids)] = torch.tensor(c.completion_ids, dtype=torch.long)
            cmask[r, :len(c.completion_ids)] = 1.0
    return PackedGroups(torch.tensor([ids], dtype=torch.long), torch.tensor([pos], dtype=torch.long),
                       torch.tensor(seg, dtype=torch.long), torch.tensor(owner, dtype=torch.long),
                       torch.tensor(keep, dtype=torch.long), source, comp_ids, cmask, prefix_len=prefix_len)


def sliding_window(model) -> int | None:
    """The window of a model with sliding-window attention layers (Gemma 3: 5 of 6 layers), else None."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(cfg, "sliding_window", None)
    return window if window and "sliding_attention" in (getattr(cfg, "layer_types", None) or ()) else None


def _block_attention(module, query, key, value, attention_mask, aha_blocks=None, **kwargs):
    """transformers' SDPA attention for a packed row, one block of it at a time (`aha_blocks`: [start, end)
    spans that tile the row). With a mask (GRPO's packed groups: a block is one prompt's run) the queries of a
    block attend to the shared prefix's keys and their own block's keys only, which is all the block mask allows
    (exact). Without one (SFT's packed samples: a block is one sample) each block is its own causal sequence.
    With two groups a row the dense masked attention computed ~1.8x the scores it needed (11% of the training
    and reference passes on the CPU benchmark); a packed SFT row of 1,024 tokens ~4x for samples of 256."""
    if not aha_blocks or len(aha_blocks) < 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    L = query.shape[2]
    S = key.shape[2] - L  # the shared prefix's keys come first (from the cache)
    sizes = [b - a for a, b in aha_blocks]
    if sum(sizes) != L or aha_blocks[0][0] != 0:
        raise ValueError(f"attention blocks {aha_blocks} do not tile a row of {L} tokens")
    queries = query.split(sizes, dim=2)
    keys, values = key.split([S, *sizes], dim=2), value.split([S, *sizes], dim=2)
    outs = []
    for j, (a, b) in enumerate(aha_blocks):
        k, v, m = keys[j + 1], values[j + 1], None
        if attention_mask is not None:
            m = attention_mask[..., a:b, S + a:S + b]
        if S:
            k, v = torch.cat([keys[0], k], dim=2), torch.cat([values[0], v], dim=2)
            if m is not None:
                m = torch.cat([attention_mask[..., a:b, :S], m], dim=-1)
        elif m is None:
            kwargs["is_causal"] = True
            window = kwargs.get("sliding_window")
            if window and b - a > window:  # a sliding-window layer (Gemma 3): the window within the sample
                i = torch.arange(b - a, device=query.device)
                m = ((i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window))[None, None]
        outs.append(sdpa_attention_forward(module, queries[j], k, v, m, **kwargs)[0])
    return torch.cat(outs, dim=1), None  # (1, L, heads, D)


def _span_attention(module, query, key, value, attention_mask, aha_spans=None, **kwargs):
    """transformers' SDPA attention for a packed row of groups, one prompt or completion at a time (`aha_spans`:
    `PackedGroups.spans`, with each span's mask): a completion's queries attend to the shared prefix's keys, its
    prompt's and its own (causally), and nothing else, which is all the block mask allows (exact). The dense
    masked attention of a group's row computes every (query, key) pair of the row: for 8 completions of ~240
    tokens after a ~150-token prompt, ~5x the pairs a completion can see, and as many scores held for the
    backward pass. `attention_mask` (the dense one) is not read."""
    L = query.shape[2]
    S = key.shape[2] - L  # the shared prefix's keys come first (from the cache)
    outs = []
    for a, b, p0, p1, mask in aha_spans:
        ks, vs = [key[:, :, S + a:S + b]], [value[:, :, S + a:S + b]]
        if p1 > p0:
            ks.insert(0, key[:, :, S + p0:S + p1])
            vs.insert(0, value[:, :, S + p0:S + p1])
        if S:
            ks.insert(0, key[:, :, :S])
            vs.insert(0, value[:, :, :S])
        k = ks[0] if len(ks) == 1 else torch.cat(ks, dim=2)
        v = vs[0] if len(vs) == 1 else torch.cat(vs, dim=2)
        outs.append(sdpa_attention_forward(module, query[:, :, a:b], k, v, mask,
                                           **{**kwargs, "is_causal": mask is None})[0])
    return torch.cat(outs, dim=1), None  # (1, L, heads, D)


def _span_masks(spans: list[tuple[int, int, int, int]], prefix: int, device) -> list[tuple]:
    """Each span with its mask: None (causal from the first key) without context, else the context keys all
    visible and the span's own causally; one mask per shape, shared by every layer."""
    made: dict[tuple[int, int], torch.Tensor] = {}
    out = []
    for a, b, p0, p1 in spans:
        n, ctx = b - a, prefix + p1 - p0
        if ctx and (n, ctx) not in made:
            own = torch.ones(n, n, dtype=torch.bool, device=device).tril()
            made[(n, ctx)] = torch.cat([own.new_ones(n, ctx), own], dim=1)[None, None]
        out.append((a, b, p0, p1, made.get((n, ctx)) if ctx else None))
    return out


def blocks_forward(model, blocks: list[tuple[int, int]], **inputs):
    """`model(**inputs)` with its SDPA attention computed one block of the row at a time (`_block_attention`),
    when there are two blocks or more; the model's attention setting is restored afterwards."""
    if len(blocks) < 2:
        return model(**inputs)
    register_attention("aha_blocks", _block_attention)
    with attention_implementation(model.config, "aha_blocks"):
        return model(**inputs, aha_blocks=blocks)


def spans_forward(model, spans: list[tuple[int, int, int, int]], prefix: int, **inputs):
    """`model(**inputs)` with its SDPA attention computed one prompt or completion at a time (`_span_attention`);
    the model's attention setting is restored afterwards."""
    register_attention("aha_spans", _span_attention)
    with attention_implementation(model.config, "aha_spans"):
        return model(**inputs, aha_spans=_span_masks(spans, prefix, inputs["position_ids"].device))


TRAIN_STATE_BYTES = 16
"""Bytes a trainable parameter holds while training: its fp32 weight, its gradient and AdamW's two moments."""

AUTO_CHECKPOINT_SHARE = 0.25
"""`gradient_checkpointing: auto` turns it on when the training state (TRAIN_STATE_BYTES a trainable parameter,
this process's share under FSDP), or the activations one micro-batch would keep for its backward pass, would
take more than this share of the device's memory: what is left must hold the weights, the rollout copy, the
logits of a chunk and the reward workers. Full fine-tuning of Qwen2.5-Coder-0.5B (630 M parameters with its
untied head: 10 GB of state, 40% of a 25 GB machine) was killed at 24.2 GB without it and peaked at 17.3 GB with
it; its LoRA training at R1 lengths (micro-batches of 8 completions of up to 512 tokens) peaked at 14.0-14.5 GiB
without and 8.8-9.6 GiB with it, for ~3% more time a token (bench/README.md, bench/grpo_vs_trl/README.md).
SmolLM2-135M's main job and the short benchmark work train without it."""

ACTIVATION_BYTES_PER_WIDTH = (40, 12)
"""Bytes one token keeps for the backward pass in one decoder layer, per unit of the hidden width and per unit
of the MLP's width, under bf16 autocast: the layer's inputs, its normalised and cast copies, the attention's
output and the MLP's intermediates. An estimate that errs high: autograd's saved-tensor hooks count 65-80% of
it on Qwen2-shaped layers (bench/activation_bytes.py: Qwen2.5-0.5B's widths 68 KB a token and layer in full
fine-tuning, 58 with LoRA, against 92 here); the resident memory holds more than they count (the allocator's
blocks, the backward pass's temporaries): Qwen2.5-0.5B's LoRA training at R1 lengths peaked 4.5-5.7 GB lower
with checkpointing (bench/grpo_vs_trl/README.md)."""


def activation_bytes(model, tokens: int) -> int:
    """Estimated bytes the decoder layers keep for backward over a micro-batch of `tokens` positions."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = cfg.hidden_size
    mlp = getattr(cfg, "intermediate_size", None) or 4 * hidden
    per_hidden, per_mlp = ACTIVATION_BYTES_PER_WIDTH
    return tokens * cfg.num_hidden_layers * (per_hidden * hidden + per_mlp * mlp)


def device_memory(device) -> int:
    """Bytes of memory the device has: a GPU's total, else the machine's RAM (or the cgroup's limit if lower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        return min(total, int(Path("/sys/fs/cgroup/memory.max").read_text()))
    except (OSError, ValueError):  # no cgroup v2 limit ("max", or no such file)
        return total


def checkpointing_wanted(setting: bool | str, model, device, world: int = 1, tokens: int = 0) -> bool:
    """`optim.gradient_checkpointing` resolved: true/false as given; "auto" by AUTO_CHECKPOINT_SHARE for the
    training state of `model`'s trainable parameters sharded over `world` processes (FSDP2), and for the
    activations of a micro-batch of up to `tokens` positions (0: not estimated). A GPU holds one process's
    shard and micro-batch; a CPU's memory holds those of every process on the machine (LOCAL_WORLD_SIZE)."""
    if setting != "auto":
        return bool(setting)
    here = 1 if torch.device(device).type == "cuda" else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    here = min(here, world)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    memory = device_memory(device)
    state = TRAIN_STATE_BYTES * trainable * here / world
    activations = activation_bytes(model, tokens) * here
    limit = AUTO_CHECKPOINT_SHARE * memory
    why = (f"the training state, {state / 1e9:.1f} GB," if state > limit else
           f"a micro-batch's activations, up to {activations / 1e9:.1f} GB for {tokens} tokens," if activations > limit
           else None)
    if why and os.environ.get("RANK", "0") == "0":  # say why the step recomputes (once, not once a process)
        print(f"gradient checkpointing on (auto: {why} would take over a quarter of the {memory / 1e9:.1f} GB this "
              f"device has; optim.gradient_checkpointing=false turns it off)", file=sys.stderr)
    return why is not None


def enable_gradient_checkpointing(model) -> None:
    """Keep only each decoder layer's input in the forward pass and run the layer again in the backward pass
    (transformers' activation checkpointing, non-reentrant): activation memory from every layer's
    intermediates to one layer's, for one more forward pass of compute. For long CoT on GPUs, where the
    activations, not the weights, fill the memory.

    The layer runs again after `blocks_forward` has restored the model's attention setting, and the plain
    kernel would attend across the samples of a packed row; so each checkpoint notes the attention
    implementation its forward ran with and the recompute runs with the same one; likewise the torch function
    modes the forward ran within (`aha.training.shared_casts.SharedCasts`: the recompute must save what the
    forward saved), which the backward pass does not run within."""
    config = model.config

    def context_fn():
        name = attention_name(config)  # read when the layer's forward runs
        modes = [m for m in _get_current_function_mode_stack() if not isinstance(m, DeviceContext)]  # torch's own
        return contextlib.nullcontext(), _within(attention_implementation(config, name), *modes)

    kwargs = {"use_reentrant": False, "context_fn": context_fn}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def _within(*contexts):
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        yield


class InputEmbeddings:
    """A training pass's input-embedding lookups as leaf tensors, their gradient sent through the embedding
    layer once per pass (`backward()`, after the micro-batches' and the shared prefix's backward passes).

    Why: the embedding layer's backward writes a dense (vocabulary x hidden) gradient, zero-filled, for the
    few hundred tokens a micro-batch holds, and with tied input/output embeddings (SmolLM2, Gemma) autograd
    then adds it to the LM head's gradient out of place: two passes over 113 MB per micro-batch for
    SmolLM2-135M, ~1 s of an 8.6 s training phase on the 2-core CPU. Here the lookups of all micro-batches go
    back through the layer in one call, and when the weight already holds a dense gradient (the LM head's,
    for tied embeddings) as a sparse gradient added in place: no vocabulary-sized temporary at all."""

    def __init__(self, model):
        self.module = model.get_input_embeddings()
        self.ids: list[torch.Tensor] = []
        self.leaves: list[torch.Tensor] = []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """The embeddings of `ids` (whatever the layer computes: Gemma scales them), as a leaf that collects
        its gradient."""
        with torch.no_grad():
            x = self.module(ids)
        self.ids.append(ids)
        self.leaves.append(x.requires_grad_(torch.is_grad_enabled()))
        return x

    def backward(self) -> None:
        got = [(i, x.grad) for i, x in zip(self.ids, self.leaves) if x.grad is not None]
        self.ids, self.leaves = [], []
        if not got:
            return
        ids = torch.cat([i.reshape(-1) for i, _ in got])
        grad = torch.cat([g.reshape(-1, g.shape[-1]) for _, g in got])
        module, weight = self.module, getattr(self.module, "weight", None)
        sparse = (isinstance(module, torch.nn.Embedding) and not module.sparse and weight.grad is not None
                  and weight.grad.layout == torch.strided and type(weight.grad) is torch.Tensor)
        module.sparse = sparse or module.sparse
        try:  # a sparse gradient is added into the dense one in place (autograd's AccumulateGrad)
            torch.autograd.backward(module(ids), grad)
        finally:
            if sparse:
                module.sparse = False


def input_kwargs(ids: torch.Tensor, embed: InputEmbeddings | None) -> dict:
    return {"input_ids": ids} if embed is None else {"inputs_embeds": embed(ids)}


class SharedPrefix:
    """The prompt tokens all of a step's groups begin with (the R1 system prompt, a worked example), run once
    per pass instead of once per micro-batch; every packed row then attends to its keys and values.

    Exact, gradients included: the rows see the prefix's keys and values through leaf tensors that collect
    their gradient over all micro-batches, and `backward()` sends it once through the prefix's own graph into
    the weights (call it after the micro-batches' backward passes). Made under `torch.no_grad()` (reference
    and old-policy passes) it holds no graph. With the CPU benchmark's prompts (105 tokens, 90 of them shared)
    it removes ~30% of the tokens the training and reference passes process."""

    def __init__(self, model, ids: list[int], device, embed: InputEmbeddings | None = None):
        self.config = model.config
        x = torch.tensor([ids], dtype=torch.long, device=device)
        cache = DynamicCache(config=model.config)
        model(**input_kwargs(x, embed), position_ids=torch.arange(len(ids), device=device)[None], use_cache=True,
              logits_to_keep=1, **{cache_kwarg(model): cache})
        self.kv = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        grad = torch.is_grad_enabled()
        self.leaves = [t.detach().requires_grad_(grad) for t in self.kv]
        self.length = len(ids)

    def cache(self):
        """A fresh cache holding the prefix (a forward pass appends to the cache it is given)."""
        pairs = [(self.leaves[i], self.leaves[i + 1]) for i in range(0, len(self.leaves), 2)]
        return DynamicCache(ddp_cache_data=pairs, config=self.config)

    def backward(self) -> None:
        """Send the gradient the rows left on the prefix's keys and values into the weights."""
        pairs = [(t, leaf.grad) for t, leaf in zip(self.kv, self.leaves) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        self.kv = self.leaves = []


SPAN_ATTENTION_MIN_TOKENS = 64
"""`group_attention="auto"`: attention one span at a time when the row's prompts and completions average at least
this many tokens, else each prompt's run under its block mask. Machine A (AMX): at R1 lengths (~240-token
completions) spans were 28% faster than the block mask (bench/group_attention.py); at ~20-token completions the
per-span calls, key copies and their backward cost more than the masked pairs they save (the short work of
bench/grpo_vs_trl: training passes 9.1 -> 5.8 s a step with blocks, bench/grpo_vs_trl/README.md). The threshold
lies between those two measured points."""


def packed_groups_logprobs(model, batch: PackedGroups, with_entropy: bool = False, prefix: SharedPrefix | None = None,
                           embed: InputEmbeddings | None = None, chunk: int = 0, attention: str = "auto"):
    """(N, C) log-probs of the completion tokens from one packed row (and their entropy when asked). `prefix`:
    the shared prefix the row was collated without (`collate_groups(..., prefix_len)`); `embed`: the pass's
    input embeddings (training passes); `chunk`: see `kept_logprobs`; `attention`: "spans" (one prompt or
    completion at a time), "blocks" (each prompt's run under its block mask) or "auto" (by the spans' mean
    length, `SPAN_ATTENTION_MIN_TOKENS`); all exact."""
    impl = attention_name(model) or "sdpa"
    if impl not in ("sdpa", "eager"):  # flash-attention kernels take no arbitrary mask
        raise ValueError(f"packed groups need sdpa or eager attention, not {impl}: set optim.share_prompt=false")
    eager = impl == "eager"  # eager adds the mask: float
    dtype = next(model.parameters()).dtype if eager else None
    if eager and torch.is_autocast_enabled(batch.input_ids.device.type):
        dtype = torch.get_autocast_dtype(batch.input_ids.device.type)
    if (prefix.length if prefix else 0) != batch.prefix_len:
        raise ValueError(f"the row was collated without {batch.prefix_len} prefix tokens, given {prefix and prefix.length}")
    extra = {cache_kwarg(model): prefix.cache(), "use_cache": True} if prefix else {"use_cache": False}
    mask = batch.attention_mask(dtype)
    window = sliding_window(model)
    if window:  # one mask per layer type: a custom mask replaces the model's own sliding-window masks
        if prefix:
            raise ValueError("a shared prefix is not supported for sliding-window models")
        mask = {"full_attention": mask, "sliding_attention": batch.attention_mask(dtype, window)}
    inputs = dict(**input_kwargs(batch.input_ids, embed), position_ids=batch.position_ids, attention_mask=mask,
                  logits_to_keep=batch.keep, **extra)
    spans = batch.spans() if impl == "sdpa" and not window and attention != "blocks" else []
    if spans and (attention == "spans" or batch.input_ids.shape[-1] >= SPAN_ATTENTION_MIN_TOKENS * len(spans)):
        run = lambda: spans_forward(model, spans, batch.prefix_len, **inputs)  # noqa: E731  one span at a time
    else:  # one prompt's run at a time (a sliding-window layer's mask is kept whole within it)
        blocks = batch.blocks() if impl == "sdpa" else []
        run = lambda: blocks_forward(model, blocks, **inputs)  # noqa: E731
    src = batch.source.reshape(-1)
    logp, ent = kept_logprobs(model, run, src, batch.completion_ids.reshape(-1), with_entropy, chunk)
    shape = batch.source.shape
    return logp.view(shape), (ent[src].view(shape) if with_entropy else None)
