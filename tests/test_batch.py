"""Training batches: the shared-prompt forward (prompt run once per group) gives the same completion
log-probs and the same gradients as the padded batch that runs every row's prompt."""

import pytest
import torch

from aha.rollout.base import Completion
from aha.train.batch import (
    collate,
    collate_packed,
    collate_shared,
    completion_logprobs,
    packed_logprobs,
    shared_prompt_logprobs,
)


@pytest.fixture()
def model_and_group(tiny_model_dir):
    from aha.models import load_model

    model, tok = load_model(tiny_model_dir)
    model.train()  # dropout is 0 in the tiny config: train mode changes nothing but the code path
    prompt = tuple(tok("User: What is 2 + 3?\nAssistant: <think>", add_special_tokens=False)["input_ids"])
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 9, 3]  # ragged: right padding inside the shared batch
    group = [Completion(text="", prompt_ids=prompt,
                        completion_ids=tuple(torch.randint(3, 200, (k,), generator=g).tolist())) for k in lengths]
    return model, tok, group


def test_shared_prompt_logprobs_equal_the_padded_batch(model_and_group):
    model, tok, group = model_and_group
    # the padded batch also holds a longer prompt, so its rows are left-padded
    other = Completion(text="", prompt_ids=group[0].prompt_ids + (7, 8, 9), completion_ids=(11, 12))
    full = collate(group + [other], tok.pad_token_id)
    shared = collate_shared(group, tok.pad_token_id)
    with torch.no_grad():
        want, want_ent = completion_logprobs(model, full, with_entropy=True)
        got, got_ent = shared_prompt_logprobs(model, shared, with_entropy=True)
    C = shared.completion_ids.shape[1]
    mask = shared.completion_mask.bool()
    assert torch.allclose(got[mask], want[:4, :C][mask], atol=1e-5)
    assert torch.allclose(got_ent[mask], want_ent[:4, :C][mask], atol=1e-4)
    assert shared.tokens == len(group[0].prompt_ids) + sum(len(c.completion_ids) for c in group)
    assert full.tokens > shared.tokens


def test_shared_prompt_gradients_equal_the_padded_batch(model_and_group):
    model, tok, group = model_and_group
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0]).unsqueeze(-1)

    def grads(fn, batch):
        model.zero_grad(set_to_none=True)
        logp, _ = fn(model, batch)
        C = batch.completion_mask.shape[1]
        (logp[:, :C] * batch.completion_mask * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want = grads(completion_logprobs, collate(group, tok.pad_token_id))
    got = grads(shared_prompt_logprobs, collate_shared(group, tok.pad_token_id))
    assert want.keys() == got.keys() and len(got) > 0
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5, rtol=1e-4), name


def test_collate_shared_refuses_mixed_prompts():
    a = Completion(text="", prompt_ids=(1, 2), completion_ids=(3,))
    b = Completion(text="", prompt_ids=(1, 5), completion_ids=(3,))
    with pytest.raises(ValueError, match="different prompts"):
        collate_shared([a, b], 0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_and_gradients_equal_the_padded_batch(model_and_group, attn):
    """Two prompts' completions packed in one row (one of them empty) give the padded batch's log-probs,
    entropies and gradients, with no padding processed."""
    model, tok, group = model_and_group
    model.config._attn_implementation = attn
    other = [Completion(text="", prompt_ids=group[0].prompt_ids[:-2] + (7, 8, 9), completion_ids=ids)
             for ids in [(11, 12), (13,), ()]]
    rows = [group[0], other[0], group[1], other[1], group[2], other[2], group[3]]  # interleaved prompts
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.7, 1.0, -1.5]).unsqueeze(-1)

    def run(fn, batch):
        model.zero_grad(set_to_none=True)
        logp, ent = fn(model, batch, with_entropy=True)
        (logp * batch.completion_mask * weights).sum().backward()
        return logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, packed = collate(rows, tok.pad_token_id), collate_packed(rows, tok.pad_token_id)
    want, want_ent, want_g = run(completion_logprobs, full)
    got, got_ent, got_g = run(packed_logprobs, packed)
    assert torch.equal(packed.completion_mask, full.completion_mask)
    mask = packed.completion_mask.bool()
    assert torch.allclose(got[mask], want[mask], atol=1e-5)
    assert torch.allclose(got_ent[mask], want_ent[mask], atol=1e-4)
    assert want_g.keys() == got_g.keys() and len(got_g) > 0
    for name in want_g:
        assert torch.allclose(got_g[name], want_g[name], atol=1e-5, rtol=1e-4), name
    real = len(group[0].prompt_ids) + len(other[0].prompt_ids) + sum(len(c.completion_ids) for c in rows)
    assert packed.tokens == packed.padded_tokens == real < full.padded_tokens
