"""`aha score` logic: offline scoring of a JSONL, and the verifier self-test."""

from __future__ import annotations

import json

import pytest

from aha.data.example import Example
from aha.errors import AhaError
from aha.rewards import RewardsConfig, RewardSet
from aha.rewards.score_cli import ScoreConfig, parse_rewards, perturb, run_score, run_score_config, selftest


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_parse_rewards():
    assert parse_rewards(["accuracy", "format:0.5"]) == {"accuracy": 1.0, "format": 0.5}
    with pytest.raises(AhaError, match="not a number"):
        parse_rewards(["format:lots"])


def test_perturb_changes_the_first_integer_beyond_tolerances():
    assert perturb(r"\frac{1}{2}") == r"\frac{92}{2}"
    assert perturb("1,450,000") == "92,450,000"
    assert perturb("0.05") == "91.05"
    assert perturb("[2,5)") == "[93,5)"
    assert perturb("1 0\n0 1") == "92 0\n0 1"
    assert perturb(r"\pi") is None


def test_score_writes_every_row_with_components(tmp_path):
    rows = [
        {"id": "a", "completion": "<think>r</think><answer>0.5</answer>", "answer": r"\frac{1}{2}"},
        {"id": "b", "completion": "<answer>0.6</answer>", "answer": r"\frac{1}{2}"},
        {"id": "c", "completion": "<think>r</think><answer>1*3*5+9</answer>", "task": "countdown",
         "numbers": [1, 3, 5, 9], "target": 24},
        {"id": "d", "completion": "<answer>5</answer>", "answer": r"\frac{"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    lines = []
    summary = run_score(src, "", "math", ["accuracy", "format:0.5"], False, echo=lines.append)
    out = read_jsonl(tmp_path / "in.scored.jsonl")
    assert [r["id"] for r in out] == ["a", "b", "c", "d"]
    assert [r["accuracy"] for r in out] == [1.0, 0.0, 1.0, 0.0]
    assert [r["format"] for r in out] == [1.0, 0.0, 1.0, 0.0]
    assert [r["reward"] for r in out] == [1.5, 0.0, 1.5, 0.0]
    assert out[0]["answer"] == r"\frac{1}{2}"  # input fields are kept
    assert summary["means"] == {"accuracy": 0.5, "format": 0.5}
    assert summary["gold_parse_failures"] == 1 and summary["parse_failure_rate"] == 0.25
    assert any("accuracy" in line for line in lines) and any("25.0%" in line for line in lines)


def test_score_config_entry_point(tmp_path):
    src = write_jsonl(tmp_path / "g.jsonl", [{"completion": "<answer>72</answer>", "answer": 72}])
    out = tmp_path / "scored.jsonl"
    summary = run_score_config(ScoreConfig(input=src, output=str(out), task="number", rewards=["accuracy"]))
    assert summary["reward"] == 1.0 and read_jsonl(out)[0]["accuracy"] == 1.0


@pytest.mark.parametrize("row,message", [
    ({"answer": "1"}, "in.jsonl:2: missing field 'completion'"),
    ({"completion": 5, "answer": "1"}, "in.jsonl:2: field 'completion' must be a string"),
    ({"completion": "x"}, "in.jsonl:2: missing field 'answer'"),
    ({"completion": "x", "task": "countdown", "numbers": [1, "2"], "target": 3}, "in.jsonl:2: field 'numbers'"),
    ({"completion": "x", "task": "countdown", "numbers": [1, 2], "target": "3"}, "in.jsonl:2: field 'target'"),
    ({"completion": "x", "task": "rg:leg_counting"}, "in.jsonl:2: field 'entry'"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    src = write_jsonl(tmp_path / "in.jsonl", [{"completion": "x", "answer": "1"}, row])
    with pytest.raises(AhaError, match=message):
        run_score(src, "", "math", ["accuracy"], False, echo=lambda s: None)
    assert not (tmp_path / "in.scored.jsonl").exists()


def test_malformed_json_names_the_line(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"completion": "x", "answer": "1"}\n{not json\n')
    with pytest.raises(AhaError, match="in.jsonl:2: malformed JSON"):
        run_score(str(p), "", "math", ["accuracy"], False, echo=lambda s: None)


def test_selftest_passes_on_good_golds(tmp_path):
    rows = [{"answer": g} for g in [r"\frac{1}{2}", "1,450,000", "18", r"\{1,2\}", "[1,2)", "x^2+1"]]
    rows += [{"task": "number", "answer": "72"}, {"task": "countdown", "numbers": [1, 3, 5, 9], "target": 24},
             {"task": "countdown", "numbers": [66, 34, 98, 54, 6], "target": 164, "answer": "6*(98 - 54) - 34 - 66"}]
    src = write_jsonl(tmp_path / "ex.jsonl", rows)
    lines = []
    report = run_score(src, "", "math", ["accuracy"], True, echo=lines.append)
    assert report["checked"] == len(rows) and report["gold_failures"] == 0
    assert report["negatives_checked"] == len(rows) and report["negative_failures"] == 0
    assert lines and lines[0].endswith("OK")


def test_selftest_fails_on_unparsable_golds():
    exs = [Example("q", "5", id="fine")] + [Example("q", r"\frac{", id=f"bad{i}") for i in range(2)]
    with RewardSet(RewardsConfig(weights={"accuracy": 1.0})) as rs:
        with pytest.raises(AhaError, match="2/3 gold answers do not parse"):
            selftest(exs, rs, max_parse_failure=0.1)
        report = selftest(exs, rs, max_parse_failure=0.7)
    assert report["gold_parse_failures"] == 2 and report["parse_failure_rate"] == pytest.approx(2 / 3)


def test_selftest_catches_a_verifier_that_scores_everything_zero():
    # The anchor bug (every MATH problem 0): the wrapped golds do not score 1, and the self-test says so.
    from aha.rewards.base import RewardSpec
    from aha.rewards.registry import REGISTRY

    reg = {**REGISTRY, "accuracy": lambda cfg: RewardSpec("accuracy", lambda c, e, s: 0.0, 0.0, 1.0)}
    with RewardSet(RewardsConfig(weights={"accuracy": 1.0}), registry=reg) as rs:
        with pytest.raises(AhaError, match="2/2 wrapped gold answers do not score 1"):
            selftest([Example("q", "5", id="p1"), Example("q", "7", id="p2")], rs)


def test_selftest_catches_a_verifier_that_scores_everything_one():
    from aha.rewards.base import RewardSpec
    from aha.rewards.registry import REGISTRY

    reg = {**REGISTRY, "accuracy": lambda cfg: RewardSpec("accuracy", lambda c, e, s: 1.0, 0.0, 1.0)}
    with RewardSet(RewardsConfig(weights={"accuracy": 1.0}), registry=reg) as rs:
        with pytest.raises(AhaError, match="perturbed answers score as correct"):
            selftest([Example("q", "5"), Example("q", "7")], rs)


def test_selftest_on_reasoning_gym_examples():
    import reasoning_gym

    exs = []
    for name in ["leg_counting", "basic_arithmetic", "countdown", "power_function", "number_sorting", "kakurasu",
                 "arc_agi", "graph_color"]:
        ds = reasoning_gym.create_dataset(name, size=3, seed=1)
        # Entries go through JSON as the task loader stores them (arc boards: tuples become lists).
        exs += [Example(e["question"], str(e["answer"]), task=f"rg:{name}", metadata={"entry": json.loads(json.dumps(e))},
                        id=f"{name}{i}") for i, e in enumerate(ds)]
    with RewardSet(RewardsConfig(weights={"accuracy": 1.0})) as rs:
        report = selftest(exs, rs, max_parse_failure=0.0)
    assert report["checked"] == 21 and report["skipped"] == 3  # graph_color has no single oracle answer
    assert report["gold_failures"] == 0 and report["negative_failures"] == 0


def test_selftest_skips_kinds_trained_without_accuracy_and_keeps_stats_clean():
    cfg = RewardsConfig(weights={"accuracy": 1.0}, by_kind={"general": {"format": 1.0}})
    exs = [Example("q", "5"), Example("q", r"\frac{", id="bad"), Example("open question", "", kind="general")]
    with RewardSet(cfg) as rs:
        report = selftest(exs, rs, max_parse_failure=0.6)
        assert report["checked"] == 2 and report["skipped"] == 1 and report["gold_parse_failures"] == 1
        assert rs.stats["gold_failures"] == 0  # the self-test's failures are not counted as training's
