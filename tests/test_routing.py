"""Routing by prompt kind: a general prompt never reaches the rule verifier and a reasoning prompt never
reaches the reward model; per-kind metrics; JSONL rows carrying their kind; extra tasks."""

import json
import math

import pytest

from aha.config import load_config
from aha.data.example import Example
from aha.data.tasks import load_jsonl_task
from aha.errors import AhaError
from aha.rewards import RewardsConfig, RewardSet
from aha.rewards.base import RewardSpec
from aha.rewards.registry import REGISTRY
from aha.rollout.base import Completion
from aha.training.config import TrainConfig
from aha.training.metrics import component_means, kind_metrics

SEEN: dict[str, list[str]] = {"rule": [], "model": []}


def rule(completion, example, step=0):
    SEEN["rule"].append(example.kind)
    return 1.0


def model_batch(completions, examples, step=0):
    SEEN["model"].append([e.kind for e in examples])
    return [0.25] * len(completions)


SPY_REGISTRY = {
    "rule": lambda cfg: RewardSpec("rule", rule, 0.0, 1.0),
    "model": lambda cfg: RewardSpec("model", rule, 0.0, 1.0, batch_fn=model_batch),
}


@pytest.fixture(autouse=True)
def clear_seen():
    for v in SEEN.values():
        v.clear()


def test_each_kind_reaches_only_its_rewards():
    rs = RewardSet(RewardsConfig(weights={"rule": 1.0}, by_kind={"general": {"model": 2.0}}), registry=SPY_REGISTRY)
    exs = [Example("2+2?", "4", kind="reasoning"), Example("Write a haiku", "", kind="general"),
           Example("3+3?", "6", kind="reasoning"), Example("Say hi", "", kind="general")]
    totals, parts = rs.score([Completion(text="x")] * 4, exs)
    assert SEEN["rule"] == ["reasoning", "reasoning"]
    assert SEEN["model"] == [["general", "general"]]  # one batched call, general rows only
    assert totals == [1.0, 0.5, 1.0, 0.5]
    assert parts == {"rule": [1.0, 0.0, 1.0, 0.0], "model": [0.0, 0.25, 0.0, 0.25]}
    assert rs.last_status["rule"] == ["ok", "n/a", "ok", "n/a"]


def test_a_batch_without_general_prompts_never_calls_the_reward_model():
    rs = RewardSet(RewardsConfig(weights={"rule": 1.0}, by_kind={"general": {"model": 1.0}}), registry=SPY_REGISTRY)
    rs.score([Completion(text="x")] * 2, [Example("1+1?", "2")] * 2)
    assert SEEN["model"] == [] and SEEN["rule"] == ["reasoning", "reasoning"]


def test_a_failing_reward_model_scores_zero_and_is_counted():
    def broken(completions, examples, step=0):
        raise RuntimeError("CUDA out of memory")

    reg = {"model": lambda cfg: RewardSpec("model", rule, 0.0, 1.0, batch_fn=broken)}
    rs = RewardSet(RewardsConfig(weights={"model": 1.0}), registry=reg)
    totals, _ = rs.score([Completion(text="x")] * 3, [Example("q", "", kind="general")] * 3)
    assert totals == [0.0, 0.0, 0.0] and rs.stats["errors"] == 3


def test_component_and_kind_means_by_hand():
    parts = {"accuracy": [1.0, 0.0, 0.0, 0.0], "helpful": [0.0, 0.0, 0.8, 0.4]}
    weights = [{"accuracy": 1.0}, {"accuracy": 1.0}, {"helpful": 1.0}, {"helpful": 1.0}]
    assert component_means(parts, weights) == {"accuracy": 0.5, "helpful": pytest.approx(0.6)}
    m = kind_metrics(["reasoning", "reasoning", "general", "general"], [1.0, 0.0, 0.8, 0.4], parts, weights,
                     [10, 20, 30, 50])
    assert m == {"kind/general/reward": pytest.approx(0.6), "kind/general/length_mean": 40.0,
                 "kind/general/helpful": pytest.approx(0.6), "kind/reasoning/reward": 0.5,
                 "kind/reasoning/length_mean": 15.0, "kind/reasoning/accuracy": 0.5}


def test_jsonl_rows_carry_their_kind(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "What is 2 + 2?", "answer": "4", "task": "number"}\n'
                    '{"prompt": "Write a short poem about rain.", "kind": "general"}\n')
    a, b = load_jsonl_task(str(path))
    assert (a.kind, a.answer) == ("reasoning", "4") and (b.kind, b.answer) == ("general", "")
    path.write_text('{"prompt": "p", "answer": "1"}\n{"prompt": "a reasoning prompt without a gold"}\n')
    with pytest.raises(AhaError, match=r"mixed.jsonl:2: missing field 'answer'"):
        load_jsonl_task(str(path))


def test_recipe_routes_kinds_to_reward_models(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rewards:\n  by_kind:\n    general: {helpful: 1.0}\n  reward_models:\n"
                      "    helpful: {model: runs/rm, segment: summary, dtype: bfloat16}\n")
    cfg = load_config(TrainConfig, str(recipe))
    assert cfg.rewards.by_kind == {"general": {"helpful": 1.0}}
    assert cfg.rewards.reward_models["helpful"].segment == "summary"
    assert cfg.rewards.weights == TrainConfig().rewards.weights  # the default set still applies to other kinds
    recipe.write_text("rewards:\n  reward_models:\n    helpful: {model: runs/rm, segment: summry}\n")
    with pytest.raises(AhaError, match=r"r.yaml:3: rewards.reward_models.helpful.segment: expected one of"):
        load_config(TrainConfig, str(recipe))
    recipe.write_text("rewards:\n  by_kind:\n    general: {helpfull: 1.0}\n  reward_models:\n"
                      "    helpful: {model: runs/rm}\n")
    with pytest.raises(AhaError, match=r"unknown reward 'helpfull' in rewards.by_kind.general \(did you mean 'helpful'"):
        RewardSet(load_config(TrainConfig, str(recipe)).rewards)


@pytest.fixture()
def mixed_task(tmp_path):
    """(reasoning JSONL, general JSONL): 12 sums with golds and 8 chat prompts without."""
    sums, chat = tmp_path / "sums.jsonl", tmp_path / "chat.jsonl"
    sums.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b), "task": "number"}) + "\n"
                            for a in range(4) for b in range(3)))
    chat.write_text("".join(json.dumps({"prompt": f"Tell me something nice about {i}.", "kind": "general"}) + "\n"
                            for i in range(8)))
    return str(sums), str(chat)


def test_grpo_run_mixes_rule_and_model_rewards_and_logs_per_kind(tiny_model_dir, mixed_task, tmp_path, monkeypatch):
    from aha.models import load_model
    from aha.rollout.fake import ScriptedEngine
    from aha.training.grpo_loop import GRPOTrainer

    verified: list[str] = []
    real_accuracy = REGISTRY["accuracy"]

    def spying_accuracy(cfg):
        spec = real_accuracy(cfg)

        def fn(completion, example, step=0):
            verified.append(example.kind)
            return spec.fn(completion, example, step)

        return RewardSpec("accuracy", fn, 0.0, 1.0)

    monkeypatch.setitem(REGISTRY, "accuracy", spying_accuracy)
    monkeypatch.setitem(REGISTRY, "model", SPY_REGISTRY["model"])
    cfg = load_config(TrainConfig, None, [
        f"model={tiny_model_dir}", f"task={mixed_task[0]}", f"extra_tasks={mixed_task[1]}", f"out_dir={tmp_path / 'run'}", "steps=1", "seed=3",
        "grpo.group_size=2", "grpo.prompts_per_step=10", "rollout.max_new_tokens=8", "dtype=float32",
        "data.eval_size=4", "log.progress=false", "log.tensorboard=false", "log.rollouts_every=1", "selftest=true",
        "optim.warmup_steps=0", "optim.lr=1e-3", "rewards.weights={accuracy: 1.0, format_partial: 0.5}",
        "rewards.by_kind={general: {model: 1.0}}"])
    model, tok = load_model(tiny_model_dir)
    engine = ScriptedEngine(tok, ["<think> x </think> <answer> 2 </answer>", "no tags"])
    trainer = GRPOTrainer(cfg, model=model, tokenizer=tok, engine=engine)
    assert trainer.by_kind and {e.kind for e in trainer.eval_examples} == {"reasoning", "general"}
    out = trainer.run()
    assert verified and set(verified) == {"reasoning"}
    assert SEEN["model"] and all(set(call) == {"general"} for call in SEEN["model"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = rows[1]
    kinds = {e.kind for e in trainer._last_rollouts.examples}
    for kind in kinds:
        assert math.isfinite(step[f"kind/{kind}/reward"]) and step[f"kind/{kind}/length_mean"] > 0
    if "general" in kinds:
        assert step["kind/general/model"] == 0.25 and "kind/general/accuracy" not in step
    if "reasoning" in kinds:
        assert 0.0 <= step["kind/reasoning/accuracy"] <= 1.0 and "kind/reasoning/model" not in step
    assert "eval/kind/general/model" in rows[-1] and "eval/kind/reasoning/accuracy" in rows[-1]
    dumped = [json.loads(line) for line in (out / "rollouts" / "step_000001.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in dumped} == kinds


def test_extra_tasks_join_the_main_task(tmp_path):
    from aha.training.grpo_loop import load_examples

    main, extra = tmp_path / "main.jsonl", tmp_path / "general.jsonl"
    main.write_text("".join(json.dumps({"prompt": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(6)))
    extra.write_text("".join(json.dumps({"prompt": f"chat {i}", "kind": "general"}) + "\n" for i in range(4)))
    cfg = load_config(TrainConfig, None, [f"task={main}", f"extra_tasks={extra}", "data.eval_size=2"])
    train, held = load_examples(cfg, "train"), load_examples(cfg, "eval")
    assert [e.kind for e in train] == ["reasoning"] * 4 + ["general"] * 2
    assert [e.kind for e in held] == ["reasoning"] * 2 + ["general"] * 2
    assert not {e.prompt for e in train} & {e.prompt for e in held}
