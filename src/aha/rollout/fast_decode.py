"""A lean decode step for Llama-family models (Llama, SmolLM2, Qwen2): the HF engine's decode loop without
transformers' per-token machinery.

Why: in eager transformers a decode step with 64 rows spent 31% of its time concatenating the KV cache
(`torch.cat` per layer and token) and 16% in the CPU flash-attention kernel, which is poor at one query
token; with 2 rows left, small ops took a third of the step. Here the keys and values live in one
preallocated buffer written in place, attention for the single new token is two batched matmuls with the
query heads grouped under their key/value head (no `repeat_kv`), and the projections use the model's own
weights, q/k/v and gate/up concatenated (and transposed) once per generation so each layer runs four
matmuls instead of seven. Prefill stays with transformers (one call per generation); its cache is copied in.

The numbers match transformers' forward to float rounding (`tests/test_rollout.py`); any model this module
does not know (`supports`) decodes through transformers as before.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

_FAMILIES = ("llama", "qwen2")


def supports(model) -> bool:
    """True for the decoder-only models whose layers this module reproduces exactly: Llama-style (RMSNorm,
    rotary, grouped-query attention, SwiGLU), no sliding window, no MLP bias."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _FAMILIES:
        return False
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "mlp_bias", False):
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    inner = getattr(model, "model", None)
    return inner is not None and hasattr(inner, "rotary_emb") and hasattr(model, "lm_head")


def _transposed(*weights: torch.Tensor, block: int = 128) -> torch.Tensor:
    """The weights stacked along their output dimension, as one contiguous (in, out) matrix, copied in blocks
    of 128 output rows (2.4x faster than one strided copy on the CPU benchmark: 0.15 vs 0.37 s for SmolLM2's
    weights) and with no concatenated temporary."""
    out = sum(w.shape[0] for w in weights)
    buf = weights[0].new_empty((weights[0].shape[1], out))
    start = 0
    for w in weights:
        w = w.detach()
        for r in range(0, w.shape[0], block):
            rows = w[r:r + block]
            buf[:, start + r:start + r + rows.shape[0]].copy_(rows.t())
        start += w.shape[0]
    return buf


def _can_pack(dtype: torch.dtype, device: torch.device) -> bool:
    """oneDNN's prepacked bf16 linear is available: a CPU with bf16 support in oneDNN (AVX512-BF16/AMX, or
    AVX512 emulation) and a torch built with it."""
    if dtype != torch.bfloat16 or device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A (out, in) bf16 weight reordered once into oneDNN's blocked layout for a decode-sized batch, so that
    each decode matmul streams the weight instead of reordering it first. Qwen2.5-0.5B's gate/up (896 x 9,728)
    on machine A (AMX), 2 threads: 0.85 ms at 1-16 rows and 2.2 ms at 64 rows, against 2.3-2.9 and 3.5 ms for
    `x @ W.T` (the weight read at ~20 GB/s, the memory's rate, instead of ~7 GB/s); the same numbers bit for bit
    in our measurements (the tests allow float rounding)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)


def _packed_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x @ W.T + b with a weight prepacked by `_pack`."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def _plain_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x @ w + b with an (in, out) matrix from `_transposed`."""
    return x @ w if b is None else torch.addmm(b, x, w)


def _weight(*weights: torch.Tensor, rows: int, pack: bool, bias: torch.Tensor | None = None):
    """The layer's weights stacked along their output dimension, as (weight, bias) for `_packed_linear` (pack)
    or `_plain_linear` (one contiguous transposed matrix)."""
    if not pack:
        return _transposed(*weights), bias
    w = weights[0].detach() if len(weights) == 1 else torch.cat([w.detach() for w in weights])
    return _pack(w, rows), None if bias is None else bias.detach()


def _rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Plain ops: torch's fused rms_norm took ~90 us a call on 2 rows (dtype round trips), 11% of a step.
    if h.dtype != torch.float32:  # as transformers does: normalise in float32
        x = h.float()
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True).add_(eps)) * weight


def _layers(h, cos, sin, bias, keys, values, rows, cols, t1: int, layers, eps: float, scale: float,
            heads: tuple[int, int, int], linear, attend=None):
    """The decoder layers of one step: (B, H) hidden states of the new tokens -> the last layer's output; each
    layer's new keys and values written into `keys[i]`/`values[i]` (B, n_kv, columns, D) at (`rows`, `cols`).
    `attend(i, q, t1)` attends the (B, n_kv, g, D) grouped queries; None: torch's fused kernel over the first
    `t1` columns under the additive `bias` (the bf16 path, and the one `torch.compile` sees)."""
    nh, nkv, D = heads
    B, half = h.shape[0], D // 2
    for i, (ln1, qkv_w, qkv_b, o_w, ln2, gate_up, down) in enumerate(layers):
        qkv = linear(_rms_norm(h, ln1, eps), qkv_w, qkv_b)
        qk, v = qkv.view(B, nh + 2 * nkv, D).split([nh + nkv, nkv], dim=1)
        rot = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
        qk = qk * cos + rot * sin  # rotary on the query and key heads together
        q, k = qk.split([nh, nkv], dim=1)
        keys[i][rows, :, cols] = k
        values[i][rows, :, cols] = v
        q = q.reshape(B, nkv, nh // nkv, D)  # query heads grouped under their kv head
        if attend is None:
            attn = F.scaled_dot_product_attention(q.contiguous(), keys[i][:, :, :t1], values[i][:, :, :t1],
                                                  attn_mask=bias, scale=scale)
        else:
            attn = attend(i, q, t1)
        h = h + linear(attn.reshape(B, nh * D), o_w, None)
        gate, up = linear(_rms_norm(h, ln2, eps), gate_up, None).chunk(2, dim=-1)
        h = h + linear(F.silu(gate) * up, down, None)
    return h


DECODE_COMPILE_MIN_PARAMS = 50_000_000
"""`runtime.decode_kernel=auto` compiles the decode step for models of at least this many parameters."""

_compiled: dict[str, object] = {}


def _compiled_layers():
    """`_layers` compiled by `torch.compile` with the prepacked matmuls as an opaque operator (inductor lowers
    oneDNN's packed linear only for weights frozen into the graph, and these change every training step): the
    elementwise ops between the matmuls (RMSNorm, rotary, SiLU, residual adds, the cache writes) fused into a few
    C++ loops, the step's ~40 small ops a layer no longer dispatched one by one. None where compiling failed."""
    if "layers" not in _compiled:
        lib = torch.library.Library("aha_decode", "DEF")
        lib.define("packed_linear(Tensor x, Tensor w, Tensor? b) -> Tensor")
        for key in ("CPU", "MkldnnCPU"):
            lib.impl("packed_linear", _packed_linear, key)
        lib.impl("packed_linear", lambda x, w, b: x.new_empty((x.shape[0], w.shape[0])), "Meta")
        _compiled["lib"] = lib  # the operator lives as long as its library object
        _compiled["linear"] = torch.ops.aha_decode.packed_linear
        from torch._inductor import lowering

        native = lowering.fallback_handler(torch.ops.mkldnn._linear_pointwise.default, add_to_fallback_set=False)
        lowering.register_lowering(torch.ops.aha_decode.packed_linear, type_promotion_kind=None)(
            lambda x, w, b: native(x, w, b, "none", [], ""))
        _compiled["layers"] = torch.compile(_layers)
    return _compiled["layers"]


class Decoder:
    """Decodes a batch one token at a time from a prefilled transformers cache.

    `prefill_cache`: the transformers cache after the prompt forward (rows already fanned out); `key_mask`:
    (B, W) 1 for real prompt tokens, 0 for left padding; `max_new`: the most tokens that will be appended.
    `shared`: the first `shared` columns hold the same tokens at the same positions in every row (the prompts'
    common prefix). While at least `cascade_rows` rows decode, their keys and values are read once for all
    rows (one matmul per layer for the scores of every row's queries against them, one for their values):
    attention read 64 copies of them, 8% of a generation's time; its matmuls went from 31 to 18 ms of a 64-row
    step, the step 6-10% faster at 32 and 64 rows, no faster at 16 or fewer (the extra matmuls and the scores'
    concatenation). Below that the rows attend to the prefix in their own columns, which hold it all along."""

    cascade_rows = 24
    pack = True
    """Prepack bf16 weights for oneDNN where it can (`_pack`); False: plain transposed matrices."""

    def __init__(self, model, prefill_cache, key_mask: torch.Tensor, max_new: int, shared: int = 0,
                 width: int | None = None, kernel: str = "auto"):
        cfg = model.config
        inner = model.model
        self.model = model
        self.eps = cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        # Weights transposed to (in, out), contiguous: oneDNN picks a poor kernel for F.linear(x, W) at 4-16
        # rows (a decode step at 4 rows: 46 vs 70 ms, at 12: 75 vs 92 ms; equal at 1-3 rows). The copy costs
        # ~0.15 s a generation for SmolLM2-135M.
        # In bf16 on a CPU whose oneDNN has bf16, the weights are prepacked instead (`_pack`, 2-3x faster
        # decode matmuls on AMX).
        B = key_mask.shape[0]
        W = max(width or 0, key_mask.shape[1])  # prompt columns: the widest prompt that may join
        self.prefix_len = shared
        dtype = model.lm_head.weight.dtype
        pack = self.pack and _can_pack(dtype, model.lm_head.weight.device)
        self.packed = pack
        # In bf16, attention for the new token is torch's fused kernel (scaled_dot_product_attention): bf16
        # batched matmuls of this shape are slow on the CPU (a (64 x 2)-batch of 7 x 64 @ 64 x 300 took 8 ms,
        # the same in fp32 2.7 ms; attention of 64 rows over 300 keys 42 ms against the fused 6.5 ms, machine A,
        # noisy). The fused kernel has no cascade over a shared prefix.
        self.fused = dtype == torch.bfloat16
        self.layers = []
        for layer in inner.layers:
            at, mlp = layer.self_attn, layer.mlp
            qkv_b = None
            if at.q_proj.bias is not None:
                qkv_b = torch.cat([at.q_proj.bias, at.k_proj.bias, at.v_proj.bias]).detach()
            qkv_w, qkv_b = _weight(at.q_proj.weight, at.k_proj.weight, at.v_proj.weight, rows=B, pack=pack,
                                   bias=qkv_b)
            self.layers.append((layer.input_layernorm.weight.detach(), qkv_w, qkv_b,
                                _weight(at.o_proj.weight, rows=B, pack=pack)[0],
                                layer.post_attention_layernorm.weight.detach(),
                                _weight(mlp.gate_proj.weight, mlp.up_proj.weight, rows=B, pack=pack)[0],
                                _weight(mlp.down_proj.weight, rows=B, pack=pack)[0]))
        self.head, self.head_bias = _weight(model.lm_head.weight, rows=B, pack=pack,
                                            bias=getattr(model.lm_head, "bias", None))
        self.linear = _packed_linear if pack else _plain_linear
        # kernel (`runtime.decode_kernel`): the layers' step compiled where the weights are prepacked (auto: for
        # models of DECODE_COMPILE_MIN_PARAMS or more, where the ~40 small ops a layer cost more than the
        # compiling; tiny models decode eagerly).
        big = sum(p.numel() for p in model.parameters()) >= DECODE_COMPILE_MIN_PARAMS
        self.compiled = pack and (kernel == "compiled" or (kernel == "auto" and big))
        n_layers = len(self.layers)
        layer0 = prefill_cache.layers[0]
        self.width = W
        # Zeros, not empty memory: a row shorter than the widest reads columns it has not written (masked, but a
        # NaN left there by the allocator would survive the mask's zero weight).
        # One buffer per layer for the keys and one for the values (not views of one tensor: a compiled step
        # writing into views of a shared base copied the base per layer).
        self.keys = [layer0.keys.new_zeros((B, self.n_kv, W + max_new, self.head_dim)) for _ in range(n_layers)]
        self.values = [k.clone() for k in self.keys]
        dev = layer0.keys.device
        # Additive key bias: 0 where a key may be attended to, -inf for left padding and unwritten columns.
        self.bias = torch.full((B, W + max_new), float("-inf"), dtype=layer0.keys.dtype, device=dev)
        self.lengths = torch.full((B,), W, dtype=torch.long, device=dev)
        """Per row: the columns written (its prompt's W, then one per token fed); rows that joined later or
        were held (`step(active=...)`) are shorter."""
        self.admit(list(range(B)), prefill_cache, key_mask)
        self.shared = shared if B >= self.cascade_rows and not self.fused else 0
        if self.shared:  # the prefix's keys and values once (from row 0), (n_layers, 2, n_kv, S, D)
            self.prefix = torch.stack([torch.stack([k[0, :, :shared], v[0, :, :shared]])
                                       for k, v in zip(self.keys, self.values)])

    def admit(self, slots: list[int], prefill_cache, key_mask: torch.Tensor) -> None:
        """Rows `slots` start over with new prompts: the transformers cache of their prefill (len(slots) rows
        laid out as [shared prefix | left padding | rest], at most `width` columns) and its key mask. Each row's
        prompt ends at column `width`: the prefix keeps its columns, the rest moves right, the gap between is
        masked. Continuous batching: a finished row's slot takes the next prompt while the others decode on."""
        m, w = key_mask.shape
        W, S = self.width, self.prefix_len
        if m != len(slots) or w > W or w < S:
            raise ValueError(f"admit: key mask {tuple(key_mask.shape)} for {len(slots)} rows of {W} columns")
        idx = torch.tensor(slots, device=self.bias.device)
        cols = torch.cat([torch.arange(S), torch.arange(W - (w - S), W)]).to(self.bias.device)
        rows, at = idx[:, None], cols[None, :]
        for i, cl in enumerate(prefill_cache.layers[:len(self.layers)]):
            self.keys[i][rows, :, at] = cl.keys.transpose(1, 2)  # indexed as (m, w, nkv, D)
            self.values[i][rows, :, at] = cl.values.transpose(1, 2)
        bias = torch.full((m, self.bias.shape[1]), float("-inf"), dtype=self.bias.dtype, device=self.bias.device)
        bias[:, cols] = torch.where(key_mask.bool(), 0.0, float("-inf")).to(bias.dtype)
        self.bias[idx] = bias
        self.lengths[idx] = W

    def select(self, idx: list[int]) -> list[int]:
        """Keep only the rows `idx` (ascending; finished rows leave the batch). Returns the new row order as old
        row numbers: rows from the end move into the holes, so only as many rows are copied as have left."""
        n, t = len(idx), int(self.lengths.max())
        keep = set(idx)
        holes = [r for r in range(n) if r not in keep]
        movers = [r for r in idx if r >= n]
        order = list(range(n))
        for hole, row in zip(holes, movers):
            for buf in (*self.keys, *self.values):
                buf[hole, :, :t] = buf[row, :, :t]
            self.bias[hole] = self.bias[row]
            self.lengths[hole] = self.lengths[row]
            order[hole] = row
        self.keys, self.values = [k[:n] for k in self.keys], [v[:n] for v in self.values]
        self.bias, self.lengths = self.bias[:n], self.lengths[:n]
        if self.shared and n < self.cascade_rows:
            self.shared = 0  # the plain path reads the prefix from every row's own columns (still there)
            self.prefix = None
        return order

    @torch.no_grad()
    def step(self, ids: torch.Tensor, positions: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) new tokens at (B,) positions -> (B, V) next-token logits; the tokens' keys and values join the
        cache, each row's in its next column. `active`: (B,) bool, False for rows that only hold their slot
        (finished, waiting for a new prompt): their column is overwritten again next step."""
        inner = self.model.model
        B = ids.shape[0]
        cols = self.lengths
        rows = torch.arange(B, device=cols.device)
        t = int(cols.max())  # the widest row's new column; shorter rows' later columns are masked
        D = self.head_dim
        h = inner.embed_tokens(ids)  # (B, H)
        cos, sin = inner.rotary_emb(h, positions.unsqueeze(-1))  # (B, 1, D) each
        cos, sin = cos.view(B, 1, D), sin.view(B, 1, D)
        self.bias[rows, cols] = 0.0
        bias = self.bias[:, None, None, :t + 1]
        if self.fused:  # the fused kernel reads a contiguous mask (a strided one costs a copy per layer)
            bias = bias.contiguous()
        h = self._layers(h, cos, sin, bias, rows, cols, t + 1)
        self.lengths = cols + (1 if active is None else active.to(cols.dtype))
        return self.linear(inner.norm(h), self.head, self.head_bias)

    def _layers(self, h, cos, sin, bias, rows, cols, t1: int) -> torch.Tensor:
        """The decoder layers of this step: compiled (`_compiled_layers`) or eager; in bf16 attention is torch's
        fused kernel, in fp32 two batched matmuls (`_attend`)."""
        args = (h, cos, sin, bias, self.keys, self.values, rows, cols, t1, self.layers, self.eps, self.scale,
                (self.n_heads, self.n_kv, self.head_dim))
        # one row: eager (torch.compile specialises a batch of one, and a third compile costs more than it saves)
        kernel = _compiled_layers() if self.compiled and h.shape[0] > 1 else None
        if kernel is not None:
            try:
                return kernel(*args, _compiled["linear"])
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager layers compute the same
                self.compiled = False
                _compiled["layers"] = None
                print(f"warning: the compiled decode step failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''}); decoding eagerly "
                      f"(runtime.decode_kernel=eager skips compiling)", file=sys.stderr)
        return _layers(*args, self.linear, None if self.fused else functools.partial(self._attend, bias=bias))

    def _attend(self, i: int, q: torch.Tensor, t1: int, bias: torch.Tensor) -> torch.Tensor:
        """fp32 attention of (B, n_kv, g, D) queries over the first `t1` columns: two batched matmuls, or the
        cascade over a shared prefix while enough rows decode."""
        if self.shared:
            return self._cascade(i, q, bias, t1 - 1)
        keys, values = self.keys[i][:, :, :t1], self.values[i][:, :, :t1]  # (B, nkv, t1, D)
        scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(self.scale)
        probs = torch.softmax(scores.add_(bias), dim=-1, dtype=torch.float32).to(scores.dtype)
        return torch.matmul(probs, values)

    def _cascade(self, i: int, q: torch.Tensor, bias: torch.Tensor, t: int) -> torch.Tensor:
        """Attention of (B, n_kv, g, D) queries over the shared prefix (stored once) and each row's own columns
        after it; the same softmax over all keys as the plain path."""
        B, nkv, g, D = q.shape
        S = self.shared
        pk, pv = self.prefix[i, 0], self.prefix[i, 1]  # (nkv, S, D)
        keys, values = self.keys[i][:, :, S:t + 1], self.values[i][:, :, S:t + 1]  # (B, nkv, t+1-S, D)
        qt = q.transpose(0, 1).reshape(nkv, B * g, D)  # every row's queries under their kv head
        pre = torch.matmul(qt, pk.transpose(-1, -2)).view(nkv, B, g, S).transpose(0, 1)  # (B, nkv, g, S)
        own = torch.matmul(q, keys.transpose(-1, -2))
        scores = torch.cat([pre, own], dim=-1).mul_(self.scale).add_(bias)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
        attn = torch.matmul(probs[..., S:], values)  # (B, nkv, g, D)
        p_pre = probs[..., :S].transpose(0, 1).reshape(nkv, B * g, S)
        attn += torch.matmul(p_pre, pv).view(nkv, B, g, D).transpose(0, 1)
        return attn
