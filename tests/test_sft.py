"""`aha sft` on a tiny random model: packing (no attention across samples, loss mask), the `<think>` round
trip, mixing, the held-out split, end-to-end training with resume, and bad input."""

import json
import math

import pytest
import torch

from aha import runs
from aha.config import load_config
from aha.errors import AhaError
from aha.stages import sft
from aha.stages.sft import SFTConfig, TextSample
from aha.training import checkpoint as ckpt
from aha.training.sft_loop import IGNORE, TokenSample, collate_packed, loss_sum, pack, sample_targets


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def samples_file(tmp_path):
    rows = [{"prompt": f"What is {a} + {b}?", "completion": f"<think> {a} + {b} = {a + b} </think> <answer> {a + b} </answer>"}
            for a in range(5) for b in range(4)]
    return write_jsonl(tmp_path / "samples.jsonl", rows)


def make_cfg(tiny_model_dir, input_file, out_dir, *extra):
    return load_config(SFTConfig, None, [
        f"model={tiny_model_dir}", f"input={input_file}", f"out_dir={out_dir}", "steps=3", "samples_per_step=4",
        "eval_size=4", "max_length=128", "dtype=float32", "optim.lr=1e-3", "optim.warmup_steps=0",
        "optim.micro_batch_size=2", "log.progress=false", "log.tensorboard=false", "log.checkpoint_every=1",
        "log.eval_every=1", *extra])


def tiny(tiny_model_dir):
    from aha.models import load_model

    return load_model(tiny_model_dir)


# ----------------------------------------------------------------------------------------- packing


def test_pack_first_fit_decreasing_and_bucketing():
    assert pack([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    assert pack([5, 3, 4, 2], 8, packing=False) == [[0], [2], [1], [3]]
    with pytest.raises(ValueError):
        pack([9], 8)


def test_targets_mask_prompt_and_cover_every_completion_token():
    s = TokenSample(prompt_ids=(10, 11, 12), completion_ids=(20, 21))
    # position t predicts token t+1: the last prompt position predicts the first completion token
    assert sample_targets(s) == [IGNORE, IGNORE, 20, 21, IGNORE]
    b = collate_packed([s, TokenSample((30,), (40, 41))], [[0, 1]], pad_id=0)
    assert b.input_ids.tolist() == [[10, 11, 12, 20, 21, 30, 40, 41]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    # the first token of the second sample is never a target of the first sample's last position
    assert b.targets.tolist() == [[IGNORE, IGNORE, 20, 21, IGNORE, 40, 41, IGNORE]]
    assert b.num_targets == 4


def test_packed_rows_do_not_attend_across_samples(tiny_model_dir):
    """Logits of each sample inside a packed (and padded) row equal its logits when run alone."""
    model, _ = tiny(tiny_model_dir)
    model.eval()
    g = torch.Generator().manual_seed(0)
    samples = [TokenSample(tuple(torch.randint(3, 300, (p,), generator=g).tolist()),
                           tuple(torch.randint(3, 300, (c,), generator=g).tolist())) for p, c in ((5, 4), (3, 6), (7, 2))]
    rows = [[0, 1], [2]]  # the second row is padded to the first row's width
    b = collate_packed(samples, rows, pad_id=0)
    with torch.no_grad():
        packed = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
        at = {0: (0, 0), 1: (0, len(samples[0])), 2: (1, 0)}
        for i, s in enumerate(samples):
            alone = model(input_ids=torch.tensor([s.prompt_ids + s.completion_ids]), use_cache=False).logits[0]
            r, start = at[i]
            torch.testing.assert_close(packed[r, start:start + len(s)], alone, atol=1e-5, rtol=1e-4)
        # control: the same row with one running position sequence (no reset) does attend across samples
        leaky = model(input_ids=b.input_ids[:1], position_ids=torch.arange(b.input_ids.shape[1])[None], use_cache=False).logits
        s1 = samples[1]
        alone1 = model(input_ids=torch.tensor([s1.prompt_ids + s1.completion_ids]), use_cache=False).logits[0]
        assert not torch.allclose(leaky[0, len(samples[0]):len(samples[0]) + len(s1)], alone1, atol=1e-3)


def test_packed_loss_equals_sum_of_unpacked_losses(tiny_model_dir):
    model, _ = tiny(tiny_model_dir)
    samples = [TokenSample((5, 6, 7), (8, 9)), TokenSample((11, 12), (13, 14, 15, 16))]
    with torch.no_grad():
        packed = loss_sum(model, collate_packed(samples, [[0, 1]], pad_id=0))
        alone = sum(loss_sum(model, collate_packed(samples, [[i]], pad_id=0)) for i in range(2))
        # by hand: the NLL of exactly the completion tokens
        ids = torch.tensor([samples[1].prompt_ids + samples[1].completion_ids])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        by_hand = -sum(logp[t, ids[0, t + 1]] for t in range(1, 5))
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(loss_sum(model, collate_packed(samples, [[1]], 0)).detach(), by_hand, atol=1e-4, rtol=1e-5)


def _nll_alone(model, samples):
    """Summed NLL of each sample's completion tokens, each sample run by itself with full logits."""
    total = 0.0
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), -1)
        total = total + -sum(logp[t, ids[0, t + 1]] for t in range(len(s.prompt_ids) - 1, len(s) - 1))
    return total


def _grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("embed,checkpointing,chunk", [(False, False, 0), (True, False, 0), (True, True, 0),
                                                        (False, False, 4), (True, True, 4)])
def test_one_row_micro_batch_attends_per_sample_with_the_loss_and_gradients_of_samples_alone(
        tiny_model_dir, embed, checkpointing, chunk):
    """A micro-batch run as ONE row (what SFTTrainer does with SDPA): every layer's attention runs once per
    sample, and the loss and gradients equal those of each sample run alone, as do those of the padded
    multi-row batch (transformers' own block mask). With `embed`, the embedding gradient goes through
    InputEmbeddings (sent once, after the backward pass). With `checkpointing`, every layer runs again in the
    backward pass, per sample again (the plain kernel would attend across the whole row). With `chunk`, the
    LM head runs 4 target positions at a time."""
    import aha.training.batch as batch_mod
    from aha.training.batch import InputEmbeddings, enable_gradient_checkpointing
    from aha.training.sft_loop import sample_blocks

    model, _ = tiny(tiny_model_dir)
    model.train()
    g = torch.Generator().manual_seed(1)
    samples = [TokenSample(tuple(torch.randint(3, 300, (p,), generator=g).tolist()),
                           tuple(torch.randint(3, 300, (c,), generator=g).tolist())) for p, c in ((5, 4), (3, 9), (7, 2))]
    want, want_g = _grads(model, lambda: _nll_alone(model, samples))
    padded, padded_g = _grads(model, lambda: loss_sum(model, collate_packed(samples, [[0, 1], [2]], pad_id=0)))
    one = collate_packed(samples, [[0, 1, 2]], pad_id=0)
    assert sample_blocks(one) == [(0, 9), (9, 21), (21, 30)]
    calls = []
    sdpa = batch_mod.sdpa_attention_forward

    def counting(module, query, key, value, mask, **kwargs):
        calls.append((query.shape[2], key.shape[2], mask is None))
        return sdpa(module, query, key, value, mask, **kwargs)

    def one_row():
        e = InputEmbeddings(model) if embed else None
        loss = loss_sum(model, one, e, chunk)
        loss.backward()
        if e is not None:
            assert all(x.grad is not None for x in e.leaves)
            e.backward()
        return loss

    if checkpointing:
        enable_gradient_checkpointing(model)
    model.zero_grad(set_to_none=True)
    batch_mod.sdpa_attention_forward = counting
    try:
        got = one_row().detach()
    finally:
        batch_mod.sdpa_attention_forward = sdpa
    got_g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    runs = 2 if checkpointing else 1  # the forward pass, and with checkpointing each layer again in the backward
    assert calls == [(len(s), len(s), True) for s in samples] * model.config.num_hidden_layers * runs
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(padded, want, atol=1e-4, rtol=1e-5)
    assert got_g.keys() == want_g.keys() == padded_g.keys() and len(want_g) > 0
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(padded_g[name], want_g[name], atol=1e-5, rtol=1e-4, msg=name)


def test_one_row_micro_batch_keeps_a_sliding_window(tiny_model_dir):
    """Gemma 3's sliding-window layers: samples longer than the window, attended one at a time, keep the
    window (loss and gradients of each sample alone)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128)
    cfg._attn_implementation = "sdpa"
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    samples = [TokenSample(tuple(range(5, 12)), tuple(range(50, 58))), TokenSample((7, 8), (60, 61, 62))]
    want, want_g = _grads(model, lambda: _nll_alone(model, samples))
    got, got_g = _grads(model, lambda: loss_sum(model, collate_packed(samples, [[0, 1]], pad_id=0)))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], atol=1e-5, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize("completion", ["<think> 2 + 2 = 4 </think>\n<answer>4</answer>",
                                        " 2 + 2 = 4 </think>\n<answer>4</answer>"])
@pytest.mark.parametrize("prefill", ["<think>", ""])
def test_think_round_trip(tiny_model_dir, completion, prefill):
    """Whatever the prefill and whether the stored completion repeats it: exactly one <think>, trained on
    only when it is not in the prompt, and the target ends with one end-of-sequence token."""
    _, tok = tiny(tiny_model_dir)
    cfg = SFTConfig(model=tiny_model_dir, prefill=prefill, template="chat")
    s = TextSample(completion=completion, prompt="What is 2 + 2?")
    prompt, target = sft.render_sample(s, tok, cfg)
    t = sft.tokenize(s, tok, cfg)
    turn = tok.decode(t.prompt_ids + t.completion_ids).split("<|im_start|>assistant\n")[-1]  # the assistant's turn
    assert turn.count("<think>") == (1 if prefill or completion.startswith("<think>") else 0)
    assert turn.count("</think>") == 1
    assert prompt.endswith("<|im_start|>assistant\n" + prefill)
    assert ("<think>" in target) == (not prefill and completion.startswith("<think>"))
    assert target.endswith(tok.eos_token) and target.count(tok.eos_token) == 1
    assert tok.decode(t.completion_ids).endswith("<answer>4</answer>" + tok.eos_token)


def test_general_samples_get_no_prefill(tiny_model_dir):
    _, tok = tiny(tiny_model_dir)
    cfg = SFTConfig(model=tiny_model_dir, prefill="<think>")
    prompt, target = sft.render_sample(TextSample(completion="Paris.", prompt="Capital of France?", kind="general"), tok, cfg)
    assert not prompt.endswith("<think>") and target == "Paris." + tok.eos_token


def test_messages_rows_use_the_chat_template(tiny_model_dir):
    _, tok = tiny(tiny_model_dir)
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>x</think> hello"}]}
    s = sft.sample_from_row(row, "f:1")
    prompt, target = sft.render_sample(s, tok, SFTConfig(prefill="<think>"))
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>"
    assert target == "x</think> hello" + tok.eos_token


# ----------------------------------------------------------------------------------------- data


def test_mix_ratio_and_held_out_split():
    reasoning = [TextSample("r", prompt=f"q{i}") for i in range(30)]
    general = [TextSample("g", prompt=f"g{i}", kind="general") for i in range(4)]
    mixed = sft.mix_samples(reasoning, general, 0.25, seed=0)
    assert len(mixed) == 40 and sum(s.kind == "general" for s in mixed) == 10  # 10 / 40 = 0.25, file repeated
    assert sorted(s.prompt for s in sft.mix_samples(reasoning, general, 0.0, seed=0)) == sorted(s.prompt for s in reasoning)
    with pytest.raises(AhaError, match="mix.ratio"):
        sft.mix_samples(reasoning, general, 1.0, seed=0)
    two_each = [TextSample(c, prompt=f"q{i}") for i in range(10) for c in ("a", "b")]
    train, held = sft.split_held_out(two_each, 5, seed=1)
    assert len(held) == 6 and len(train) == 14  # whole prompts: 3 prompts of 2
    assert not {s.prompt for s in train} & {s.prompt for s in held}


@pytest.mark.parametrize("row, needle", [
    ({"prompt": "q"}, "missing field 'completion'"),
    ({"completion": "c"}, "missing field 'prompt'"),
    ({"prompt": "q", "completion": ""}, "field 'completion' must be a non-empty string"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "x"}]}, "end with a non-empty assistant"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "messages[0]"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, needle):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "completion": "fine"}, row])
    with pytest.raises(AhaError) as e:
        sft.read_samples(path)
    assert str(e.value).startswith(f"{path}:2: ") and needle in str(e.value) and "\n" not in str(e.value)


def test_empty_file_and_too_long_samples_are_one_line_errors(tiny_model_dir, tmp_path):
    _, tok = tiny(tiny_model_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(AhaError, match="no samples"):
        sft.prepare(SFTConfig(input=str(empty)), tok)
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "q", "completion": "word " * 200}])
    with pytest.raises(AhaError, match="longer than max_length=64"):
        sft.prepare(SFTConfig(input=long, max_length=64, eval_size=0), tok)


# ----------------------------------------------------------------------------------------- training


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sft_trains_and_validates(tiny_model_dir, samples_file, tmp_path):
    model, tok = tiny(tiny_model_dir)
    before = snapshot(model)
    out = sft.run(make_cfg(tiny_model_dir, samples_file, tmp_path / "run"), model=model, tokenizer=tok)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 and all(math.isfinite(r["loss"]) and r["tokens"] > 0 for r in steps)
    assert "eval/loss" in rows[0] and rows[-1]["eval/loss"] < rows[0]["eval/loss"]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert json.loads((out / "data.json").read_text())["held_out"] == 4
    assert (runs.newest_model(out) / "config.json").exists()
    assert runs.resolve_run(str(out)) == str(runs.newest_model(out)) and runs.resolve_run("name") == "name"


def test_sft_bf16_keeps_fp32_master_weights(tiny_model_dir, samples_file, tmp_path):
    model, tok = tiny(tiny_model_dir)
    before = snapshot(model)
    cfg = make_cfg(tiny_model_dir, samples_file, tmp_path / "run", "dtype=bfloat16", "steps=1", "packing=false")
    sft.run(cfg, model=model, tokenizer=tok)
    assert next(model.parameters()).dtype == torch.float32
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_micro_batch_size_does_not_change_the_step(tiny_model_dir, samples_file, tmp_path):
    losses = []
    for mbs in (1, 8):
        model, tok = tiny(tiny_model_dir)
        cfg = make_cfg(tiny_model_dir, samples_file, tmp_path / f"run{mbs}", f"optim.micro_batch_size={mbs}",
                       "steps=1", "packing=false")
        train, held, _ = sft.prepare(cfg, tok)
        losses.append(sft.SFTTrainer(cfg, train, held, model, tok).step()["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_sft_with_lora_trains_the_adapters_and_saves_a_plain_model(tiny_model_dir, samples_file, tmp_path,
                                                                     monkeypatch):
    """lora.rank: the base weights stay as loaded, the adapters move, validation loss falls, and the run's model
    folder is a plain model computing what the adapted one computes."""
    from aha.models import load_model

    model, tok = tiny(tiny_model_dir)
    base = snapshot(model)
    trainer_models = []
    real_init = sft.SFTTrainer.__init__

    def keep(self, *a, **k):
        real_init(self, *a, **k)
        trainer_models.append(self.policy)

    monkeypatch.setattr(sft.SFTTrainer, "__init__", keep)
    out = sft.run(make_cfg(tiny_model_dir, samples_file, tmp_path / "run", "lora.rank=4", "optim.lr=2e-2",
                           "optim.logprob_chunk=8"), model=model, tokenizer=tok)
    policy = trainer_models[0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert rows[-1]["eval/loss"] < rows[0]["eval/loss"]
    weights = policy.get_base_model().state_dict()
    for k, v in base.items():  # the base, under peft's names
        plain = [w for n, w in weights.items() if n.replace(".base_layer.", ".") == k]
        assert len(plain) == 1 and torch.equal(plain[0], v), k
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in policy.named_parameters() if "lora_B" in n)
    saved, _ = load_model(str(runs.newest_model(out)))
    ids = torch.tensor([[5, 17, 33, 2, 9, 41]])
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("extra", [[], ["lora.rank=4"]])
def test_resume_equals_uninterrupted(tiny_model_dir, samples_file, tmp_path, extra):
    def loss_rows(path):
        return [(r["step"], r.get("loss", -1.0), r.get("eval/loss", -1.0)) for r in map(json.loads, path.read_text().splitlines())]

    model, tok = tiny(tiny_model_dir)
    sft.run(make_cfg(tiny_model_dir, samples_file, tmp_path / "full", "steps=4", *extra), model=model, tokenizer=tok)

    class Killed(BaseException):
        pass

    cut = make_cfg(tiny_model_dir, samples_file, tmp_path / "cut", "steps=4", *extra)
    model, tok = tiny(tiny_model_dir)
    train, held, _ = sft.prepare(cut, tok)
    trainer = sft.SFTTrainer(cut, train, held, model, tok)
    real = trainer.step

    def dies_after_two():
        if trainer.step_no == 2:
            raise Killed
        return real()

    trainer.step = dies_after_two
    with pytest.raises(Killed):
        trainer.run()
    model, tok = tiny(tiny_model_dir)
    sft.run(make_cfg(tiny_model_dir, samples_file, tmp_path / "cut", "steps=4", "resume=true", *extra), model=model,
            tokenizer=tok)
    a, b = loss_rows(tmp_path / "full" / "metrics.jsonl"), loss_rows(tmp_path / "cut" / "metrics.jsonl")
    assert [r[0] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert ra == pytest.approx(rb, rel=1e-4)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "cut")] == [3, 4]


def test_a_time_budget_stops_after_a_step_with_a_checkpoint(tiny_model_dir, samples_file, tmp_path, capsys):
    """max_minutes: the step that passes the budget is the last (validated and checkpointed); resume goes on."""
    model, tok = tiny(tiny_model_dir)
    out = sft.run(make_cfg(tiny_model_dir, samples_file, tmp_path / "run", "steps=4", "max_minutes=1e-9"),
                  model=model, tokenizer=tok)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and "eval/loss" in rows[-1]
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [1]
    assert "stopped at step 1 after max_minutes=1e-09" in capsys.readouterr().err
    model, tok = tiny(tiny_model_dir)
    sft.run(make_cfg(tiny_model_dir, samples_file, tmp_path / "run", "steps=4", "resume=true"), model=model, tokenizer=tok)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]


def test_ctrl_c_then_resume_equals_uninterrupted(tiny_model_dir, samples_file, tmp_path):
    """A real SIGINT in step 3's forward pass: the step is rewound (its samples drawn again on resume)."""
    import os
    import signal

    def loss_rows(path):
        return [(r["step"], r.get("loss", -1.0), r.get("eval/loss", -1.0)) for r in map(json.loads, path.read_text().splitlines())]

    model, tok = tiny(tiny_model_dir)
    sft.run(make_cfg(tiny_model_dir, samples_file, tmp_path / "full", "steps=4"), model=model, tokenizer=tok)
    cut = make_cfg(tiny_model_dir, samples_file, tmp_path / "cut", "steps=4", "log.checkpoint_every=100")
    model, tok = tiny(tiny_model_dir)
    train, held, _ = sft.prepare(cut, tok)
    trainer = sft.SFTTrainer(cut, train, held, model, tok)
    real = trainer._loss_sum

    def ctrl_c(*a, **k):
        if trainer.step_no == 2 and trainer.policy.training:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    trainer._loss_sum = ctrl_c
    with pytest.raises(AhaError, match="interrupted at step 2"):
        trainer.run()
    model, tok = tiny(tiny_model_dir)
    sft.run(make_cfg(tiny_model_dir, samples_file, tmp_path / "cut", "steps=4", "resume=true"), model=model,
            tokenizer=tok)
    a, b = loss_rows(tmp_path / "full" / "metrics.jsonl"), loss_rows(tmp_path / "cut" / "metrics.jsonl")
    assert [r[0] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert ra == pytest.approx(rb, rel=1e-4)


def test_cli_sft_end_to_end(tiny_model_dir, samples_file, tmp_path):
    from aha.cli import main

    out = tmp_path / "cli"
    assert main(["sft", f"model={tiny_model_dir}", f"input={samples_file}", f"out_dir={out}", "steps=2",
                 "samples_per_step=4", "eval_size=2", "dtype=float32", "log.progress=false", "log.tensorboard=false"]) == 0
    assert ckpt.latest_checkpoint(out)[0] == 2


def test_cli_sft_bad_input_is_one_line(tmp_path, capsys):
    from aha.cli import main

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q"}])
    assert main(["sft", f"input={bad}", "model=nonexistent-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"aha: {bad}:1: missing field 'completion'"


@pytest.mark.parametrize("setting", ["auto", "false"])
def test_gradient_checkpointing_auto_in_sft(tiny_model_dir, samples_file, tmp_path, monkeypatch, setting):
    """SFT resolves `auto` as GRPO does: on when the trainable state outgrows a quarter of the memory (here
    the memory is made small); `false` stays off."""
    from aha.training import batch

    monkeypatch.setattr(batch, "device_memory", lambda device: 1)
    model, tok = tiny(tiny_model_dir)
    cfg = make_cfg(tiny_model_dir, samples_file, tmp_path / "run", "steps=1",
                   f"optim.gradient_checkpointing={setting}")
    train, held, _ = sft.prepare(cfg, tok)
    trainer = sft.SFTTrainer(cfg, train, held, model, tok)
    assert trainer.checkpointing == (setting == "auto")
    assert all(getattr(m, "gradient_checkpointing", False) == (setting == "auto") for m in model.model.layers)
    assert math.isfinite(trainer.step()["loss"])
