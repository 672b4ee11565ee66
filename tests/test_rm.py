"""Reward models: the Bradley-Terry loss by hand, pair loading errors, training a tiny reward model
(loss finite, parameters changed, the result loads as sequence classification), and reward-model rewards
(segments, batching, routing through RewardSet)."""

import json
import math

import pytest
import torch

from aha.data.example import Example
from aha.errors import AhaError
from aha.rewards import RewardsConfig, RewardSet
from aha.rewards.rm import RewardModelConfig, completion_segment, load_reward_model, rm_batch, rm_input
from aha.rollout.base import Completion
from aha.stages.rm import (
    RMConfig,
    RMTrainer,
    batch_at,
    bradley_terry_loss,
    load_pairs,
    pairwise_accuracy,
    run,
)
from aha.training.config import OptimConfig, SFTLogConfig


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # -log sigmoid(1) = log(1 + e^-1) = 0.3132617; -log sigmoid(-1) = log(1 + e) = 1.3132617
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx((0.3132617 + 1.3132617) / 2, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([0.5]), torch.tensor([0.5])).item() == pytest.approx(math.log(2), abs=1e-6)


def test_bradley_terry_gradient_pushes_chosen_up():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    assert chosen.grad.item() == pytest.approx(-0.5) and rejected.grad.item() == pytest.approx(0.5)


def test_pairwise_accuracy_counts_ties_as_wrong():
    assert pairwise_accuracy([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(1 / 3)
    assert pairwise_accuracy([], []) == 0.0


def test_batches_cover_every_pair_once_per_epoch():
    n, bs = 10, 4
    first = [i for step in range(3) for i in batch_at(step, n, bs, seed=1)]
    second = [i for step in range(3, 6) for i in batch_at(step, n, bs, seed=1)]
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert first != second  # reshuffled each pass


@pytest.mark.parametrize("text, segment, expected", [
    ("<think>a b</think> the summary", "summary", " the summary"),
    ("<think>a b</think> the summary", "reasoning", "a b"),
    ("<think>a b</think> the summary", "full", "<think>a b</think> the summary"),
    ("prefilled reasoning</think>answer", "reasoning", "prefilled reasoning"),
    ("prefilled reasoning</think>answer", "summary", "answer"),
    ("<think>cut off mid-thought", "summary", ""),
    ("<think>cut off mid-thought", "reasoning", "cut off mid-thought"),
    ("no think block at all", "summary", "no think block at all"),
    ("no think block at all", "reasoning", ""),
])
def test_completion_segment(text, segment, expected):
    assert completion_segment(text, segment) == expected


def test_rm_input_uses_the_chat_template_when_there_is_one():
    from conftest import build_tokenizer

    tok = build_tokenizer()
    assert rm_input(tok, "Q?", "A.") == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nA.<|im_end|>\n"
    tok.chat_template = None
    assert rm_input(tok, "Q?", "A.") == "Q?\n\nA."


def write_pairs(path, n=12):
    rows = [{"prompt": f"What is {i} + 7?", "chosen": f"<think> {i} + 7 </think> <answer> {i + 7} </answer>",
             "rejected": "wait wait wait"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "chosen": "a"}', r"pairs.jsonl:2: missing field 'rejected'"),
    ('{"prompt": "p", "chosen": "a", "rejected": 3}', r"pairs.jsonl:2: field 'rejected' must be a non-empty string"),
    ('{"prompt": "p", "chosen": "a", "rejected": "a"}', r"pairs.jsonl:2: fields 'chosen' and 'rejected' are identical"),
    ('{"prompt": "p", "chosen": ', r"pairs.jsonl:2: malformed JSON"),
])
def test_bad_pairs_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' + line + "\n")
    with pytest.raises(AhaError, match=message) as e:
        load_pairs(str(path))
    assert "\n" not in str(e.value)


def rm_cfg(tiny_model_dir, data, out_dir, micro_batch_size=4, gradient_checkpointing=False, **kw):
    base = dict(model=tiny_model_dir, data=data, out_dir=str(out_dir), eval_size=4, epochs=3, batch_size=4,
                device="cpu", optim=OptimConfig(lr=5e-3, warmup_steps=0, beta2=0.999, micro_batch_size=micro_batch_size,
                                                gradient_checkpointing=gradient_checkpointing),
                log=SFTLogConfig(checkpoint_every=2, keep_checkpoints=1, eval_every=0, progress=False, tensorboard=False))
    return RMConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained_rm(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    cfg = rm_cfg(tiny_model_dir, write_pairs(tmp / "pairs.jsonl"), tmp / "rm")
    trainer = RMTrainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    out = trainer.run()
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(before[k], v)]
    return out, changed


def test_training_a_reward_model(trained_rm):
    out, changed = trained_rm
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 6  # 3 epochs x ceil(8 train pairs / 4)
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert "eval/pairwise_accuracy" in rows[0] and "eval/pairwise_accuracy" in rows[-1]
    assert any(k.startswith("score.") for k in changed) and any(k.startswith("model.") for k in changed)
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_micro_batches_and_checkpointing_take_the_same_step(tiny_model_dir, tmp_path):
    """A step's pairs one at a time, with or without every layer recomputed in the backward pass: the loss,
    gradient norm and gradients of the step taken all at once (and the weights move)."""
    data = write_pairs(tmp_path / "pairs.jsonl")
    steps = []
    for mbs, gc in ((4, False), (1, False), (3, True)):
        trainer = RMTrainer(rm_cfg(tiny_model_dir, data, tmp_path / f"rm{mbs}", micro_batch_size=mbs,
                                   gradient_checkpointing=gc))
        before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        m = trainer.step()
        assert math.isfinite(m["loss"])
        assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
        steps.append((m, {k: p.grad.clone() for k, p in trainer.model.named_parameters()}))
    (whole, g_whole), *others = steps
    for m, g in others:
        assert m["loss"] == pytest.approx(whole["loss"], rel=1e-5)
        assert m["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4)
        assert m["accuracy"] == whole["accuracy"] and m["margin"] == pytest.approx(whole["margin"], rel=1e-5)
        for k in g_whole:
            torch.testing.assert_close(g[k], g_whole[k], atol=1e-6, rtol=1e-4, msg=k)


def test_trained_reward_model_loads_as_sequence_classification(trained_rm):
    from transformers import AutoModelForSequenceClassification

    from aha.models import resolve

    out, _ = trained_rm
    folder = resolve(str(out))  # the run folder stands for its newest checkpoint
    assert folder.name == "step_000006"
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    assert "ForSequenceClassification" in model.config.architectures[0]


def test_reward_model_reward_scores_a_segment_in_batches(trained_rm, monkeypatch):
    import aha.rewards.rm as rm_mod

    out, _ = trained_rm
    calls = []
    real = rm_mod.score_texts
    monkeypatch.setattr(rm_mod, "score_texts", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    rs = RewardSet(RewardsConfig(weights={"helpful": 1.0}, reward_models={"helpful": RewardModelConfig(
        model=str(out), segment="summary", device="cpu", batch_size=2)}))
    ex = Example(prompt="What is 3 + 7?", answer="", kind="general")
    comps = [Completion(text="<think>one way</think> <answer> 10 </answer>"),
             Completion(text="<think>another, longer way</think> <answer> 10 </answer>"),
             Completion(text="<think>x</think> wait wait wait")]
    totals, parts = rs.score(comps, [ex] * 3)
    assert calls == [3]  # one batched call for the three rows (two forward passes of batch_size 2 inside)
    assert all(0.0 < v < 1.0 for v in parts["helpful"]) and totals == parts["helpful"]
    assert parts["helpful"][0] == pytest.approx(parts["helpful"][1], abs=1e-6)  # same summary, same score
    model, tok = load_reward_model(str(out), "cpu", "float32")
    raw = real(model, tok, [rm_input(tok, ex.prompt, " <answer> 10 </answer>")], 1, 1024)[0]
    assert parts["helpful"][0] == pytest.approx(1 / (1 + math.exp(-raw)), abs=1e-5)


def test_reward_model_config_errors():
    with pytest.raises(AhaError, match="rewards.reward_models.helpful.model: no reward model given"):
        RewardSet(RewardsConfig(weights={"helpful": 1.0}, reward_models={"helpful": RewardModelConfig()}))
    with pytest.raises(AhaError, match="'format' is a built-in reward"):
        RewardSet(RewardsConfig(weights={"format": 1.0}, reward_models={"format": RewardModelConfig(model="x")}))


def test_rm_run_folder_resumes(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl")
    full = run(rm_cfg(tiny_model_dir, data, tmp_path / "full", epochs=2))

    class Killed(BaseException):
        pass

    trainer = RMTrainer(rm_cfg(tiny_model_dir, data, tmp_path / "cut", epochs=2))
    real_step = trainer.step

    def dies_after_two():
        if trainer.step_no == 2:
            raise Killed
        return real_step()

    trainer.step = dies_after_two
    with pytest.raises(Killed):
        trainer.run()
    run(rm_cfg(tiny_model_dir, data, tmp_path / "cut", epochs=2, resume=True))
    a = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [r["step"] for r in a] == [0, 1, 2, 3, 4]
    assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], rel=1e-4)


def test_reward_model_inputs_keep_the_bos_and_the_end_when_cut():
    """The score is read at the last token, so a long input loses its start, but never the BOS a Gemma-like
    tokenizer puts in front (training and scoring share this batch)."""
    from conftest import build_bos_tokenizer, build_tokenizer

    plain, bos_tok = build_tokenizer(), build_bos_tokenizer()
    bos = bos_tok.bos_token_id
    texts = ["wait, let me re-check the sum. However the answer is 42.", "12 + 7 = 19"]
    full = plain(texts[0], add_special_tokens=False)["input_ids"]
    batch = rm_batch(plain, texts, max_length=6)  # no BOS by default: the last 6 tokens, as left truncation gave
    assert batch["input_ids"].shape == (2, 6) and batch["input_ids"][0].tolist() == full[-6:]
    batch = rm_batch(bos_tok, texts, max_length=6)
    assert batch["input_ids"][0].tolist() == [bos] + full[-5:]
    short = [bos] + plain(texts[1], add_special_tokens=False)["input_ids"]
    row = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
    assert row == (short if len(short) <= 6 else [bos] + short[-5:])
