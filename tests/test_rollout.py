"""Rollout engines: the HF decode loop on a tiny model (grouping, stop strings, truncation flags, seeding,
sampling filters) and the vLLM engine behind the gpu marker."""

import math

import pytest
import torch

from aha.rollout.base import SamplingConfig
from aha.rollout.hf import HFEngine, inverse_cdf, sample_next


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 5.0, 4.9, -3.0]])
    assert sample_next(logits, SamplingConfig(temperature=0.0)).item() == 1
    torch.manual_seed(0)
    draws = {sample_next(logits, SamplingConfig(temperature=1.0, top_k=1)).item() for _ in range(50)}
    assert draws == {1}
    draws = {sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.6)).item() for _ in range(200)}
    assert draws <= {1, 2} and len(draws) == 2  # nucleus keeps the two near-tied tokens only


def test_sample_next_matches_the_distribution():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).repeat(20000, 1)
    counts = torch.bincount(sample_next(logits, SamplingConfig(temperature=1.0)), minlength=3).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.2, 0.5, 0.3]), atol=0.02)


def test_sample_next_draws_each_row_from_its_own_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.7, 0.3, 0.0], [0.1, 0.0, 0.0, 0.9], [0.0, 0.0, 0.0, 1.0]])
    logits = torch.log(probs).repeat(10000, 1)  # log 0 = -inf: never drawn, also at the ends of the row
    draws = sample_next(logits, SamplingConfig(temperature=1.0)).view(10000, 3)
    for r in range(3):
        freq = torch.bincount(draws[:, r], minlength=4).float() / 10000
        assert torch.allclose(freq, probs[r], atol=0.02), r
        assert (freq[probs[r] == 0] == 0).all()


def test_nucleus_sampling_draws_from_the_sorted_nucleus():
    """Top-p from the top candidates equals the textbook nucleus (sort the row, keep the tokens whose preceding
    mass is below top_p, renormalise): for a peaked row (nucleus among the top 64), a flatter one (the top
    1,024) and a flat one (the whole sorted row)."""
    from aha.rollout.hf import nucleus_sample

    g = torch.Generator().manual_seed(0)
    V = 5000
    logits = torch.stack([torch.randn(V, generator=g) * 6, torch.randn(V, generator=g) * 1.5,
                          torch.randn(V, generator=g) * 0.01])
    top_p = 0.9
    draws = 20000
    u = torch.rand(draws * 3, generator=g, dtype=torch.float64)
    got = nucleus_sample(logits.repeat(draws, 1), top_p, u).view(draws, 3)
    for r in range(3):
        p_sorted, order = torch.sort(torch.softmax(logits[r].double(), -1), descending=True)
        kept = (p_sorted.cumsum(0) - p_sorted) < top_p
        want = torch.zeros(V, dtype=torch.float64)
        want[order[kept]] = p_sorted[kept] / p_sorted[kept].sum()
        freq = torch.bincount(got[:, r], minlength=V).double() / draws
        assert (freq[want == 0] == 0).all(), r  # nothing outside the nucleus
        assert (freq - want).abs().max() < 0.02, r
    assert int(kept.sum()) > 1024  # the flat row really needed the whole row


def test_inverse_cdf_in_blocks_equals_one_cumulative_sum():
    # The two-level draw (block sums, then one block) must pick the same index as a search in the whole
    # cumulative distribution, for vocabularies that are and are not a multiple of the block, with zeros.
    g = torch.Generator().manual_seed(0)
    for V, block in [(1000, 256), (512, 256), (7, 3), (300, 512)]:
        probs = torch.softmax(torch.randn(400, V, generator=g) * 4, dim=-1)
        probs[:, ::5] = 0.0  # masked entries, a block boundary among them
        probs[:, V - 1] = 0.0
        u = torch.rand(400, generator=g, dtype=torch.float64)
        cdf = probs.cumsum(-1, dtype=torch.float64)
        want = torch.searchsorted(cdf, u.unsqueeze(-1) * cdf[:, -1:], right=True).squeeze(-1)
        got = inverse_cdf(probs, u, block=block)
        assert torch.equal(got, want), (V, block)
        assert (probs.gather(1, got[:, None]) > 0).all()
    # u at its extremes and a distribution whose only mass is in the last block's first entry
    probs = torch.zeros(2, 600)
    probs[:, 512] = 1.0
    assert inverse_cdf(probs, torch.tensor([0.0, 1.0 - 1e-16], dtype=torch.float64)).tolist() == [512, 512]


def test_hf_engine_groups_truncation_and_seed(tiny_model_dir):
    from aha.models import load_model

    model, tok = load_model(tiny_model_dir)
    engine = HFEngine(model, tok, max_batch=6)
    prompts = [tok("What is 1 + 2?")["input_ids"], tok("Hi")["input_ids"], tok("A conversation")["input_ids"]]
    s = SamplingConfig(temperature=1.0, max_new_tokens=7, stop=())
    torch.manual_seed(0)
    groups = engine.generate(prompts, 4, s)
    assert [len(g) for g in groups] == [4, 4, 4]
    for p, g in zip(prompts, groups):
        for c in g:
            assert list(c.prompt_ids) == p and 1 <= len(c.completion_ids) <= 7
            assert c.finished == (len(c.completion_ids) < 7 or c.completion_ids[-1] == tok.eos_token_id)
    torch.manual_seed(0)
    again = engine.generate(prompts, 4, s)
    assert [[c.completion_ids for c in g] for g in again] == [[c.completion_ids for c in g] for g in groups]


@pytest.mark.parametrize("fast", [True, False])
def test_prefill_gives_the_head_a_contiguous_input(tiny_model_dir, fast):
    """Several prompts prefilled at once: the LM head sees a contiguous (rows, 1, hidden) input. A strided view
    of the last positions (`logits_to_keep=1`) sent torch 2.13's bf16 CPU linear down a path 400x slower, with
    +15 GB resident for 64 prompts of Qwen2.5-0.5B."""
    from aha.models import load_model

    model, tok = load_model(tiny_model_dir)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    engine = HFEngine(model, tok, max_batch=8, fast_decode=fast)
    prompts = [tok("What is 1 + 2?")["input_ids"], tok("Hi there, how are you")["input_ids"],
               tok("A conversation")["input_ids"]]
    engine.generate(prompts, 2, SamplingConfig(temperature=1.0, max_new_tokens=3, stop=()))
    multi = [x for x in seen if x.shape[0] > 1]
    assert multi and all(x.is_contiguous() for x in multi)


def test_hf_engine_greedy_matches_transformers_generate(tiny_model_dir):
    from aha.models import load_model

    model, tok = load_model(tiny_model_dir)
    ids = tok("What is 1 + 2?")["input_ids"]
    ours = HFEngine(model, tok).generate([ids], 1, SamplingConfig(temperature=0.0, max_new_tokens=6, stop=()))[0][0]
    ref = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)[0][len(ids):].tolist()
    assert list(ours.completion_ids) == ref[: len(ours.completion_ids)]


def test_stop_string_ends_a_completion(tiny_model_dir):
    from aha.models import load_model

    model, tok = load_model(tiny_model_dir)
    engine = HFEngine(model, tok)
    torch.manual_seed(1)
    groups = engine.generate([tok("<think>")["input_ids"]], 8, SamplingConfig(temperature=1.0, max_new_tokens=30,
                                                                                stop=("e",)))
    stopped = [c for c in groups[0] if "e" in c.text]
    assert stopped, "the tiny model never wrote an 'e' in 8 x 30 tokens"
    for c in stopped:
        # generation ended at the token that completed the stop string
        assert c.finished and "e" not in tok.decode(list(c.completion_ids[:-1]))


class ChainModel(torch.nn.Module):
    """A batch-invariant stand-in for a causal LM: the next token is the last token + 1, and token 40 is
    followed by EOS, so a prompt ending in token k yields a completion of 41 - k tokens whatever else is
    in the batch. With `p_eos` > 0, sampled completions also end early, at any token with that probability."""

    def __init__(self, vocab: int, eos: int, p_eos: float = 0.0):
        super().__init__()
        table = torch.full((vocab, vocab), -1e4)
        for t in range(vocab):
            table[t, eos if t == 40 else min(t + 1, vocab - 1)] = 0.0
            if p_eos and t != 40:
                table[t, min(t + 1, vocab - 1)] = math.log(1 - p_eos)
                table[t, eos] = math.log(p_eos)
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.generation_config = type("GC", (), {"eos_token_id": eos})()

    def forward(self, input_ids, past_key_values=None, **kwargs):
        return type("Out", (), {"logits": self.table[input_ids[:, -1:]], "past_key_values": past_key_values})()


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_keeping_finished_rows_in_the_batch_changes_no_completion(tiny_model_dir, share):
    """Finished rows that stay in the decode batch (decoding thrown-away padding) until `compact_finished` of
    the batch has finished leave every completion as dropping them at once does."""
    from aha.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = ChainModel(len(tok), tok.eos_token_id)
    prompts = [[5, 6, k] for k in (38, 30, 25, 39, 33, 20)]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=30, stop=())
    want = HFEngine(model, tok).generate(prompts, 2, sampling)
    got = HFEngine(model, tok, compact_finished=share).generate(prompts, 2, sampling)
    assert [len(g[0].completion_ids) for g in want] == [3, 11, 16, 2, 8, 21]
    assert [[(c.completion_ids, c.finished) for c in g] for g in got] == [[(c.completion_ids, c.finished) for c in g] for g in want]


@pytest.mark.parametrize("share", [0.25, 1.0])
def test_sampled_completions_do_not_depend_on_the_rest_of_the_batch(tiny_model_dir, share):
    """Each output row draws its own random number every step, so with a batch-invariant model the sampled
    completions are the same whether finished rows leave the batch at once or later."""
    from aha.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = ChainModel(len(tok), tok.eos_token_id, p_eos=0.15)
    prompts = [[5, 6, k] for k in (10, 20, 30)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=40, stop=())
    torch.manual_seed(3)
    want = HFEngine(model, tok).generate(prompts, 4, sampling)
    torch.manual_seed(3)
    got = HFEngine(model, tok, compact_finished=share).generate(prompts, 4, sampling)
    assert len({len(c.completion_ids) for g in want for c in g}) > 3  # rows really finished at different steps
    assert [[c.completion_ids for c in g] for g in got] == [[c.completion_ids for c in g] for g in want]


@pytest.mark.parametrize("fast,temperature", [(True, 0.7), (False, 0.7), (True, 1.0), (False, 1.0)])
def test_recorded_logprobs_are_the_sampling_models_own(tiny_model_dir, fast, temperature):
    """record_logprobs: each sampled token's temperature-1 log-prob under the engine's model, as a forward pass
    over prompt + completion gives it (the sampler's side of the importance correction); at temperature 1 the
    draw's own softmax gives them, and the tokens are those drawn without recording."""
    from aha.models import load_model

    model, tok = load_model(tiny_model_dir)
    prompts = [tok("What is 1 + 2?")["input_ids"], tok("Hi")["input_ids"]]
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=6, stop=())
    torch.manual_seed(0)
    groups = HFEngine(model, tok, fast_decode=fast, record_logprobs=True).generate(prompts, 2, sampling)
    torch.manual_seed(0)
    plain = HFEngine(model, tok, fast_decode=fast).generate(prompts, 2, sampling)
    assert [[c.completion_ids for c in g] for g in groups] == [[c.completion_ids for c in g] for g in plain]
    for g in groups:
        for c in g:
            ids = torch.tensor([list(c.prompt_ids) + list(c.completion_ids)])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(c.prompt_ids) - 1:-1].float()
            want = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.completion_ids)[:, None]).squeeze(1)
            assert len(c.logprobs) == len(c.completion_ids)
            assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-4)
    assert HFEngine(model, tok).generate(prompts[:1], 1, SamplingConfig(max_new_tokens=2))[0][0].logprobs is None


def _tiny_family(kind: str, tok):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True, rope_theta=500.0))
    else:  # q/k/v biases, untied head
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    with torch.no_grad():  # larger weights than the initialiser's, so that wrong numbers show
        for p in model.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0).add_(0.1 * torch.randn_like(p) if p.dim() == 1 else 0.0)
    return model.eval()


@pytest.mark.parametrize("kind,shared", [("llama", 0), ("qwen2", 0), ("llama", 3), ("qwen2", 3)])
def test_fast_decoder_matches_transformers_step_for_step(tiny_model_dir, kind, shared, monkeypatch):
    """The lean decode step gives transformers' logits, with left padding, fanned-out rows, rows leaving the
    batch, and positions that differ per row; with `shared`, the prompts' common prefix is attended to once
    for all rows while 5 or more rows decode, then from each row's own columns."""
    from transformers.cache_utils import DynamicCache

    from aha.models import load_tokenizer
    from aha.rollout import fast_decode

    tok = load_tokenizer(tiny_model_dir)
    model = _tiny_family(kind, tok)
    assert fast_decode.supports(model)
    prompts = [[5, 9, 14, 3, 7], [11, 4], [8, 8, 20, 1]]
    W = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (W - len(p)) + p for p in prompts]).repeat_interleave(2, dim=0)
    mask = torch.tensor([[0] * (W - len(p)) + [1] * len(p) for p in prompts]).repeat_interleave(2, dim=0)
    if shared:  # the engine's layout: [common prefix | left padding | rest of the prompt]
        ids = torch.cat([torch.tensor([[17, 2, 9]]).expand(len(ids), 3), ids], dim=1)
        mask = torch.cat([torch.ones(len(mask), 3, dtype=mask.dtype), mask], dim=1)
        monkeypatch.setattr(fast_decode.Decoder, "cascade_rows", 5)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref_cache, fast_cache = DynamicCache(), DynamicCache()
        model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=ref_cache, use_cache=True)
        model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=fast_cache, use_cache=True)
        dec = fast_decode.Decoder(model, fast_cache, mask, max_new=6, shared=shared)
        assert dec.shared == shared
        nxt, next_pos = torch.arange(6) + 30, pos[:, -1] + 1
        for step in range(6):
            if step == 3:  # rows 1 and 4 finish
                order = dec.select([0, 2, 3, 5])
                assert sorted(order) == [0, 2, 3, 5] and dec.shared == 0
                keep = torch.tensor(order)
                ref_cache.batch_select_indices(keep)
                nxt, next_pos, mask = nxt[keep], next_pos[keep], mask[keep]
            mask = torch.cat([mask, mask.new_ones(len(nxt), 1)], dim=1)
            want = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                         cache=ref_cache, use_cache=True).logits[:, -1]
            got = dec.step(nxt, next_pos)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (step, (got - want).abs().max())
            nxt, next_pos = want.argmax(-1), next_pos + 1


def test_fast_decoding_samples_what_transformers_samples(tiny_model_dir):
    from aha.models import load_model

    model, tok = load_model(tiny_model_dir)
    prompts = [tok("What is 1 + 2?")["input_ids"], tok("Hi")["input_ids"]]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12, stop=())
    out = {}
    for fast in (True, False):
        torch.manual_seed(5)
        out[fast] = [[c.completion_ids for c in g] for g in HFEngine(model, tok, fast_decode=fast).generate(
            prompts, 4, sampling)]
    assert out[True] == out[False]


@pytest.mark.parametrize("fast", [True, False])
def test_prefilling_a_shared_prefix_once_samples_the_same(tiny_model_dir, fast):
    """Prompts that begin alike (a system prompt) prefill that prefix once; suffixes of different lengths
    leave padding between the prefix and the rest. The completions are those of prefilling each whole prompt."""
    from aha.models import load_tokenizer
    from aha.rollout.base import shared_prefix_len

    tok = load_tokenizer(tiny_model_dir)
    model = _tiny_family("llama", tok)  # large weights: a wrong position or mask changes the samples
    system = tok("A conversation between User and Assistant. The user asks a question")["input_ids"]
    prompts = [system + tok(q)["input_ids"] for q in ("What is 1 + 2?", "Hi", "State the final answer: 15 - 43")]
    assert shared_prefix_len(prompts) >= len(system) >= 8
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=10, stop=())
    out = {}
    for share in (True, False):
        torch.manual_seed(2)
        engine = HFEngine(model, tok, fast_decode=fast, share_prefix=share)
        out[share] = [[c.completion_ids for c in g] for g in engine.generate(prompts, 3, sampling)]
    assert out[True] == out[False]


@pytest.mark.parametrize("pack,kernel", [(True, "eager"), (True, "compiled"), (False, "eager")])
def test_bf16_decoding_gives_transformers_logits(tiny_model_dir, pack, kernel, monkeypatch):
    """In bf16 the decoder attends with torch's fused kernel and, on a CPU whose oneDNN has bf16, prepacks its
    weights, and can run its layers compiled; its logits are transformers' bf16 forward's to bf16 rounding, with
    q/k/v biases (qwen2), a shared prefix and rows leaving the batch."""
    from transformers.cache_utils import DynamicCache

    from aha.models import load_tokenizer
    from aha.rollout import fast_decode

    can = fast_decode._can_pack(torch.bfloat16, torch.device("cpu"))
    if pack and not can:
        pytest.skip("this CPU's oneDNN has no bf16")
    monkeypatch.setattr(fast_decode.Decoder, "pack", pack)
    monkeypatch.setattr(fast_decode.Decoder, "cascade_rows", 2)
    tok = load_tokenizer(tiny_model_dir)
    model = _tiny_family("qwen2", tok).to(torch.bfloat16)
    prompts = [[5, 9, 14, 3, 7], [11, 4], [8, 8, 20, 1]]
    W = max(map(len, prompts))
    ids = torch.tensor([[17, 2, 9] + [tok.pad_token_id] * (W - len(p)) + p for p in prompts]).repeat_interleave(3, 0)
    mask = torch.tensor([[1, 1, 1] + [0] * (W - len(p)) + [1] * len(p) for p in prompts]).repeat_interleave(3, 0)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref_cache, fast_cache = DynamicCache(), DynamicCache()
        model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=ref_cache, use_cache=True)
        model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=fast_cache, use_cache=True)
        dec = fast_decode.Decoder(model, fast_cache, mask, max_new=6, shared=3, kernel=kernel)
        assert dec.packed is pack and dec.fused and dec.shared == 0 and dec.compiled is (kernel == "compiled")
        nxt, next_pos = torch.arange(9) + 30, pos[:, -1] + 1
        for step in range(6):
            if step == 2:
                keep = torch.tensor(dec.select([0, 3, 4, 8]))
                ref_cache.batch_select_indices(keep)
                nxt, next_pos, mask = nxt[keep], next_pos[keep], mask[keep]
            mask = torch.cat([mask, mask.new_ones(len(nxt), 1)], dim=1)
            want = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                         cache=ref_cache, use_cache=True).logits[:, -1].float()
            got = dec.step(nxt, next_pos).float()
            scale = want.abs().max().item()
            assert (got - want).abs().max().item() <= 0.03 * scale, (step, (got - want).abs().max(), scale)
            nxt, next_pos = want.argmax(-1), next_pos + 1
        assert dec.compiled is (kernel == "compiled")  # no fallback to the eager layers along the way


def test_a_prompt_admitted_into_a_finished_row_decodes_as_if_alone(tiny_model_dir):
    """Continuous batching in the lean decoder: after two steps, row 1's slot takes a new prompt (prefilled on
    its own, narrower than the decoder's prompt columns) while rows 0 and 2 decode on and row 2 is held for a step; every row's logits are
    transformers' for its own sequence."""
    from transformers.cache_utils import DynamicCache

    from aha.models import load_tokenizer
    from aha.rollout import fast_decode

    tok = load_tokenizer(tiny_model_dir)
    model = _tiny_family("qwen2", tok)
    pad = tok.pad_token_id

    def prefill(prompts, W):
        ids = torch.tensor([[pad] * (W - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (W - len(p)) + [1] * len(p) for p in prompts])
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True).logits
        return cache, mask, pos[:, -1] + 1, logits[:, -1]

    def reference(prompt, fed):  # the logits after prompt + fed tokens, in one forward
        with torch.no_grad():
            return model(input_ids=torch.tensor([prompt + fed])).logits[0, -1]

    prompts = [[5, 9, 14, 3, 7], [11, 4], [8, 8, 20, 1]]
    cache, mask, pos, _ = prefill(prompts, 5)
    dec = fast_decode.Decoder(model, cache, mask, max_new=8)
    fed = [[], [], []]
    seqs = [list(p) for p in prompts]
    for step in range(6):
        if step == 2:  # row 1 finished: a new prompt takes its slot
            new = [3, 3, 12, 6]
            c, m, p, _ = prefill([new], 4)  # prefilled at its own width: right-aligned at the decoder's 5
            dec.admit([1], c, m)
            seqs[1], fed[1] = new, []
            pos[1] = p[0]
        active = torch.tensor([True, True, step != 3])  # row 2 holds its slot for one step
        nxt = torch.tensor([30 + step, 40 + step, 50 + step])
        got = dec.step(nxt, pos, active=active)
        for r in range(3):
            if active[r]:
                fed[r].append(int(nxt[r]))
                want = reference(seqs[r], fed[r])
                assert torch.allclose(got[r], want, atol=1e-4, rtol=1e-4), (step, r, (got[r] - want).abs().max())
        pos = pos + active


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_continuous_batching_samples_what_one_batch_samples(tiny_model_dir, kind):
    """With 4 rows for 7 prompts x 2 samples, finished rows take the next prompts; the completions are those of
    decoding all 14 at once (each completion draws from its own random stream), and `stream` yields every
    prompt's group once, as it completes."""
    from aha.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = _tiny_family(kind, tok)
    system = tok("A conversation between User and Assistant.")["input_ids"]
    prompts = [system + tok(q)["input_ids"] for q in ("1 + 2?", "Hi", "State 15 - 43", "x", "Why is the sky", "7", "")]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12, stop=("e", "a"))  # rows end at random
    torch.manual_seed(4)
    one = HFEngine(model, tok, max_batch=64).generate(prompts, 2, sampling)
    torch.manual_seed(4)
    engine = HFEngine(model, tok, max_batch=4)
    streamed = list(engine.stream(prompts, 2, sampling))
    assert sorted(i for i, _ in streamed) == list(range(7))
    lengths = {len(c.completion_ids) for g in one for c in g}
    assert len(lengths) > 2, "every completion had the same length: no row finished early to be refilled"
    got = dict(streamed)
    assert [[c.completion_ids for c in got[i]] for i in range(7)] == [[c.completion_ids for c in g] for g in one]
    assert all(c.prompt_ids == tuple(p) for p, g in zip(prompts, one) for c in g)
