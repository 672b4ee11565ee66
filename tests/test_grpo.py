"""The GRPO math against numbers computed by hand."""

import math

import pytest
import torch

from aha.grpo import (
    aggregate,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    head_logprobs,
    k3_kl,
    selected_logprobs,
    truncated_is_weights,
)


def test_group_advantages_grpo_by_hand():
    # group [1, 0, 0, 1]: mean 0.5, sample std sqrt(1/3) = 0.57735
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, scale_by_std=True, eps=0.0)
    s = math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]))


def test_group_advantages_dr_grpo_no_std():
    adv = group_advantages(torch.tensor([3.0, 1.0, 2.0, 2.0]), 2, scale_by_std=False)
    assert torch.allclose(adv, torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_equal_rewards_give_zero_never_nan():
    for scale in (True, False):
        adv = group_advantages(torch.tensor([0.7, 0.7, 0.7, 0.0, 0.0, 0.0]), 3, scale_by_std=scale)
        assert torch.equal(adv, torch.zeros(6))
    assert torch.equal(group_advantages(torch.tensor([1.0, 2.0]), 1), torch.zeros(2))


def test_group_advantages_rejects_ragged():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2)


def test_k3_kl_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.2)]])
    # r = ref/pi = 0.5: 0.5 - ln 0.5 - 1 = 0.193147; equal probs -> 0
    assert torch.allclose(k3_kl(logp, ref), torch.tensor([[0.5 - math.log(0.5) - 1, 0.0]]), atol=1e-6)


def test_clip_higher_by_hand():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    pos = torch.tensor([2.0])
    loss, low, high = clipped_surrogate(logp, old, pos, eps_low=0.2, eps_high=0.28)
    # A>0: -min(r*A, clip(r)*A): r=1.5 -> clip 1.28 -> -2.56; r=0.5 -> -1.0 (unclipped smaller); r=1.1 -> -2.2
    assert torch.allclose(loss, torch.tensor([[-2.56, -1.0, -2.2]]))
    assert high.tolist() == [[True, False, False]] and low.tolist() == [[False, False, False]]
    loss, low, high = clipped_surrogate(logp, old, -pos, eps_low=0.2, eps_high=0.28)
    # A<0: r=1.5 -> -min(-3, -2.56) = 3; r=0.5 -> clip 0.8 -> -min(-1, -1.6) = 1.6; r=1.1 -> 2.2
    assert torch.allclose(loss, torch.tensor([[3.0, 1.6, 2.2]]))
    assert low.tolist() == [[False, True, False]]


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(per_token, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(per_token, mask, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(per_token, mask, "seq_mean_token_sum_norm", max_tokens=5).item() == pytest.approx(10 / 10)
    with pytest.raises(ValueError):
        aggregate(per_token, mask, "bogus")


def test_aggregation_with_global_normalisers_sums_over_microbatches():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        full = aggregate(per_token, mask, mode, max_tokens=3)
        parts = sum(aggregate(per_token[i:i + 1], mask[i:i + 1], mode, num_sequences=2, num_tokens=4, max_tokens=3)
                    for i in range(2))
        assert parts.item() == pytest.approx(full.item())


def test_grpo_loss_mu1_gradient_is_advantage_weighted():
    # mu=1: ratio 1, loss = -mean_t(A * ratio); d/dlogp = -A / T_i / N
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    mask = torch.ones(2, 2)
    adv = torch.tensor([1.0, -1.0])
    terms = grpo_loss(logp, None, adv, mask, loss_agg="seq_mean_token_mean")
    assert terms.loss.item() == pytest.approx(0.0)
    terms.loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))


def test_grpo_loss_kl_term_added():
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    terms = grpo_loss(logp, None, torch.tensor([0.0]), torch.ones(1, 1), ref_logprobs=ref, kl_coef=0.1)
    assert terms.kl == pytest.approx(0.5 - math.log(0.5) - 1, abs=1e-6)
    assert terms.loss.item() == pytest.approx(0.1 * terms.kl, abs=1e-6)


def test_truncated_importance_weights_by_hand():
    trainer = torch.log(torch.tensor([[0.5, 0.3, 0.9]]))
    sampler = torch.log(torch.tensor([[0.25, 0.3, 0.3]]))
    w = truncated_is_weights(trainer, sampler, cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, 2.0]]))  # 0.5/0.25 = 2, 1, 0.9/0.3 = 3 -> capped at 2
    # in the loss: mu=1, advantage 1, one sequence of 3 tokens: -(2 + 1 + 2) / 3, gradient -w / 3 per token
    logp = trainer.clone().requires_grad_(True)
    terms = grpo_loss(logp, None, torch.tensor([1.0]), torch.ones(1, 3), sampler_logprobs=sampler, tis_cap=2.0)
    assert terms.loss.item() == pytest.approx(-5 / 3)
    terms.loss.backward()
    assert torch.allclose(logp.grad, -w / 3)
    assert terms.tis_mean == pytest.approx(5 / 3) and terms.tis_capped == pytest.approx(2 / 3)
    # the sampler was the trainer: weights 1, the plain loss
    same = grpo_loss(trainer, None, torch.tensor([1.0]), torch.ones(1, 3), sampler_logprobs=trainer)
    assert same.loss.item() == pytest.approx(-1.0) and same.tis_mean == 1.0
    off = grpo_loss(trainer, None, torch.tensor([1.0]), torch.ones(1, 3), sampler_logprobs=sampler, tis_cap=0.0)
    assert off.loss.item() == pytest.approx(-1.0)


def test_selected_logprobs_match_log_softmax_per_position():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    targets = torch.randint(0, 11, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    got = selected_logprobs(logits.reshape(6, 11), torch.arange(6), targets.reshape(6))[0].view(2, 3)
    assert torch.allclose(got, expected, atol=1e-6)


def test_selected_logprobs_values_entropy_and_gradient():
    # Against the textbook formulas in float64: rows that are the source of several targets (a packed group's
    # prompt row), rows that are the source of none, extreme logits; the gradient with upstream weights.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 13, generator=g, dtype=torch.float64) * 3
    logits[2, 4] = 60.0  # a near-certain row
    rows = torch.tensor([0, 0, 0, 1, 2, 2, 4])
    targets = torch.tensor([3, 3, 7, 0, 4, 5, 12])
    weights = torch.randn(7, generator=g, dtype=torch.float64)

    ref_x = logits.clone().requires_grad_()
    ref_logp = torch.log_softmax(ref_x, -1)[rows, targets]
    (ref_logp * weights).sum().backward()
    p = torch.softmax(logits, -1)
    ref_ent = -(p * torch.log_softmax(logits, -1)).sum(-1)

    x = logits.float().requires_grad_()
    logp, ent = selected_logprobs(x, rows, targets, with_entropy=True)
    (logp * weights.float()).sum().backward()
    assert logp.dtype == torch.float32 and not ent.requires_grad
    assert torch.allclose(logp.double(), ref_logp.detach(), atol=1e-5)
    assert torch.allclose(ent.double(), ref_ent, atol=1e-5)
    assert torch.allclose(x.grad.double(), ref_x.grad, atol=1e-5)
    assert x.grad[3].abs().max() == 0  # a row no target reads gets no gradient

    with torch.no_grad():  # reference passes: logsumexp, same numbers
        fast, none = selected_logprobs(logits.float(), rows, targets)
    assert none is None and torch.allclose(fast.double(), ref_logp.detach(), atol=1e-5)

    xb = logits.bfloat16().requires_grad_()  # bf16 logits: float32 results, the gradient in the input's dtype
    lb, _ = selected_logprobs(xb, rows, targets)
    lb.sum().backward()
    assert lb.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("bias", [False, True])
def test_head_logprobs_in_chunks_equal_the_whole_logits(bias):
    # The LM head applied `chunk` rows at a time (its logits recomputed in backward) against selected_logprobs
    # over the whole (R, V) logits: values, entropies and the gradients of the hidden states, weight and bias;
    # chunks that do not divide the rows, rows read by several targets, rows read by none.
    g = torch.Generator().manual_seed(0)
    R, H, V = 23, 8, 31
    hidden = torch.randn(R, H, generator=g)
    weight = torch.randn(V, H, generator=g)
    b = torch.randn(V, generator=g) if bias else None
    rows = torch.tensor([0, 0, 0, 4, 5, 5, 9, 22, 13, 17, 10])
    targets = torch.randint(0, V, (len(rows),), generator=g)
    up = torch.randn(len(rows), generator=g)

    def run(chunk):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((b,) if bias else ())]
        logp, ent = head_logprobs(leaves[0], leaves[1], leaves[2] if bias else None, rows, targets, True, chunk)
        (logp * up).sum().backward()
        return logp.detach(), ent, [t.grad for t in leaves]

    whole_logp, whole_ent, whole_grads = run(0)
    want = torch.log_softmax(torch.nn.functional.linear(hidden, weight, b), -1)[rows, targets]
    assert torch.allclose(whole_logp, want, atol=1e-5)
    for chunk in (1, 5, 22):
        logp, ent, grads = run(chunk)
        assert torch.allclose(logp, whole_logp, atol=1e-5) and torch.allclose(ent, whole_ent, atol=1e-5)
        assert not ent.requires_grad
        for got, exp in zip(grads, whole_grads):
            assert torch.allclose(got, exp, atol=1e-5)
    assert grads[0][1].abs().max() == 0  # a row no target reads gets no gradient


def test_head_logprobs_in_chunks_under_bf16_autocast():
    # Under autocast the chunked head computes in bf16 as nn.Linear does: the whole logits' numbers (the head's
    # gradient summed in fp32 over the chunks, so a bf16 rounding apart), not fp32's.
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(40, 16, generator=g), torch.randn(50, 16, generator=g)
    rows, targets = torch.arange(40), torch.randint(0, 50, (40,), generator=g)
    out = []
    for chunk, bf16 in ((0, True), (7, True), (7, False)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logp, _ = head_logprobs(h, w, None, rows, targets, chunk=chunk)
        logp.sum().backward()
        assert h.grad.dtype == w.grad.dtype == torch.float32
        out.append((logp.detach(), h.grad, w.grad))
    (whole, whole_h, whole_w), (logp, grad_h, grad_w), (fp32, _, _) = out
    assert torch.allclose(logp, whole, atol=1e-5) and torch.allclose(grad_h, whole_h, atol=1e-5)
    assert torch.allclose(grad_w, whole_w, atol=3e-2, rtol=1e-2)
    assert (fp32 - whole).abs().max() > 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_head_kernel_computes_what_the_eager_one_does(dtype):
    # torch.compile'd log-normaliser, entropy and logits gradient (one pass per row) against the same functions
    # run eagerly, through the chunked head's forward and backward, in fp32 and under bf16 autocast.
    g = torch.Generator().manual_seed(2)
    R, H, V = 37, 16, 301
    hidden, weight = torch.randn(R, H, generator=g), torch.randn(V, H, generator=g)
    rows = torch.tensor([0, 0, 3, 5, 8, 13, 21, 34, 36, 36])
    targets = torch.randint(0, V, (len(rows),), generator=g)
    up = torch.randn(len(rows), generator=g)
    out = {}
    for kernel in ("eager", "compiled"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logp, ent = head_logprobs(h, w, None, rows, targets, True, 10, kernel)
        (logp * up).sum().backward()
        out[kernel] = (logp.detach(), ent, h.grad, w.grad)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for eager, compiled in zip(out["eager"], out["compiled"]):
        assert torch.allclose(eager, compiled, atol=tol, rtol=tol)
    want = torch.log_softmax(hidden @ weight.T, -1)[rows, targets]
    assert torch.allclose(out["compiled"][0], want, atol=1e-4 if dtype == torch.float32 else 0.5)


def test_head_kernel_falls_back_to_eager_with_a_warning(monkeypatch, capsys):
    import aha.grpo as grpo

    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler\nmore")
        return run

    monkeypatch.setattr(grpo, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    x = torch.randn(4, 9)
    lse, ent = grpo.head_kernel(grpo._lse_entropy, True)(x, True)
    assert torch.allclose(lse, torch.logsumexp(x, -1)) and ent is not None
    err = capsys.readouterr().err
    assert "compiled LM-head kernel failed (RuntimeError: no C++ compiler)" in err and err.count("\n") == 1
    assert grpo.head_kernel(grpo._lse_entropy, True) is grpo._lse_entropy  # not tried again
    assert grpo.head_kernel(grpo._lse_entropy, False) is grpo._lse_entropy


def test_head_kernel_auto_compiles_only_large_chunks(monkeypatch):
    import aha.grpo as grpo

    seen = []
    monkeypatch.setattr(grpo._ChunkedHeadLogProbs, "apply", lambda *a: seen.append(a[-1]) or (None, None))
    h, rows = torch.randn(8, 4), torch.arange(8)
    for vocab in (1000, grpo.COMPILED_HEAD_MIN_SCORES // 4):
        head_logprobs(h, torch.randn(vocab, 4), None, rows, rows, chunk=4, kernel="auto")
    head_logprobs(h, torch.randn(1000, 4), None, rows, rows, chunk=4, kernel="compiled")
    head_logprobs(h, torch.randn(1000, 4), None, rows, rows, chunk=4, kernel="eager")
    assert seen == [False, True, True, False]
