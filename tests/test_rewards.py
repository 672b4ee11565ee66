"""Hand-computed unit tests for every reward, the registry and RewardSet (in-process)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from aha.data.example import Example
from aha.errors import AhaError
from aha.rewards import REGISTRY, RewardsConfig, RewardSet, extract_answer, split_think
from aha.rewards.base import GoldError, RewardSpec
from aha.rewards.config import BudgetSchedule, OverlongConfig
from aha.rewards.countdown import countdown_accuracy, evaluate, solve
from aha.rewards.format import format_partial, format_r1, format_strict
from aha.rewards.guard import call_guarded, time_limit
from aha.rewards.language import language_reward, language_share
from aha.rewards.length import budget_band, budget_reward, overlong_penalty, render_schedule
from aha.rewards.math import math_accuracy, parse_gold
from aha.rewards.number import number_accuracy
from aha.rollout.base import Completion


def tagged(answer: str, think: str = "reasoning") -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


# -- extraction ----------------------------------------------------------------------------------
def test_extract_takes_last_answer_tag():
    assert extract_answer("<answer>1</answer> then <answer> 2 </answer>") == "2"
    assert extract_answer("I will write <answer> later. <answer>7</answer>") == "7"


def test_extract_falls_back_to_last_balanced_boxed():
    assert extract_answer(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_answer(r"set \boxed{\{1,2\}}") == r"\{1,2\}"
    assert extract_answer(r"\boxed{3} and a truncated \boxed{4") == "3"
    assert extract_answer("no answer here") is None
    assert extract_answer("<answer>unclosed") is None
    assert extract_answer("<answer>  </answer>") == ""


def test_extract_is_linear_on_adversarial_megabyte():
    for junk in ["\\boxed{" * 150_000, "{" * 1_000_000, "<answer>" * 120_000 + "</answer>", "\\" * 1_000_000]:
        start = time.perf_counter()
        extract_answer(junk)
        assert time.perf_counter() - start < 1.0


def test_split_think():
    assert split_think("<think>a b</think><answer>c</answer>") == ("a b", "<answer>c</answer>")
    assert split_think("prefilled part</think> rest") == ("prefilled part", " rest")
    assert split_think("<think>truncated") == ("truncated", "")
    assert split_think("plain") == ("", "plain")


# -- math ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gold,answer", [
    (r"\frac{1}{2}", "0.5"),
    ("0.5", r"\frac{1}{2}"),
    ("1,450,000", "1450000"),
    ("1450000", "1,450,000"),
    ("18", "18.0"),
    ("18.0", "18"),
    (r"50\%", "50"),
    ("0.5", r"50\%"),
    (r"\{1,2\}", r"\{2,1\}"),
    ("[1,2)", "[1,2)"),
    (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"),
    ("5", "x = 5"),
    ("5", r"$5$ apples"),
    (r"\text{(C)}", "C"),
    ("Sunday", "sunday"),
    ("12345678901234567890", "12,345,678,901,234,567,890"),
])
def test_math_equivalent_answers_score_one(gold, answer):
    assert math_accuracy(tagged(answer), gold) == 1.0


@pytest.mark.parametrize("gold,answer", [
    ("2", "3"),
    ("(1,2]", "[1,2)"),
    ("5", "4 or 5"),          # a hedge parses as the set {4, 5}
    ("5", "$4$ or $5$"),
    ("3", "1,2,3"),
    ("5", "5.000001"),
    ("5", ""),
    ("Sunday", "dunsay"),                     # not a product of letters: anagrams differ
    ("12345678901234567890", "12345678901234567891"),  # exact for integers (math-verify alone: 15 digits)
])
def test_math_wrong_answers_score_zero(gold, answer):
    assert math_accuracy(tagged(answer), gold) == 0.0


def test_math_boxed_without_tags_and_no_answer():
    assert math_accuracy(r"so the result is \boxed{\frac{3}{4}}", "0.75") == 1.0
    assert math_accuracy("the answer is 0.75", "0.75") == 0.0  # not extracted: no tags, no box


def test_math_unparsable_gold_raises_gold_error_even_for_matching_text():
    with pytest.raises(GoldError):
        parse_gold(r"\frac{")
    with pytest.raises(GoldError):
        math_accuracy(tagged(r"\frac{"), r"\frac{")
    with pytest.raises(GoldError):
        math_accuracy(tagged("5"), "")


# -- number --------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer,gold,want", [
    ("18.0", "18", 1.0),
    ("$1,450,000", "1450000", 1.0),
    ("1450000 dollars", "1,450,000", 1.0),
    ("The total is 72.", "72", 1.0),
    ("-3", "-3", 1.0),
    ("3/4", "0.75", 1.0),
    (r"\frac{3}{4}", "0.75", 1.0),
    ("25%", "25", 1.0),
    ("12345678901234567890123", "12345678901234567890123", 1.0),
    ("12345678901234567890124", "12345678901234567890123", 0.0),  # exact, not float-close
    ("19", "18", 0.0),
    ("3", "-3", 0.0),
    ("18 or 19", "18", 0.0),  # the final number counts
    ("no number", "18", 0.0),
])
def test_number(answer, gold, want):
    assert number_accuracy(tagged(answer), gold) == want


def test_number_needs_extraction_and_a_gold_number():
    assert number_accuracy("the answer is 18", "18") == 0.0
    with pytest.raises(GoldError):
        number_accuracy(tagged("18"), "eighteen")


# -- countdown -----------------------------------------------------------------------------------
NUMS, TARGET = [66, 34, 98, 54, 6], 164


@pytest.mark.parametrize("expr,want", [
    ("6*(98 - 54) - 34 - 66", 1.0),
    ("6*(98 - 54) - 34 - 66 = 164", 1.0),       # trailing "= target" allowed
    ("6 × (98 − 54) − 34 − 66", 1.0),           # × and − read as * and -
    (r"\boxed{6*(98 - 54) - 34 - 66}", 1.0),
    (r"$6 \times (98 - 54) - 34 - 66$", 1.0),
    ("6*(98 - 54) - 34 - 66 = 165", 0.0),       # equation with the wrong target
    ("6*(98 - 54) - 34 - 66 = ²", 0.0),         # not an ASCII integer after "="
    ("6*(98 - 54) - 34 - 34", 0.0),             # 34 reused, 66 missing
    ("6*(98 - 54) - 34", 0.0),                  # 66 missing
    ("6*(98 - 54) - 34 - 66 - 0", 0.0),         # extra literal
    ("6**2", 0.0),
    ("98 // 6", 0.0),
    ("abs(66) + 98", 0.0),
    ("x + 66", 0.0),
    ("(98 - 98) / 0", 0.0),
    ("-(6) + 170", 0.0),                       # unary minus rejected
    ("6.0*(98 - 54) - 34 - 66", 0.0),
])
def test_countdown(expr, want):
    assert countdown_accuracy(tagged(expr), NUMS, TARGET) == want


def test_countdown_division_is_exact_and_zero_division_scores_zero():
    assert countdown_accuracy(tagged("(6 / 4) * 2"), [6, 4, 2], 3) == 1.0
    assert countdown_accuracy(tagged("6 / (4 - 4)"), [6, 4, 4], 3) == 0.0
    assert evaluate("7 / 2", [7, 2]) == pytest.approx(3.5)


def test_countdown_duplicate_numbers_must_each_be_used():
    assert countdown_accuracy(tagged("5 + 5"), [5, 5], 10) == 1.0
    assert countdown_accuracy(tagged("5 * 2"), [5, 5], 10) == 0.0


def test_countdown_rejects_long_and_nested_input_quickly():
    start = time.perf_counter()
    assert countdown_accuracy(tagged("(" * 100_000 + "1" + ")" * 100_000), [1], 1) == 0.0
    assert countdown_accuracy(tagged("+".join(["1"] * 300)), [1] * 300, 300) == 0.0  # over MAX_EXPR_CHARS
    assert time.perf_counter() - start < 1.0


def test_countdown_bad_gold():
    with pytest.raises(GoldError):
        countdown_accuracy(tagged("1"), None, 1)
    with pytest.raises(GoldError):
        countdown_accuracy(tagged("1"), [1], "1")


def test_countdown_solver():
    expr = solve([1, 3, 5, 9], 24)
    assert expr is not None and evaluate(expr, [1, 3, 5, 9]) == 24
    assert solve([1, 1], 99) is None


# -- format --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("<think>r</think><answer>5</answer>", 1.0),
    ("  <think>r</think>\n\n<answer> 5 </answer>\n", 1.0),
    ("<think></think><answer>5</answer>", 1.0),
    ("<think>r</think><answer>5</answer> and more", 0.0),     # trailing text after </answer>
    ("preamble <think>r</think><answer>5</answer>", 0.0),
    ("<think>r</think> text <answer>5</answer>", 0.0),
    ("<answer>5</answer><think>r</think>", 0.0),
    ("<think>r</think><answer> </answer>", 0.0),               # empty answer
    ("<think>r<think>r</think><answer>5</answer>", 0.0),        # a tag twice
    ("<think>r</think><answer>5</answer></answer>", 0.0),
    ("r</think><answer>5</answer>", 0.0),                       # <think> must be in the completion
    ("", 0.0),
])
def test_format_strict(text, want):
    assert format_strict(text) == want


@pytest.mark.parametrize("text,want", [
    ("<think>r</think><answer>5</answer>", 1.0),
    ("<think>r</think>", 0.5),
    ("<answer>5", 0.25),
    ("<think><think></think><answer>5</answer>", 0.75),
    ("nothing", 0.0),
])
def test_format_partial(text, want):
    assert format_partial(text) == want


@pytest.mark.parametrize("text,want", [
    ("<think>2 + 3 = 5</think>\nThe sum is 5.\n<answer>5</answer>", 1.0),
    ("<think>2 + 3 = 5</think><answer>5</answer>", 0.0),                   # no summary
    ("<think>2 + 3 = 5\nThe sum is 5.\n<answer>5</answer>", 0.0),         # </think> dropped
    ("<think> </think> summary <answer>5</answer>", 0.0),                  # empty reasoning
    ("<think>r</think> summary <answer> </answer>", 0.0),                  # empty answer
    ("<think>r</think> summary <answer>5</answer> more", 0.0),             # text after the answer
    ("<think>r</think> s <answer>5</answer><think>", 0.0),                 # a tag twice
])
def test_format_r1(text, want):
    assert format_r1(text) == want


# -- language ------------------------------------------------------------------------------------
def test_language_english_and_mixed():
    assert language_reward("<think>Let me think about this</think><answer>5</answer>") == 1.0
    # words: Let, me, 思, 考, 这, 个 -> 2 of 6 English
    assert language_reward("<think>Let me 思考 这个</think>") == pytest.approx(2 / 6)
    assert language_reward("<think>Let me 思考 这个</think>", "zh") == pytest.approx(4 / 6)
    assert language_reward("<think>naïve Schrödinger 42</think>") == 1.0
    assert language_reward("<think>Привет мир hello</think>", "ru") == pytest.approx(2 / 3)


def test_language_scores_reasoning_only_and_wordless_reasoning_is_consistent():
    assert language_reward("<think>English only</think><answer>答案</answer>") == 1.0
    assert language_reward("<think>12 + 7 = 19</think>") == 1.0  # no words: nothing mixed
    assert language_reward("<think></think><answer>five</answer>") == 1.0
    assert language_reward("no tags at all") == 1.0  # no think part: the whole text
    assert language_reward("全部中文") == 0.0
    assert language_share("", "en") == 0.0


def test_language_reward_pays_nothing_for_dropping_the_think_close_tag():
    """The hack recipes/r1.yaml's final stage found: tag names counted as English words, so the same
    arithmetic scored 0 inside <think>...</think> and 1 once </think> was dropped."""
    closed = "<think>\n23 - 60 = 8\n</think>\n23 - 60 = 8.\n<answer>8</answer>"
    dropped = "<think>\n23 - 60 = 8\n<answer>8</answer>"
    assert language_reward(closed) == language_reward(dropped) == 1.0
    assert language_reward("<think>计算 7 + 5<answer>12</answer>") == 0.0  # unclosed: reasoning ends at <answer>
    assert language_reward("<think>Let me 计算</think>") == 0.5  # Let, me of Let, me, 计, 算


def test_language_unknown_is_aha_error():
    with pytest.raises(AhaError, match="did you mean 'en'"):
        RewardSet(RewardsConfig(weights={"language": 1.0}, language="em"))


# -- length --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,want", [(0, 0.0), (192, 0.0), (193, -1 / 64), (224, -0.5), (255, -63 / 64),
                                    (256, -1.0), (1000, -1.0)])
def test_overlong_boundaries(n, want):
    assert overlong_penalty(n, 256, 64) == pytest.approx(want)


def test_overlong_zero_buffer_is_a_hard_edge():
    assert overlong_penalty(101, 100, 0) == -1.0
    assert overlong_penalty(100, 100, 0) == 0.0


def test_overlong_uses_token_count_or_words():
    rs = RewardSet(RewardsConfig(weights={"overlong": 1.0}, overlong=OverlongConfig(max_tokens=10, buffer=4)))
    ex = Example("q", "1")
    comps = [Completion("a " * 8), Completion("x", completion_ids=tuple(range(12)))]
    _, parts = rs.score(comps, [ex, ex])
    assert parts["overlong"] == [pytest.approx(-0.5), -1.0]


def test_budget_schedule_values_over_steps():
    s = BudgetSchedule(start_low=10, start_high=20, end_low=30, end_high=60, switch_step=100, ramp_steps=100, slack=10)
    assert budget_band(s, 0) == (10, 20)
    assert budget_band(s, 100) == (10, 20)
    assert budget_band(s, 150) == (20, 40)
    assert budget_band(s, 200) == (30, 60)
    assert budget_band(s, 10_000) == (30, 60)
    assert budget_reward(15, s, 0) == 1.0
    assert budget_reward(25, s, 0) == 0.5      # 5 tokens above the band, slack 10
    assert budget_reward(35, s, 0) == 0.0
    assert budget_reward(5, s, 0) == 0.5
    assert budget_reward(25, s, 200) == 0.5    # later, 25 is 5 below the band
    assert budget_reward(45, s, 200) == 1.0
    hard = BudgetSchedule(start_low=10, start_high=20, end_low=10, end_high=20, switch_step=0, ramp_steps=0, slack=0)
    assert budget_reward(21, hard, 5) == 0.0 and budget_reward(20, hard, 5) == 1.0


def test_budget_schedule_validation():
    with pytest.raises(AhaError, match="low <= high"):
        RewardSet(RewardsConfig(weights={"budget": 1.0}, budget=BudgetSchedule(start_low=50, start_high=10)))


def test_render_schedule_writes_png(tmp_path):
    out = render_schedule(BudgetSchedule(), tmp_path / "budget.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- registry and RewardSet ----------------------------------------------------------------------
def test_registry_names_and_unknown_name():
    assert {"accuracy", "format", "format_partial", "language", "overlong", "budget", "code"} <= set(REGISTRY)
    with pytest.raises(AhaError, match="did you mean 'accuracy'"):
        RewardSet(RewardsConfig(weights={"acuracy": 1.0}))
    with pytest.raises(AhaError, match="rewards.by_kind.general"):
        RewardSet(RewardsConfig(by_kind={"general": {"formatt": 1.0}}))


def test_score_weighted_total_and_parts():
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0, "format": 0.5, "format_partial": 0.25}))
    exs = [Example("q", "18", task="number"), Example("q", "18", task="number")]
    comps = [Completion(tagged("18")), Completion("<answer>17</answer>")]
    totals, parts = rs.score(comps, exs)
    assert parts == {"accuracy": [1.0, 0.0], "format": [1.0, 0.0], "format_partial": [1.0, 0.5]}
    assert totals == [1.0 + 0.5 + 0.25, 0.125]


def test_accuracy_dispatches_on_task():
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0}))
    exs = [
        Example("q", r"\frac{1}{2}", task="math"),
        Example("q", "18", task="number"),
        Example("q", "", task="countdown", metadata={"numbers": [1, 3, 5, 9], "target": 24}),
        Example("q", "500", task="rg:leg_counting", metadata={"entry": {"answer": "500", "metadata": {}}}),
    ]
    good = [tagged("0.5"), tagged("18"), tagged("1*3*5 + 9"), tagged("500")]
    bad = [tagged("0.6"), tagged("19"), tagged("1*3*5 * 9"), tagged("501")]
    totals, _ = rs.score([Completion(t) for t in good + bad], exs + exs)
    assert totals == [1.0] * 4 + [0.0] * 4


def test_accuracy_is_binary_and_partial_credit_is_its_own_reward():
    """reasoning-gym's chain_sum scores len(gold)/len(answer) when the gold is a substring of the answer:
    `-280` gets 0.75 for gold `-28`. That is a wrong answer (accuracy 0); the 0.75 is `partial_credit`."""
    entry = {"question": "What is 12 - 40?", "answer": "-28", "metadata": {}}
    ex = Example("q", "-28", task="rg:chain_sum", metadata={"entry": entry})
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0, "partial_credit": 0.0}))
    _, parts = rs.score([Completion(tagged("-280")), Completion(tagged("-28")), Completion(tagged("7"))], [ex] * 3)
    assert parts["accuracy"] == [0.0, 1.0, 0.0]
    assert parts["partial_credit"] == [pytest.approx(0.75), 1.0, 0.0]
    # other tasks: partial credit is the verdict itself
    num = Example("q", "18", task="number")
    _, parts = rs.score([Completion(tagged("18")), Completion(tagged("19"))], [num] * 2)
    assert parts["partial_credit"] == parts["accuracy"] == [1.0, 0.0]


def test_by_kind_routing():
    cfg = RewardsConfig(weights={"accuracy": 1.0}, by_kind={"general": {"format": 2.0}})
    rs = RewardSet(cfg)
    exs = [Example("q", "18", task="number"), Example("q", "", kind="general")]
    comps = [Completion(tagged("18")), Completion(tagged("anything"))]
    totals, parts = rs.score(comps, exs)
    assert totals == [1.0, 2.0]
    assert rs.last_status["format"] == ["n/a", "ok"] and rs.last_status["accuracy"] == ["ok", "n/a"]
    assert parts["accuracy"] == [1.0, 0.0]


def test_unparsable_gold_scores_zero_is_counted_and_warned_once(caplog):
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0}))
    ex = Example("q", r"\frac{", id="broken")
    with caplog.at_level(logging.WARNING, logger="aha.rewards"):
        totals, _ = rs.score([Completion(tagged(r"\frac{"))] * 3, [ex] * 3)
        rs.score([Completion(tagged("1"))], [ex])
    assert totals == [0.0, 0.0, 0.0]
    assert rs.stats["gold_failures"] == 4
    assert len([r for r in caplog.records if "broken" in r.getMessage()]) == 1


def test_unknown_task_and_refused_dataset_are_aha_errors():
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0}))
    with pytest.raises(AhaError, match="did you mean 'math'"):
        rs.prepare([Example("q", "1", task="maths")])
    with pytest.raises(AhaError, match="'n_queens' is refused: its scorer calls eval"):
        rs.prepare([Example("q", "1", task="rg:n_queens", metadata={"entry": {}})])


def sleepy(completion, example, step=0):
    time.sleep(float(example.answer))
    return 1.0


def explode(completion, example, step=0):
    raise ZeroDivisionError("boom")


def nan_reward(completion, example, step=0):
    return float("nan")


TEST_REGISTRY = {
    **REGISTRY,
    "sleepy": lambda cfg: RewardSpec("sleepy", sleepy, 0.0, 1.0, heavy=True),
    "explode": lambda cfg: RewardSpec("explode", explode, 0.0, 1.0),
    "nan": lambda cfg: RewardSpec("nan", nan_reward, 0.0, 1.0),
}


def test_timeout_in_process_scores_zero_and_is_counted():
    rs = RewardSet(RewardsConfig(weights={"sleepy": 1.0}, timeout_s=0.3), registry=TEST_REGISTRY)
    start = time.perf_counter()
    totals, _ = rs.score([Completion("x"), Completion("y")], [Example("q", "5"), Example("q", "0")])
    assert time.perf_counter() - start < 2.0
    assert totals == [0.0, 1.0]
    assert rs.stats["timeouts"] == 1 and rs.last_status["sleepy"] == ["timeout", "ok"]


def test_raising_and_nan_rewards_score_zero_and_count_as_errors():
    rs = RewardSet(RewardsConfig(weights={"explode": 1.0, "nan": 1.0, "format": 1.0}), registry=TEST_REGISTRY)
    totals, parts = rs.score([Completion(tagged("1"))], [Example("q", "1")])
    assert parts == {"explode": [0.0], "nan": [0.0], "format": [1.0]} and totals == [1.0]
    assert rs.stats["errors"] == 2


def test_time_limit_restores_handler_and_is_off_outside_main_thread():
    import signal

    before = signal.getsignal(signal.SIGALRM)
    with time_limit(0.5) as active:
        assert active
    assert signal.getsignal(signal.SIGALRM) is before
    seen = []
    t = threading.Thread(target=lambda: seen.append(call_guarded(sleepy, None, Example("q", "0.2"), 0, 0.05, 0, 1)))
    t.start()
    t.join()
    assert seen == [(1.0, "ok", "")]  # no limit off the main thread: it ran to the end


def test_math_scores_from_a_thread():
    # The anchor bug: math-verify's signal.alarm fails outside the main thread and everything scored 0.
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0}))
    out = []
    t = threading.Thread(target=lambda: out.append(rs.score([Completion(tagged("0.5"))], [Example("q", r"\frac12")])))
    t.start()
    t.join()
    assert out[0][0] == [1.0]


ADVERSARIAL = {
    "empty": "",
    "megabyte": "<think>" + "word " * 200_000 + "</think><answer>" + "9" * 1000 + "</answer>",
    "binary": bytes(range(256)).decode("latin-1") * 50,
    "power_tower_python": "<think>x</think><answer>10**10**10</answer>",
    "power_tower_latex": "<think>x</think><answer>10^{10^{10}}</answer>",
    "nested_latex": "<answer>" + "\\frac{1}{" * 2000 + "2" + "}" * 2000 + "</answer>",
    "nested_parens": "<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>",
    "many_boxes": "\\boxed{" * 50_000,
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_every_reward_is_total_and_bounded_on_adversarial_text(name):
    text = ADVERSARIAL[name]
    weights = {"accuracy": 1.0, "format": 1.0, "format_partial": 1.0, "language": 1.0, "overlong": 1.0, "budget": 1.0}
    rs = RewardSet(RewardsConfig(weights=weights, timeout_s=0.5, overlong=OverlongConfig(max_tokens=256)))
    exs = [Example("q", "5"), Example("q", "5", task="number"),
           Example("q", "", task="countdown", metadata={"numbers": [1], "target": 1}),
           Example("q", "5", task="rg:leg_counting", metadata={"entry": {"answer": "5", "metadata": {}}})]
    start = time.perf_counter()
    totals, parts = rs.score([Completion(text)] * len(exs), exs)
    assert time.perf_counter() - start < 0.5 * len(exs) + 3.0
    ranges = {"overlong": (-1.0, 0.0)}
    for comp, values in parts.items():
        lo, hi = ranges.get(comp, (0.0, 1.0))
        assert all(isinstance(v, float) and lo <= v <= hi for v in values), (comp, values)
    assert parts["accuracy"] == [0.0] * len(exs)
    assert rs.stats["errors"] == 0 and rs.stats["gold_failures"] == 0
