"""Evaluation by the R1 protocol: estimators by hand, majority vote, equivalence grouping, end to end."""

import json
import math

import pytest

from aha.data.example import Example
from aha.rewards import RewardsConfig, RewardSet
from aha.rollout.base import Completion
from aha.stages.evaluate import (
    EvalConfig,
    evaluate,
    majority_vote,
    make_equivalence,
    markdown_table,
    mean_and_se,
    pass_at_k,
)


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    # k larger than the number wrong: always a correct one among k
    assert pass_at_k(4, 3, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_mean_and_standard_error_by_hand():
    m, se = mean_and_se([1.0, 0.0, 0.5, 0.5])
    assert m == 0.5 and se == pytest.approx(math.sqrt(1 / 6) / 2)
    assert mean_and_se([0.3]) == (0.3, 0.0)


def test_majority_vote_and_tie_rule():
    same = lambda a, b: a == b  # noqa: E731
    assert majority_vote(["3", "4", "4", None], same) == 1
    assert majority_vote(["5", "6", "6", "5"], same) == 0  # tie: the group whose first answer came first
    assert majority_vote(["6", "5", "5", "6"], same) == 0
    assert majority_vote([None, None], same) is None
    assert majority_vote([None, "7"], same) == 1


def test_answers_grouped_by_verifier_equivalence():
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0}))
    ex = Example(prompt="q", answer="0.5", task="math")
    eq = make_equivalence(ex, rs)
    assert eq("1/2", "0.5") and eq("\\frac{1}{2}", "0.5") and not eq("1/2", "0.75")
    answers = ["0.75", "1/2", "0.5", "\\frac{1}{2}"]
    assert majority_vote(answers, eq) == 1
    num = make_equivalence(Example(prompt="q", answer="1", task="number"), rs)
    assert num("1,450,000", "1450000") and num("18.0", "18")


def test_majority_vote_over_answers_without_a_number_warns_of_no_gold(caplog):
    """cons@k compares sampled answers with each other: a sampled "There is no solution." is not a gold, so it
    must not be reported as an unusable gold of the problem (it was, once per such answer, naming no example)."""
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0}))
    eq = make_equivalence(Example(prompt="q", answer="12", task="number"), rs)
    with caplog.at_level("WARNING"):
        assert majority_vote(["There is no solution.", "12", "12.0", "none"], eq) == 1
    assert "unusable gold" not in caplog.text and rs.stats["gold_failures"] == 0
    rs.score([Completion(text="<answer>3</answer>")], [Example(prompt="q", answer="no number", task="number", id="x")])
    assert rs.stats["gold_failures"] == 1  # a real gold without a number still counts (and warns once)


def test_end_to_end_tiny_model(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "task": "number"} for i in range(6)]
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    cfg = EvalConfig(model=[tiny_model_dir], task=str(data), split="train", samples=3,
                     max_new_tokens=8, out_dir=str(out), dtype="float32", progress=False, seed=1)
    cfg.data.eval_size = 0
    s1 = evaluate(cfg)
    assert len(s1) == 1 and s1[0]["problems"] == 6 and s1[0]["samples"] == 3
    for key in ("pass@1", "pass@1_se", "cons@3", "pass@2", "format_rate", "length_mean", "truncated"):
        assert key in s1[0]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 6 and len(records[0]["completions"]) == 3 and "extracted" in records[0]
    assert json.loads((out / "summary.json").read_text())[0]["model"] == tiny_model_dir
    assert "| model |" in markdown_table(s1)
    s2 = evaluate(cfg)  # seeded: the same numbers again
    assert s2[0]["pass@1"] == s1[0]["pass@1"] and s2[0]["length_mean"] == s1[0]["length_mean"]


def test_a_file_is_evaluated_whole_unless_limited(tiny_model_dir, tmp_path, capsys):
    """A 250-row test file: every row by default (not the 100-row "eval split" training runs hold out);
    `limit` and `split=eval` say otherwise, and the summary and its table state how many problems."""
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "task": "number"} for i in range(250)]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(**kw):
        cfg = EvalConfig(model=[tiny_model_dir], task=str(data), samples=1, temperature=0.0, max_new_tokens=1,
                         out_dir=str(tmp_path / "eval"), dtype="float32", progress=False, max_batch=256, **kw)
        return evaluate(cfg)[0]

    whole = run()
    assert whole["problems"] == 250 and whole["split"] == "all"
    assert "| 250 |" in markdown_table([whole])
    assert "250 problems of" in capsys.readouterr().err
    assert run(limit=30)["problems"] == 30
    assert "the first 30 of 250 by limit" in capsys.readouterr().err
    held = run(split="eval")
    assert held["problems"] == 100 and held["split"] == "eval"


def test_greedy_needs_one_sample(tiny_model_dir, tmp_path):
    from aha.errors import AhaError

    cfg = EvalConfig(model=[tiny_model_dir], task="chain_sum", samples=2, temperature=0.0, limit=2,
                     out_dir=str(tmp_path), dtype="float32", progress=False)
    with pytest.raises(AhaError, match="samples=1"):
        evaluate(cfg)


def test_run_folder_is_prompted_the_way_it_trained(tiny_model_dir, tmp_path):
    import shutil

    from aha.training.checkpoint import STATE_FILE

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_000001"
    shutil.copytree(tiny_model_dir, ckpt)
    (ckpt / STATE_FILE).write_bytes(b"")
    (run / "config.yaml").write_text(f"model: {tiny_model_dir}\nfew_shot: true\nprefill: <think>\n")
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "task": "number"} for i in range(2)]
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig(model=[str(run)], task=str(data), split="train", samples=1, temperature=0.0,
                     max_new_tokens=4, out_dir=str(tmp_path / "eval"), dtype="float32", progress=False)
    cfg.data.eval_size = 0
    summaries = evaluate(cfg)
    assert [s["model"] for s in summaries] == [tiny_model_dir, str(ckpt)]  # base model, then each checkpoint
    assert all(s["prompt"]["few_shot"] and s["prompt"]["prefill"] == "<think>" for s in summaries)
    records = [json.loads(line) for line in (tmp_path / "eval" / "model_1" / "samples.jsonl").read_text().splitlines()]
    assert all(c.startswith("<think>") for r in records for c in r["completions"])  # verdicts see the prefill
    cfg.model = [str(run), str(run)]
    assert len(evaluate(cfg)) == 2  # the same model under the same prompt is evaluated once
    cfg.prompt_from_run = False
    assert evaluate(cfg)[0]["prompt"]["prefill"] == ""


def test_a_run_built_on_another_run_lists_each_checkpoint_once(tmp_path):
    from aha.stages.evaluate import expand_models
    from aha.training.checkpoint import STATE_FILE

    def run(name: str, base: str) -> tuple[str, str]:
        ckpt = tmp_path / name / "checkpoints" / "step_000002"
        ckpt.mkdir(parents=True)
        (ckpt / STATE_FILE).write_bytes(b"")
        (tmp_path / name / "config.yaml").write_text(f"model: {base}\n")
        return str(tmp_path / name), str(ckpt)

    sft, sft_ckpt = run("sft", "base-model")
    rl, rl_ckpt = run("rl", sft)  # as a pipeline writes it: the base is the earlier stage's run folder
    assert expand_models([sft, rl]) == ["base-model", sft_ckpt, rl_ckpt]
    assert expand_models([rl]) == [sft_ckpt, rl_ckpt]
