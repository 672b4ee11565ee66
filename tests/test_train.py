"""The GRPO trainer on a tiny random model: one step with the scripted engine, real steps with the HF
engine (loss finite, parameters changed), resume equality, and the fault cases."""

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

from aha.config import load_config
from aha.errors import AhaError
from aha.rollout.fake import ScriptedEngine
from aha.training import checkpoint as ckpt
from aha.training.config import TrainConfig
from aha.training.grpo_loop import GRPOTrainer


def make_cfg(tiny_model_dir, task_file, out_dir, *extra):
    return load_config(TrainConfig, None, [
        f"model={tiny_model_dir}", f"task={task_file}", f"out_dir={out_dir}", "steps=3", "seed=0",
        "grpo.group_size=4", "grpo.prompts_per_step=2", "rollout.max_new_tokens=12", "rollout.temperature=1.0",
        "optim.lr=1e-3", "optim.warmup_steps=0", "optim.micro_batch_size=3", "dtype=float32", "data.eval_size=4",
        "log.progress=false", "log.tensorboard=false", "log.checkpoint_every=1", "log.rollouts_every=1",
        "rewards.weights.accuracy=1.0", "rewards.weights.format_partial=0.5", "selftest=false", *extra])


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model):
    return [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]


def test_one_step_with_scripted_engine(tiny_model_dir, task_file, tmp_path):
    from aha.models import load_model

    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run")
    model, tok = load_model(tiny_model_dir)
    texts = ["<think> 1 </think> <answer> 3 </answer>", "no tags at all", "<think> x </think>", "<answer> 0 </answer>"]
    engine = ScriptedEngine(tok, texts)
    trainer = GRPOTrainer(cfg, model=model, tokenizer=tok, engine=engine)
    before = snapshot(trainer.policy)
    m = trainer.step()
    assert engine.calls == 1
    assert math.isfinite(m["loss"]) and m["grad_norm"] > 0
    assert m["reward/format_partial"] > 0 and 0 <= m["accuracy"] <= 1
    assert changed(before, trainer.policy), "parameters did not change"
    # shared prompts: the prefix all prompts share runs once, then each micro-batch runs the rest of its prompt
    # once and its completions; padding only adds
    from aha.rollout.base import shared_prefix_len

    comps = trainer._last_rollouts.completions
    k = shared_prefix_len([c.prompt_ids for c in comps])
    assert k > 0  # the R1 template's opening is shared
    real = k + sum(len(comps[mb[0]].prompt_ids) - k + sum(len(comps[j].completion_ids) for j in mb)
                   for mb in trainer.micro_batches(comps))
    assert all(len({comps[j].prompt_ids for j in mb}) == 1 for mb in trainer.micro_batches(comps))
    assert m["train_tokens"] == real and m["train_tokens_padded"] >= real
    assert real < sum(len(c.prompt_ids) + len(c.completion_ids) for c in comps)


def test_malloc_tuning_is_applied_once_on_glibc():
    import platform

    from aha.runtime import tune_malloc

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert tune_malloc() is True and tune_malloc() is True
    torch.ones(64 << 20, dtype=torch.uint8).sum()  # a 64 MiB tensor still allocates and frees


def test_real_steps_hf_engine_with_kl_and_mu(tiny_model_dir, task_file, tmp_path):
    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "grpo.kl_coef=0.05", "grpo.mu=2",
                   "grpo.loss_agg=token_mean", "grpo.eps_high=0.28")
    trainer = GRPOTrainer(cfg)
    assert trainer.ref is not None
    # Scripted rewards make every group informative, whatever the random model writes.
    trainer.rewards.score = lambda comps, exs, step=0: (
        [float(i % 2) for i in range(len(comps))], {"accuracy": [float(i % 2) for i in range(len(comps))]})
    before = snapshot(trainer.policy)
    out = trainer.run()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 and all(math.isfinite(r["loss"]) for r in steps)
    assert all(r["kl"] >= 0 for r in steps) and steps[-1]["kl"] > 0
    assert changed(before, trainer.policy)
    assert (out / "config.yaml").exists() and (out / "rollouts" / "step_000001.jsonl").exists()
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 3]  # keep_checkpoints=2


@pytest.mark.parametrize("extra", [[], ["lora.rank=4", "optim.lr=2e-2"]])
def test_gradient_checkpointing_takes_the_same_steps_with_the_hf_engine(tiny_model_dir, task_file, tmp_path, extra):
    """Two real steps (the policy samples its own rollouts, then trains with every layer recomputed in the
    backward pass): the same rollouts, losses, gradient norms and weights as without checkpointing; with LoRA
    too."""
    runs = []
    for gc in ("false", "true"):
        cfg = make_cfg(tiny_model_dir, task_file, tmp_path / f"run{gc}", "grpo.kl_coef=0.05", "steps=2",
                       "optim.micro_batch_size=8", f"optim.gradient_checkpointing={gc}", *extra)
        trainer = GRPOTrainer(cfg)
        layers = (trainer.policy.get_base_model() if trainer.lora else trainer.policy).model.layers
        assert all(getattr(m, "gradient_checkpointing", False) == (gc == "true") for m in layers)
        trainer.rewards.score = lambda comps, exs, step=0: (
            [float(i % 3) for i in range(len(comps))], {"accuracy": [0.0] * len(comps)})
        checkpointed = []  # the first layer's checkpointed calls (training passes only)
        if gc == "true":
            layer = layers[0]
            run_checkpointed = layer._gradient_checkpointing_func
            layer._gradient_checkpointing_func = (
                lambda *a, _log=checkpointed, _run=run_checkpointed, **k: _log.append(1) or _run(*a, **k))
        before = snapshot(trainer.policy)
        steps = [trainer.step() for _ in range(2)]
        assert all(math.isfinite(m["loss"]) for m in steps) and changed(before, trainer.policy)
        assert (len(checkpointed) > 0) == (gc == "true")
        runs.append((steps, snapshot(trainer.policy)))
    (plain, w_plain), (gc, w_gc) = runs
    for a, b in zip(plain, gc):
        assert a["length_mean"] == b["length_mean"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    for k in w_plain:
        torch.testing.assert_close(w_gc[k], w_plain[k], atol=1e-5, rtol=1e-4, msg=k)


def test_lora_trains_the_adapters_against_the_base_and_saves_the_merged_model(tiny_model_dir, task_file, tmp_path):
    """lora.rank: only the adapters train (the base stays as loaded), the KL reference is the base itself (no
    copy), rollouts come from the merged weights, and a checkpoint is a plain model computing what the
    policy computes."""
    from peft.tuners.lora import LoraLayer

    from aha.models import load_model
    from aha.training import lora

    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "lora.rank=4", "lora.alpha=8", "grpo.kl_coef=0.05",
                   "steps=3", "optim.lr=2e-2", "optim.logprob_chunk=4")
    trainer = GRPOTrainer(cfg)
    from aha.training.batch import _plain_head

    assert trainer.ref is None and trainer.rollout_model is not trainer.policy
    assert _plain_head(trainer.policy) is not None  # the chunked head reaches through the peft wrapper
    assert trainer.trainable and all("lora_" in n for n, p in trainer.policy.named_parameters() if p.requires_grad)
    trainer.rewards.score = lambda comps, exs, step=0: (
        [float(i % 3) for i in range(len(comps))], {"accuracy": [0.0] * len(comps)})
    before = snapshot(trainer.policy)
    out = trainer.run()
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 3 and all(math.isfinite(r["loss"]) for r in steps)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["kl"] > 0  # the base is the reference
    moved = changed(before, trainer.policy)
    assert moved and all("lora_" in k for k in moved)
    assert any(isinstance(m, LoraLayer) for m in trainer.policy.modules())
    merged = lora.merged_state(trainer.policy)
    for name, p in trainer.rollout_model.named_parameters():
        torch.testing.assert_close(p, merged[name], msg=name)
    saved, _ = load_model(str(ckpt.latest_checkpoint(out)[1]))
    ids = torch.tensor([[5, 17, 33, 2, 9, 41]])
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=ids).logits, trainer.policy(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tied", [False, True])
def test_lora_for_autocast_keeps_frozen_weights_in_bf16_and_computes_exactly_the_same(tied):
    """Under bf16 autocast the frozen linear weights are stored in bf16 and peft's fp32 cast of the adapters'
    inputs is off: the same logits and adapter gradients bit for bit, the adapters still fp32; a head tied to
    the input embedding stays fp32 (the lookup would otherwise start the residual stream in bf16)."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from aha.training import lora
    from aha.training.config import LoRAConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=tied)
    model = lora.apply(LlamaForCausalLM(cfg), LoRAConfig(rank=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # adapters that change the output
    ids = torch.randint(0, 64, (2, 9))

    def run(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m(input_ids=ids).logits
        logits.float().logsumexp(-1).sum().backward()
        return logits.detach(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}

    plain = copy.deepcopy(model)
    converted = lora.for_autocast(model, torch.bfloat16)
    assert converted == 2 * 7 + (0 if tied else 1)  # every adapted layer's base weight, and an untied head
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "norm" in n or "embed" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "base_layer" in n)
    assert model.get_output_embeddings().weight.dtype == (torch.float32 if tied else torch.bfloat16)
    (want, want_grads), (got, got_grads) = run(plain), run(model)
    assert torch.equal(got, want)
    assert got_grads.keys() == want_grads.keys() and all(torch.equal(got_grads[k], want_grads[k]) for k in want_grads)
    merged = lora.merged_state(model)  # saved and merged in fp32: the base as training saw it, plus the update
    assert all(v.dtype == torch.float32 for v in merged.values())
    ref = lora.merged_state(plain)
    for k, v in merged.items():
        torch.testing.assert_close(v, ref[k], atol=2e-2, rtol=1e-2, msg=k)


@pytest.mark.parametrize("autocast", [False, True])
def test_lora_fuse_computes_what_peft_does_and_falls_back_where_peft_is_special(autocast):
    """`lora.fuse`: every adapted layer's update added inside one addmm (scale folded into B) gives peft's logits
    and adapter gradients: to fp32 rounding in fp32, and under bf16 autocast (after `for_autocast`) within bf16's
    error of the fp32 result (peft's own bf16 path is ~1% off there too); with the adapters disabled (the KL
    reference) it is peft's base model exactly; a layer with dropout is left to peft."""
    import contextlib
    import copy

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from aha.training import lora
    from aha.training.config import LoRAConfig

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # q/k/v with a bias, as Qwen2's
    model = lora.apply(Qwen2ForCausalLM(cfg), LoRAConfig(rank=4, alpha=12.0))  # scale 3: not a power of two
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)  # adapters that change the output, at a trained adapter's scale
    reference = copy.deepcopy(model)  # peft in fp32
    if autocast:
        lora.for_autocast(model, torch.bfloat16)
    plain = copy.deepcopy(model)
    assert lora.fuse(model) == 2 * 7
    ids = torch.randint(0, 64, (2, 9))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

    def run(m, context):
        with context():
            logits = m(input_ids=ids).logits
        logits.float().logsumexp(-1).sum().backward()
        return logits.detach().float(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}

    (want, want_grads), (got, got_grads) = run(reference, contextlib.nullcontext), run(model, ctx)
    assert got_grads.keys() == want_grads.keys() and len(got_grads) == 2 * 2 * 7
    torch.testing.assert_close(got, want, **({"atol": 0.03, "rtol": 0.0} if autocast else {}))
    for k in want_grads:
        error = ((got_grads[k] - want_grads[k]).norm() / want_grads[k].norm()).item()
        assert error < (0.03 if autocast else 1e-5), (k, error)
    assert not torch.allclose(got, lora_off(model, ctx, ids), atol=0.01)  # the adapters do change the output
    assert torch.equal(lora_off(model, ctx, ids), lora_off(plain, ctx, ids))  # disabled: peft's own path
    dropped = lora.apply(Qwen2ForCausalLM(cfg), LoRAConfig(rank=4, dropout=0.1))
    assert lora.fuse(dropped) == 0


def lora_off(model, ctx, ids):
    from aha.training import lora

    with torch.no_grad(), lora.reference(model), ctx():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("memory", [[], ["optim.gradient_checkpointing=true", "optim.logprob_chunk=5"]])
def test_bf16_autocast_step(tiny_model_dir, task_file, tmp_path, memory):
    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "dtype=bfloat16", "steps=1", *memory)
    trainer = GRPOTrainer(cfg)
    assert trainer.rollout_model is not trainer.policy
    assert not any(getattr(m, "gradient_checkpointing", False) for m in trainer.rollout_model.modules())
    assert next(trainer.rollout_model.parameters()).dtype == torch.bfloat16
    assert next(trainer.policy.parameters()).dtype == torch.float32
    trainer.rewards.score = lambda comps, exs, step=0: ([float(i % 2) for i in range(len(comps))], {"accuracy": [0.0] * len(comps)})
    before = snapshot(trainer.policy)
    m = trainer.step()
    assert math.isfinite(m["loss"]) and changed(before, trainer.policy)
    p, r = next(trainer.policy.parameters()), next(trainer.rollout_model.parameters())
    assert torch.equal(p.detach().to(torch.bfloat16), r)  # rollout copy re-synced


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_shared_casts_compute_exactly_what_autocast_does_with_the_twins(family):
    """Under SharedCasts the linear layers compute with the given bf16 twins: with twins that are the master
    weights rounded, loss and every gradient (tied head, biases) equal autocast's bit for bit; a changed twin
    changes the output, so the twins are what runs."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from aha.training.shared_casts import SharedCasts, linear_twins

    torch.manual_seed(0)
    kw = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(LlamaConfig(**kw)) if family == "llama" else Qwen2ForCausalLM(Qwen2Config(**kw))
    rounded = copy.deepcopy(model).to(torch.bfloat16).requires_grad_(False)
    ids = torch.randint(0, 97, (3, 11))

    def run(mode):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), mode:
            loss = model(ids).logits.float().log_softmax(-1)[..., 5].sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    twins = linear_twins(model, rounded)
    assert len(twins) == 7 * 2 + 1  # every linear layer and the tied head
    want, want_grads = run(contextlib.nullcontext())
    got, got_grads = run(SharedCasts(twins))
    assert torch.equal(got, want)
    assert all(torch.equal(got_grads[n], want_grads[n]) for n in want_grads)
    if family == "qwen2":
        assert got_grads["model.layers.0.self_attn.q_proj.bias"].abs().sum() > 0
    with torch.no_grad():
        rounded.model.layers[1].mlp.down_proj.weight.mul_(2)
    assert not torch.equal(run(SharedCasts(twins))[0], want)


@pytest.mark.parametrize("extra", [["grpo.mu=2"], ["optim.gradient_checkpointing=true"]])
def test_shared_casts_take_the_same_step_as_autocast(tiny_model_dir, task_file, tmp_path, extra):
    """The GRPO trainer under bf16 shares the rollout copy's weights as its casts (on by default) and takes the
    very step autocast takes, with mu=2 too (the copy is re-synced between the updates) and with gradient
    checkpointing; not with LoRA or in fp32."""
    def one_step(shared):
        cfg = make_cfg(tiny_model_dir, task_file, tmp_path / f"run{shared}", "dtype=bfloat16", "steps=1",
                       "optim.lr=1e-2", f"optim.shared_casts={shared}", *extra)
        trainer = GRPOTrainer(cfg)
        assert (trainer.casts is not None) == shared
        trainer.rewards.score = lambda comps, exs, step=0: ([float(i % 2) for i in range(len(comps))],
                                                            {"accuracy": [0.0] * len(comps)})
        torch.manual_seed(0)
        trainer.step()
        return snapshot(trainer.policy)

    plain, shared = one_step(False), one_step(True)
    assert all(torch.equal(plain[k], shared[k]) for k in plain)
    for other in (["dtype=float32"], ["lora.rank=4"]):
        cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "other", "dtype=bfloat16", *other)
        assert GRPOTrainer(cfg).casts is None


@pytest.mark.parametrize("cap", [2.0, 0.0])
def test_bf16_rollout_copy_is_corrected_by_truncated_importance_weights(tiny_model_dir, task_file, tmp_path, cap):
    """Rollouts from the bf16 copy are not the trainer's policy: the engine records its log-probs and the
    policy term is reweighted (tis_mean != 1, and the update differs from the uncorrected one); tis_cap=0
    records nothing and weights every token 1."""
    def one_step(c):
        cfg = make_cfg(tiny_model_dir, task_file, tmp_path / f"run{c}", "dtype=bfloat16", "steps=1",
                       f"grpo.tis_cap={c}")
        trainer = GRPOTrainer(cfg)
        trainer.rewards.score = lambda comps, exs, step=0: ([float(i % 2) for i in range(len(comps))],
                                                            {"accuracy": [0.0] * len(comps)})
        torch.manual_seed(0)
        m = trainer.step()
        return trainer, m

    trainer, m = one_step(cap)
    recorded = [c.logprobs for c in trainer._last_rollouts.completions]
    if cap:
        assert all(lp is not None and len(lp) == len(c.completion_ids)
                   for lp, c in zip(recorded, trainer._last_rollouts.completions))
        assert m["tis_mean"] != 1.0 and 0 < m["tis_mean"] <= cap
        plain, _ = one_step(0.0)
        assert not torch.equal(next(trainer.policy.parameters()), next(plain.policy.parameters()))
    else:
        assert all(lp is None for lp in recorded) and m["tis_mean"] == 1.0


def _learning_rows(path: Path) -> list[dict]:
    keep = ("loss", "reward", "accuracy", "length_mean", "grad_norm", "kl", "eval/accuracy", "lr", "entropy")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: r[k] for k in ("step", *keep) if k in r} for r in rows]


def assert_same_learning(full: Path, cut: Path) -> None:
    """The resumed run's metrics rows equal the uninterrupted run's, step by step (steps 0-4)."""
    a, b = _learning_rows(full / "metrics.jsonl"), _learning_rows(cut / "metrics.jsonl")
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), (ra["step"], k)


@pytest.mark.parametrize("extra", [[], ["lora.rank=4", "grpo.kl_coef=0.05"]])
def test_resume_equals_uninterrupted(tiny_model_dir, task_file, tmp_path, extra):
    full = make_cfg(tiny_model_dir, task_file, tmp_path / "full", "steps=4", *extra)
    GRPOTrainer(full).run()

    class Killed(BaseException):
        """Stands in for SIGKILL: nothing in the trainer may catch it."""

    cut = make_cfg(tiny_model_dir, task_file, tmp_path / "cut", "steps=4", *extra)
    trainer = GRPOTrainer(cut)
    real_step = trainer.step

    def dies_after_two():
        if trainer.step_no == 2:
            (tmp_path / "cut" / "checkpoints" / ".tmp_step_000003").mkdir()  # a half-written checkpoint
            raise Killed
        return real_step()

    trainer.step = dies_after_two
    with pytest.raises(Killed):
        trainer.run()
    resumed = make_cfg(tiny_model_dir, task_file, tmp_path / "cut", "steps=4", "resume=true", *extra)
    GRPOTrainer(resumed).run()
    assert_same_learning(tmp_path / "full", tmp_path / "cut")


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tiny_model_dir, task_file, tmp_path):
    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "steps=3")
    trainer = GRPOTrainer(cfg)
    trainer.rewards.score = lambda comps, exs, step=0: ([float(i % 2) for i in range(len(comps))], {"accuracy": [0.0] * len(comps)})
    real_step = trainer.step

    def poisoned():
        if trainer.step_no == 1:
            with torch.no_grad():
                next(trainer.policy.parameters()).fill_(float("nan"))
        return real_step()

    trainer.step = poisoned
    with pytest.raises(AhaError, match=r"step 2: loss is nan.*last good checkpoint: .*step_000001"):
        trainer.run()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [1]


def test_disk_full_while_checkpointing_keeps_earlier(tiny_model_dir, task_file, tmp_path, monkeypatch):
    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "steps=2")
    trainer = GRPOTrainer(cfg)
    calls = {"n": 0}
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(AhaError, match=r"cannot write .*step_000002: No space left on device"):
        trainer.run()
    found = ckpt.list_checkpoints(tmp_path / "run")
    assert [s for s, _ in found] == [1]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp*"))
    assert ckpt.load_state(found[0][1])["step"] == 1


def test_ctrl_c_saves_checkpoint_and_exits_cleanly(tiny_model_dir, task_file, tmp_path):
    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "steps=5", "log.checkpoint_every=100")
    trainer = GRPOTrainer(cfg)
    real_step = trainer.step

    def interrupt():
        if trainer.step_no == 2:
            raise KeyboardInterrupt
        return real_step()

    trainer.step = interrupt
    with pytest.raises(AhaError, match="interrupted at step 2: checkpoint saved"):
        trainer.run()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [2]


@pytest.mark.parametrize("where,sig", [("generation", "SIGINT"), ("update", "SIGINT"), ("generation", "SIGTERM"),
                                       ("update", "SIGTERM")])
def test_ctrl_c_then_resume_equals_uninterrupted(tiny_model_dir, task_file, tmp_path, where, sig, monkeypatch):
    """A real SIGINT during step 3: while its rollouts are generated (the step is rewound: its prompts are
    drawn again on resume) or inside its optimizer update (the update completes, then the run stops). SIGTERM
    (kill, a scheduler) does the same, and so does SIGINT in a process that started with it ignored (a shell's
    background job)."""
    import os
    import signal

    if sig == "SIGINT":
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `cmd &` from a script leaves it
        request = lambda: os.kill(os.getpid(), signal.SIGINT)  # noqa: E731
    else:
        previous = None
        request = lambda: os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731

    full = make_cfg(tiny_model_dir, task_file, tmp_path / "full", "steps=4")
    GRPOTrainer(full).run()
    cut = make_cfg(tiny_model_dir, task_file, tmp_path / "cut", "steps=4", "log.checkpoint_every=100")
    trainer = GRPOTrainer(cut)
    target = trainer.engine if where == "generation" else trainer.opt
    name = "generate" if where == "generation" else "step"
    real = getattr(target, name)

    def ctrl_c(*a, **k):
        if trainer.step_no == 2:
            request()
        return real(*a, **k)

    setattr(target, name, ctrl_c)
    stopped_at = 2 if where == "generation" else 3
    try:
        with pytest.raises(AhaError, match=f"interrupted at step {stopped_at}: checkpoint saved"):
            trainer.run()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "cut")] == [stopped_at]
    GRPOTrainer(make_cfg(tiny_model_dir, task_file, tmp_path / "cut", "steps=4", "resume=true")).run()
    assert_same_learning(tmp_path / "full", tmp_path / "cut")


def test_max_minutes_stops_with_a_checkpoint_and_resume_finishes_the_same_run(tiny_model_dir, task_file, tmp_path):
    """A wall-time budget: the run stops after the step that passes it (here every step does), checkpointed
    and evaluated; `resume=true` continues to `steps` (all evaluated here, as the stop is) and learns what an uninterrupted run learns. Every step's
    wall time is in metrics.jsonl (`time/step_s`), so the training time of a run cut into parts adds up."""
    full = make_cfg(tiny_model_dir, task_file, tmp_path / "full", "steps=4", "log.eval_every=1")
    GRPOTrainer(full).run()
    budget = make_cfg(tiny_model_dir, task_file, tmp_path / "cut", "steps=4", "log.eval_every=1", "max_minutes=1e-9",
                      "log.checkpoint_every=100")
    GRPOTrainer(budget).run()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "cut")] == [1]
    GRPOTrainer(make_cfg(tiny_model_dir, task_file, tmp_path / "cut", "steps=4", "log.eval_every=1", "resume=true")).run()
    assert_same_learning(tmp_path / "full", tmp_path / "cut")
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "time/step_s" in r] == [1, 2, 3, 4]
    assert all(r["time/step_s"] > 0 for r in rows if r["step"] > 0)


def test_non_finite_weights_stop_the_run_and_keep_the_last_finite_checkpoint(tiny_model_dir, task_file, tmp_path):
    """lr=1e38 with flat groups: the backward pass is skipped, so no loss or gradient check can see the update
    overflow; the weights are checked after every update, and no non-finite checkpoint is ever written."""
    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "steps=6", "optim.lr=1e38", "log.keep_checkpoints=1")
    trainer = GRPOTrainer(cfg)
    trainer.rewards.score = lambda comps, exs, step=0: ([0.0] * len(comps), {"accuracy": [0.0] * len(comps)})
    with pytest.raises(AhaError, match=r"step \d: weights are not finite after the optimizer update.*training stopped"):
        trainer.run()
    for _, path in ckpt.list_checkpoints(tmp_path / "run"):
        from safetensors.torch import load_file

        for f in path.glob("*.safetensors"):
            assert all(bool(torch.isfinite(t).all()) for t in load_file(str(f)).values()), path
    assert trainer.step_no < 6


def test_dynamic_sampling_fills_batch_with_informative_groups(tiny_model_dir, task_file, tmp_path):
    from aha.models import load_model

    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "grpo.dynamic_sampling=true", "grpo.max_resample_rounds=3")
    model, tok = load_model(tiny_model_dir)
    trainer = GRPOTrainer(cfg, model=model, tokenizer=tok, engine=ScriptedEngine(tok, ["a"]))
    calls = {"n": 0}

    def score(comps, exs, step=0):
        calls["n"] += 1
        # first call: all groups flat; later calls: informative
        r = [0.0] * len(comps) if calls["n"] == 1 else [float(i % 2) for i in range(len(comps))]
        return r, {"accuracy": r}

    trainer.rewards.score = score
    ro, info = trainer.collect()
    assert info["resample_rounds"] == 1 and info["groups_sampled"] == 4 and info["groups_informative"] == 2
    assert info["sampled_accuracy"] == 0.25  # 0 of 8 in the flat round, 4 of 8 in the second
    assert len(ro.completions) == 8 and bool((ro.rewards.view(-1, 4).std(1) > 0).all())


def test_mask_truncated_excludes_cut_off_completions(tiny_model_dir, task_file, tmp_path):
    from aha.models import load_model

    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "grpo.mask_truncated=true", "rollout.max_new_tokens=2")
    model, tok = load_model(tiny_model_dir)
    # every scripted completion is longer than 2 tokens: all truncated, so nothing may be learned
    trainer = GRPOTrainer(cfg, model=model, tokenizer=tok, engine=ScriptedEngine(tok, ["<think> 1 2 3 </think>"]))
    trainer.rewards.score = lambda comps, exs, step=0: ([float(i % 2) for i in range(len(comps))], {"accuracy": [0.0] * len(comps)})
    before = snapshot(trainer.policy)
    m = trainer.step()
    assert m["truncated"] == 1.0 and m["loss"] == 0.0 and not changed(before, trainer.policy)


def test_flat_groups_skip_backward_without_changing_weights(tiny_model_dir, task_file, tmp_path):
    from aha.models import load_model

    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run")
    model, tok = load_model(tiny_model_dir)
    trainer = GRPOTrainer(cfg, model=model, tokenizer=tok, engine=ScriptedEngine(tok, ["same text"]))
    before = snapshot(trainer.policy)
    m = trainer.step()
    assert m["skipped_backward"] == 1.0 and m["loss"] == 0.0 and m["grad_norm"] == 0.0
    assert not changed(before, trainer.policy)


def test_packed_micro_batches_keep_to_the_size_and_token_budget(tiny_model_dir, task_file, tmp_path):
    from types import SimpleNamespace

    from aha.rollout.base import Completion

    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "optim.micro_batch_size=3", "optim.pack_tokens=20",
                   "optim.merge_groups=false")
    a, b = (1, 2, 3, 4, 5), (9, 9, 9, 9, 9)  # two prompts of 5 tokens
    lengths = [(a, 10), (b, 2), (a, 4), (a, 3), (a, 12), (b, 2), (a, 20), (b, 2), (b, 2), (b, 2)]
    comps = [Completion(text="", prompt_ids=p, completion_ids=tuple(range(k))) for p, k in lengths]
    chunks = GRPOTrainer.micro_batches(SimpleNamespace(cfg=cfg), comps)
    # a: 5+10+4 = 19; 5+3+12 = 20; the 20-token completion alone (over budget, but never split); b: 3 per row
    assert chunks == [[0, 2], [3, 4], [6], [1, 5, 7], [8, 9]]
    # merged: whole chunks share a row while both limits hold (3 completions, 20 tokens)
    cfg.optim.merge_groups = True
    merged = GRPOTrainer.micro_batches(SimpleNamespace(cfg=cfg), comps)
    assert merged == [[0, 2], [3, 4], [6], [1, 5, 7], [8, 9]]  # no two chunks fit together under these limits
    cfg.optim.micro_batch_size, cfg.optim.pack_tokens = 8, 40
    # a: 5+10+4+3+12 = 34, then 6 alone (25 tokens) and b (15 tokens) share a row
    assert GRPOTrainer.micro_batches(SimpleNamespace(cfg=cfg), comps) == [[0, 2, 3, 4], [6, 1, 5, 7, 8, 9]]


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batching_does_not_change_the_gradient(tiny_model_dir, task_file, tmp_path, agg):
    from aha.models import load_model

    texts = ["<think> 1 </think>", "a b c d e f g h", "<answer> 3 </answer>", "x", "1 2 3 4 5", "<think>", "7 7", "ok"]
    results = []
    for mbs, share, budget, prefix, merge, emb in (
            (8, "false", 4096, "true", "true", "false"), (3, "false", 4096, "true", "true", "true"),
            (3, "true", 4096, "false", "false", "true"), (3, "true", 4096, "true", "false", "true"),
            (3, "true", 4096, "true", "true", "true"), (3, "true", 4096, "true", "true", "false"),
            (8, "true", 4096, "true", "true", "true"), (8, "true", 1, "true", "true", "true"),
            (3, "true", 4096, "true", "true", "gc"), (3, "true", 4096, "true", "true", "chunk"),
            (8, "false", 4096, "true", "true", "chunk")):
        # gc: embedding gradient once, layers recomputed; chunk: the LM head 5 positions at a time
        cfg = make_cfg(tiny_model_dir, task_file, tmp_path / f"run{mbs}{share}{budget}{prefix}{merge}{emb}",
                       f"optim.micro_batch_size={mbs}", f"grpo.loss_agg={agg}", f"optim.share_prompt={share}",
                       f"optim.pack_tokens={budget}", f"optim.share_prefix={prefix}", f"optim.merge_groups={merge}",
                       f"optim.embedding_grad_once={emb != 'false'}", f"optim.gradient_checkpointing={emb == 'gc'}",
                       f"optim.logprob_chunk={5 if emb == 'chunk' else 0}", "grpo.kl_coef=0.1")
        model, tok = load_model(tiny_model_dir)
        trainer = GRPOTrainer(cfg, model=model, tokenizer=tok, engine=ScriptedEngine(tok, texts))
        trainer.rewards.score = lambda comps, exs, step=0: ([float(len(c.text) % 3) for c in comps], {"accuracy": [0.0] * len(comps)})
        m = trainer.step()
        results.append((m["loss"], m["grad_norm"], m["kl"]))
    # micro-batch size, packing, its token budget, the shared prefix and the embedding gradient's path change nothing
    for loss, grad_norm, _ in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-4, abs=1e-6)
        assert grad_norm == pytest.approx(results[0][1], rel=1e-3)


def test_prefill_is_scored_as_part_of_the_completion(tiny_model_dir, task_file, tmp_path):
    from aha.models import load_model

    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "prefill=<think>", "few_shot=true",
                   "rewards.weights.format=1.0")
    model, tok = load_model(tiny_model_dir)
    engine = ScriptedEngine(tok, [" 1 </think>\n<answer> 3 </answer>", "no tags"])
    trainer = GRPOTrainer(cfg, model=model, tokenizer=tok, engine=engine)
    ids = trainer.encode(trainer.examples[0])
    assert tok.decode(ids).endswith("<think>")
    m = trainer.step()
    # the strict format rule holds only because the prefilled <think> is put back before scoring
    assert m["reward/format"] == 0.5 and math.isfinite(m["loss"])
    assert trainer._last_rollouts.completions[0].text.startswith("<think> 1 </think>")


def test_the_trainer_prompts_start_with_the_bos_the_tokenizer_adds(tiny_model_dir, task_file, tmp_path):
    from conftest import build_bos_tokenizer

    from aha.models import load_model

    model, _ = load_model(tiny_model_dir)
    tok = build_bos_tokenizer()
    cfg = make_cfg(tiny_model_dir, task_file, tmp_path / "run", "template=r1_zero")
    trainer = GRPOTrainer(cfg, model=model, tokenizer=tok, engine=ScriptedEngine(tok, ["<answer> 3 </answer>"]))
    ids = trainer.encode(trainer.examples[0])
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_eval_problems_limits_the_greedy_evaluation_not_the_held_out_split(tiny_model_dir, task_file, tmp_path):
    all4 = GRPOTrainer(make_cfg(tiny_model_dir, task_file, tmp_path / "a", "data.eval_size=4"))
    two = GRPOTrainer(make_cfg(tiny_model_dir, task_file, tmp_path / "b", "data.eval_size=4", "log.eval_problems=2"))
    none = GRPOTrainer(make_cfg(tiny_model_dir, task_file, tmp_path / "c", "data.eval_size=4", "log.eval_problems=0"))
    assert two.eval_examples == all4.eval_examples[:2] and none.eval_examples == [] and none.evaluate() == {}
    train = {e.prompt for e in none.examples}
    assert len(none.examples) == len(all4.examples) and not train & {e.prompt for e in all4.eval_examples}


def test_resume_with_another_lr_uses_the_configs(tiny_model_dir, task_file, tmp_path, capsys):
    """Resuming with a changed optim.lr trains at the new rate from the next step, at the same place in the
    schedule (the checkpoint keeps where the warm-up stands, not its peak), and says so."""
    warm = ["optim.warmup_steps=4"]
    GRPOTrainer(make_cfg(tiny_model_dir, task_file, tmp_path / "run", "steps=2", *warm)).run()
    trainer = GRPOTrainer(make_cfg(tiny_model_dir, task_file, tmp_path / "run", "steps=3", "resume=true", *warm,
                                   "optim.lr=5e-4"))
    trainer.run()
    assert "optim.lr 0.001 in the checkpoint, 0.0005 from here on" in capsys.readouterr().out
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    first = rows[1]["lr"] / 1e-3 * 4  # warm-up factor (i + 1) / 4 at step 1
    assert first in (1.0, 2.0)
    assert rows[2]["lr"] == pytest.approx(1e-3 * (first + 1) / 4)
    assert rows[3]["lr"] == pytest.approx(5e-4 * (first + 2) / 4)
    assert trainer.opt.param_groups[0]["initial_lr"] == 5e-4


class _Layers(torch.nn.Module):
    """A stand-in model for the checkpointing rule: `n` parameters (trainable or not) and a decoder's widths."""

    def __init__(self, n, trainable=True):
        from types import SimpleNamespace

        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n), requires_grad=trainable)
        self.config = SimpleNamespace(hidden_size=10, intermediate_size=20, num_hidden_layers=2)


def test_checkpointing_auto_turns_on_when_the_training_state_would_fill_a_quarter_of_the_memory(monkeypatch,
                                                                                                capsys):
    from aha.training import batch

    monkeypatch.setattr(batch, "device_memory", lambda device: 64_000)  # bytes: a quarter is 16,000
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert batch.checkpointing_wanted("auto", _Layers(1000), "cpu") is False  # 16 bytes x 1000 = exactly a quarter
    assert capsys.readouterr().err == ""
    assert batch.checkpointing_wanted("auto", _Layers(1001), "cpu") is True
    assert "auto: the training state, 0.0 GB, would take over a quarter" in capsys.readouterr().err  # told why
    assert batch.checkpointing_wanted("auto", _Layers(10 ** 5, trainable=False), "cpu") is False  # frozen: no state
    assert batch.checkpointing_wanted(False, _Layers(10 ** 5), "cpu") is False
    assert batch.checkpointing_wanted(True, _Layers(1), "cpu")
    # FSDP2 over 4 processes: each holds a quarter of the state; on one CPU machine their quarters add up
    assert batch.checkpointing_wanted("auto", _Layers(2000), "cpu", world=4) is False  # 8,000 bytes here
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert batch.checkpointing_wanted("auto", _Layers(2000), "cpu", world=4) is True  # 32,000 bytes on this machine
    assert batch.checkpointing_wanted("auto", _Layers(2000), "cuda:0", world=4) is False  # one shard a GPU


def test_checkpointing_auto_turns_on_when_a_micro_batchs_activations_would_fill_a_quarter(monkeypatch, capsys):
    # 2 layers x (40 x 10 + 12 x 20) = 1,280 bytes a token; a quarter of 64,000 is 16,000: 12 tokens fit, 13 do not
    from aha.training import batch

    monkeypatch.setattr(batch, "device_memory", lambda device: 64_000)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    frozen = _Layers(10, trainable=False)  # LoRA-like: next to no training state
    assert batch.activation_bytes(frozen, 13) == 13 * 1280
    assert batch.checkpointing_wanted("auto", frozen, "cpu", tokens=12) is False
    assert batch.checkpointing_wanted("auto", frozen, "cpu", tokens=13) is True
    assert "a micro-batch's activations, up to 0.0 GB for 13 tokens" in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes' micro-batches in one CPU's memory
    assert batch.checkpointing_wanted("auto", frozen, "cpu", world=2, tokens=7) is True


def test_device_memory_is_the_machines_memory():
    import os

    from aha.training.batch import device_memory

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 2 ** 28 < device_memory("cpu") <= total


@pytest.mark.parametrize("extra", [[], ["lora.rank=4"]])
def test_gradient_checkpointing_auto_follows_the_trainable_state(tiny_model_dir, task_file, tmp_path, monkeypatch,
                                                                 extra):
    """auto: on for full fine-tuning when the state outgrows a quarter of the memory, off with LoRA's few
    trainable parameters on the same memory."""
    from aha.models import load_model
    from aha.training import batch

    n = sum(p.numel() for p in load_model(tiny_model_dir)[0].parameters())
    monkeypatch.setattr(batch, "device_memory", lambda device: 16 * n)  # full fine-tuning: 4x a quarter
    monkeypatch.setattr(batch, "ACTIVATION_BYTES_PER_WIDTH", (0, 0))  # the state alone decides here
    trainer = GRPOTrainer(make_cfg(tiny_model_dir, task_file, tmp_path / "run", "steps=1", *extra))
    layers = (trainer.policy.get_base_model() if trainer.lora else trainer.policy).model.layers
    on = not extra
    assert trainer.checkpointing == on
    assert all(getattr(m, "gradient_checkpointing", False) == on for m in layers)
    trainer.rewards.score = lambda comps, exs, step=0: (
        [float(i % 2) for i in range(len(comps))], {"accuracy": [0.0] * len(comps)})
    m = trainer.step()
    assert math.isfinite(m["loss"])
