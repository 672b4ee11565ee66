"""Training batches: the packed row (each prompt once, completions end to end, no padding) gives the same
completion log-probs, entropies and gradients as the padded batch that runs every row's prompt."""

import pytest
import torch

from aha.rollout.base import Completion
from aha.training.batch import (
    SPAN_ATTENTION_MIN_TOKENS,
    collate,
    collate_groups,
    completion_logprobs,
    packed_groups_logprobs,
)


@pytest.fixture()
def model_and_group(tiny_model_dir):
    from aha.models import load_model

    model, tok = load_model(tiny_model_dir)
    model.train()  # dropout is 0 in the tiny config: train mode changes nothing but the code path
    prompt = tuple(tok("User: What is 2 + 3?\nAssistant: <think>", add_special_tokens=False)["input_ids"])
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 9, 3]  # ragged: the padded batch pads them, the packed row does not
    group = [Completion(text="", prompt_ids=prompt,
                        completion_ids=tuple(torch.randint(3, 200, (k,), generator=g).tolist())) for k in lengths]
    return model, tok, group


@pytest.mark.parametrize("attn,mode", [("sdpa", "spans"), ("sdpa", "blocks"), ("sdpa", "auto"), ("eager", "auto")])
def test_packed_logprobs_and_gradients_equal_the_padded_batch(model_and_group, attn, mode):
    """Two prompts' completions packed in one row (one of them empty) give the padded batch's log-probs,
    entropies and gradients, with no padding processed: with SDPA's attention one prompt or completion at a time
    ("spans"), each prompt's run under its block mask ("blocks"), and "auto", which takes blocks for spans as
    short as these."""
    model, tok, group = model_and_group
    model.config._attn_implementation = attn
    other = [Completion(text="", prompt_ids=group[0].prompt_ids[:-2] + (7, 8, 9), completion_ids=ids)
             for ids in [(11, 12), (13,), ()]]
    rows = [group[0], other[0], group[1], other[1], group[2], other[2], group[3]]  # interleaved prompts
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.7, 1.0, -1.5]).unsqueeze(-1)

    def run(fn, batch):
        model.zero_grad(set_to_none=True)
        logp, ent = fn(model, batch, with_entropy=True, **({"attention": mode} if fn is packed_groups_logprobs else {}))
        (logp * batch.completion_mask * weights).sum().backward()
        return logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, packed = collate(rows, tok.pad_token_id), collate_groups(rows, tok.pad_token_id)
    want, want_ent, want_g = run(completion_logprobs, full)
    import aha.training.batch as batch_mod

    query_lengths = []
    sdpa = batch_mod.sdpa_attention_forward

    def counting(module, query, *args, **kwargs):
        query_lengths.append(query.shape[2])
        return sdpa(module, query, *args, **kwargs)

    batch_mod.sdpa_attention_forward = counting
    try:
        got, got_ent, got_g = run(packed_groups_logprobs, packed)
    finally:
        batch_mod.sdpa_attention_forward = sdpa
    runs = [b - a for a, b in packed.blocks()]
    assert len(runs) == 2 and sum(runs) == packed.input_ids.shape[1]
    spans = [b - a for a, b, _, _ in packed.spans()]
    assert len(spans) == 2 + sum(bool(c.completion_ids) for c in rows)
    assert packed.input_ids.shape[1] < SPAN_ATTENTION_MIN_TOKENS * len(spans)  # short: "auto" runs blocks
    if attn == "sdpa":  # one call a span, or a prompt's run, in every layer
        assert query_lengths == (spans if mode == "spans" else runs) * model.config.num_hidden_layers
    assert model.config._attn_implementation == attn
    assert torch.equal(packed.completion_mask, full.completion_mask)
    mask = packed.completion_mask.bool()
    assert torch.allclose(got[mask], want[mask], atol=1e-5)
    assert torch.allclose(got_ent[mask], want_ent[mask], atol=1e-4)
    assert want_g.keys() == got_g.keys() and len(got_g) > 0
    for name in want_g:
        assert torch.allclose(got_g[name], want_g[name], atol=1e-5, rtol=1e-4), name
    real = len(group[0].prompt_ids) + len(other[0].prompt_ids) + sum(len(c.completion_ids) for c in rows)
    assert packed.tokens == packed.padded_tokens == real < full.padded_tokens


def test_packed_groups_refuse_attention_without_arbitrary_masks(model_and_group):
    model, tok, group = model_and_group
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="share_prompt=false"):
        packed_groups_logprobs(model, collate_groups(group, tok.pad_token_id))


@pytest.mark.parametrize("attn,embed,mode", [("sdpa", None, "auto"), ("eager", None, "auto"), ("sdpa", "tied", "auto"),
                                             ("eager", "untied", "auto"), ("sdpa", "tied", "spans")])
def test_shared_prefix_over_micro_batches_equals_the_padded_batch(model_and_group, attn, embed, mode):
    """Two micro-batches whose prompts share a prefix, the prefix run once (SharedPrefix) and each row packed
    without it: the padded batch's log-probs and gradients, the prefix's share of the gradient included. With
    `embed`, the input embeddings' gradient is gathered and sent through the embedding layer once
    (InputEmbeddings), for tied and untied input and output embeddings."""
    from aha.rollout.base import shared_prefix_len
    from aha.training.batch import InputEmbeddings, SharedPrefix

    model, tok, group = model_and_group
    model.config._attn_implementation = attn
    if embed == "untied":
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == (embed != "untied")
    other = [Completion(text="", prompt_ids=group[0].prompt_ids[:-2] + (7, 8, 9), completion_ids=ids)
             for ids in [(11, 12), (13,)]]
    parts = [[group[0], group[1], group[2]], [other[0], group[3], other[1]]]
    rows = [c for part in parts for c in part]
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.7, -1.5]).unsqueeze(-1)
    k = shared_prefix_len([c.prompt_ids for c in rows], min_len=1)
    assert k == len(group[0].prompt_ids) - 2

    model.zero_grad(set_to_none=True)
    full = collate(rows, tok.pad_token_id)
    want, _ = completion_logprobs(model, full)
    (want * full.completion_mask * weights).sum().backward()
    want_g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad(set_to_none=True)
    embeddings = InputEmbeddings(model) if embed else None
    prefix = SharedPrefix(model, list(rows[0].prompt_ids[:k]), "cpu", embeddings)
    got, start = [], 0
    for part in parts:
        b = collate_groups(part, tok.pad_token_id, prefix_len=k)
        assert b.tokens == sum(len(p) - k for p in {c.prompt_ids for c in part}) + sum(
            len(c.completion_ids) for c in part)
        logp, _ = packed_groups_logprobs(model, b, prefix=prefix, embed=embeddings, attention=mode)
        (logp * b.completion_mask * weights[start:start + len(part)]).sum().backward()
        logp = torch.nn.functional.pad(logp, (0, full.completion_ids.shape[1] - logp.shape[1]))
        got.append(logp.detach())
        start += len(part)
    prefix.backward()
    if embeddings:
        embeddings.backward()
    got_g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert all(g.layout == torch.strided for g in got_g.values())
    mask = full.completion_mask.bool()
    assert torch.allclose(torch.cat(got)[mask], want[mask].detach(), atol=1e-5)
    assert want_g.keys() == got_g.keys()
    for name in want_g:
        assert torch.allclose(got_g[name], want_g[name], atol=1e-5, rtol=1e-4), name


def test_rows_without_their_prefix_are_refused(model_and_group):
    from aha.training.batch import SharedPrefix

    model, tok, group = model_and_group
    with torch.no_grad():
        prefix = SharedPrefix(model, list(group[0].prompt_ids[:3]), "cpu")
        with pytest.raises(ValueError, match="prefix"):
            packed_groups_logprobs(model, collate_groups(group, tok.pad_token_id), prefix=prefix)


def test_packed_rows_keep_a_sliding_window(tiny_model_dir):
    """Sliding-window layers (Gemma 3) get their own block mask: a packed row longer than the window gives the
    padded batch's log-probs and gradients."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from aha.models import load_tokenizer
    from aha.training.batch import sliding_window

    tok = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=6,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128,
                           pad_token_id=tok.pad_token_id)
    cfg._attn_implementation = "sdpa"
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    assert sliding_window(model) == 6
    p1 = tuple(range(5, 17))
    p2 = p1[:-3] + (40, 41, 42, 43)
    rows = [Completion(text="", prompt_ids=p1, completion_ids=(50, 51, 52, 53, 54, 55, 56, 57)),
            Completion(text="", prompt_ids=p2, completion_ids=(60, 61)),
            Completion(text="", prompt_ids=p1, completion_ids=(70, 71, 72))]

    def run(fn, batch):
        model.zero_grad(set_to_none=True)
        logp, _ = fn(model, batch)
        (logp * batch.completion_mask).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, packed = collate(rows, tok.pad_token_id), collate_groups(rows, tok.pad_token_id)
    assert packed.tokens > 2 * 6  # longer than the window
    want, want_g = run(completion_logprobs, full)
    got, got_g = run(packed_groups_logprobs, packed)
    mask = full.completion_mask.bool()
    assert torch.allclose(got[mask], want[mask], atol=1e-5)
    for name in want_g:
        assert torch.allclose(got_g[name], want_g[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_head_only_where_the_head_is_plain(model_and_group, softcap):
    """logprob_chunk: the LM head outside the model, a few positions at a time, gives the packed row's
    log-probs and gradients; a model whose logits are soft-capped after the head (Gemma 2 style) keeps its own
    head, so the cap still applies."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from aha.training.batch import _plain_head

    model, tok, group = model_and_group
    if softcap:
        torch.manual_seed(0)
        cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                               max_position_embeddings=128, final_logit_softcapping=softcap)
        cfg._attn_implementation = "sdpa"
        model = Gemma3ForCausalLM(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3.0)
    assert (_plain_head(model) is None) == bool(softcap)
    batch = collate_groups(group, pad_id=0)
    out = []
    for chunk in (0, 3):
        model.zero_grad(set_to_none=True)
        logp, ent = packed_groups_logprobs(model, batch, with_entropy=True, chunk=chunk)
        (logp * batch.completion_mask).sum().backward()
        out.append((logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (logp0, ent0, g0), (logp1, ent1, g1) = out
    assert torch.allclose(logp1, logp0, atol=1e-5) and torch.allclose(ent1, ent0, atol=1e-5)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=n)


def test_unset_logprob_chunk_bounds_the_heads_scores_by_the_vocabulary():
    from aha.training.batch import AUTO_HEAD_ELEMENTS, logprob_chunk

    def model(vocab):
        head = torch.nn.Linear(8, vocab, bias=False)
        return type("M", (), {"get_output_embeddings": lambda self: head})()

    assert logprob_chunk(None, model(151_936)) == 883 and 883 * 151_936 <= AUTO_HEAD_ELEMENTS
    assert logprob_chunk(None, model(49_152)) == 2730
    assert logprob_chunk(None, model(1_000_000)) == 256  # huge vocabularies: never absurdly short chunks
    assert logprob_chunk(0, model(151_936)) == 0 and logprob_chunk(64, model(151_936)) == 64
