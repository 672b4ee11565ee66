"""accuracy_lenient: shaping for models that do not write answer tags yet."""

from aha.data.example import Example
from aha.rewards import RewardsConfig, RewardSet
from aha.rollout.base import Completion


def score(text, ex):
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0, "accuracy_lenient": 1.0}))
    _, parts = rs.score([Completion(text=text)], [ex])
    return parts["accuracy"][0], parts["accuracy_lenient"][0]


def test_lenient_takes_last_number_when_no_tags():
    ex = Example(prompt="15 - 43 =", answer="-28", task="number")
    assert score("15 - 43 is -28.", ex) == (0.0, 1.0)
    assert score("-28 or maybe 12", ex) == (0.0, 0.0)
    assert score("no number", ex) == (0.0, 0.0)


def test_lenient_follows_tags_when_present():
    ex = Example(prompt="15 - 43 =", answer="-28", task="number")
    assert score("<answer>-28</answer>", ex) == (1.0, 1.0)
    # with tags, the tagged answer decides, not a later number
    assert score("<answer>12</answer> so -28", ex) == (0.0, 0.0)


def test_lenient_on_reasoning_gym_task():
    from aha.data.tasks import TaskConfig, load_task

    ex = load_task("chain_sum", TaskConfig(size=2, eval_size=1, args={"min_terms": 2, "max_terms": 2}))[0]
    assert score(f"The result is {ex.answer}", ex) == (0.0, 1.0)


def test_score_selftest_from_a_task_name():
    from aha.rewards.score_cli import run_score

    report = run_score("", task="chain_sum", selftest=True, echo=lambda *_: None)
    assert report["checked"] > 0 and report["gold_failures"] == 0 and report["negative_failures"] == 0
