"""The answer verifiers' decisions on what an answer is (math and number tasks): junk and collections do
not match a single gold, thousands written with spaces, a box inside a long answer, intervals written as
inequalities; and `aha score`'s default self-test and its output on text UTF-8 cannot encode."""

from __future__ import annotations

import json
import random
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aha.rewards.extract import final_answer
from aha.rewards.math import answer_math, math_accuracy
from aha.rewards.number import join_digit_groups, number_accuracy
from aha.rewards.score_cli import ScoreConfig, run_score, run_score_config


def tagged(answer: str) -> str:
    return f"<think>work</think>\n<answer>{answer}</answer>"


# -- junk and collections never match a single gold -----------------------------------------------
@pytest.mark.parametrize("answer", [
    "5, 7, 9",
    r"\{5, 7\}",
    "[5, 7]",
    "(5, 7)",
    "5 or 7",
    r"5 \text{ and } 7",
    "x = 5 or x = 7",
    r"x \in \{5, 7\}",
    r"3 \le x \le 7",
    r"\boxed{4} or \boxed{5}",          # two boxes are a hedge, not their last box
    "2√3",                              # math-verify alone reads the leading 2
    "the value is 5 and also 7 or maybe 9",
    "q=1l(p-3 -o#Cm 5 Bi$Up)\\`<sK5I%",  # junk around a 5
    "3>3N#ByZ?UkUM)%g=5`Cns.V $5$ zz $w$",
])
def test_collections_and_junk_holding_the_gold_score_zero(answer):
    gold = "2" if answer == "2√3" else "5"
    assert math_accuracy(tagged(answer), gold) == 0.0


@pytest.mark.parametrize("gold,answer", [
    (r"\{5, 7\}", r"\{7, 5\}"),
    (r"\{5, 7\}", "5, 7"),
    ("[5, 7]", "[5, 7]"),
    ("(5, 7)", "(5, 7)"),
    ("5", r"\{5\}"),                    # a single value, however written
    ("5", "x = 5"),
    (r"2\sqrt{3}", "2√3"),
])
def test_a_collection_gold_still_matches_an_equal_answer(gold, answer):
    assert math_accuracy(tagged(answer), gold) == 1.0


JUNK_ALPHABET = string.printable + "×÷²½∞思考"


def _junk(rng: random.Random) -> str:
    text = "".join(rng.choice(JUNK_ALPHABET) for _ in range(rng.randint(260, 910)))
    return text.replace("<answer>", "").replace("</answer>", "").replace("\\boxed", "")


def test_random_junk_scores_zero_for_a_small_integer_gold():
    # The anchor: 5 of 250 junk answers scored 1.0 for gold 5 (math-verify returned a fragment that parsed).
    # A `\boxed` is removed from the junk: one box in the answer IS the answer (tested below).
    rng = random.Random(0)
    hits = [s for s in (_junk(rng) for _ in range(250)) for gold in ("5",) if math_accuracy(tagged(s), gold)]
    assert hits == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(list(JUNK_ALPHABET) + ["5", "7", "0", " 5 ", "$5$", ", 5", "= 7", "\\{"]),
                min_size=260, max_size=700).map(lambda parts: "".join(parts)[:910]),
       st.sampled_from(["5", "7", "0"]))
def test_junk_never_scores_one(junk, gold):
    junk = junk.replace("\\boxed", "").replace("<answer>", "").replace("</answer>", "")
    assert math_accuracy(tagged(junk), gold) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-20, 20), min_size=2, max_size=6).filter(lambda v: len(set(v)) > 1),
       st.sampled_from([", ", " or ", " and ", r" \text{ or } "]),
       st.sampled_from(["{}", r"\{{{}\}}", "({})", "[{}]", "${}$"]))
def test_several_values_never_match_one_of_them(values, sep, wrapper):
    answer = wrapper.format(sep.join(str(v) for v in values))
    for v in set(values):
        assert math_accuracy(tagged(answer), str(v)) == 0.0, (answer, v)


# -- thousands written with spaces ------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("1 000", "1000"),
    ("12 345 678", "12345678"),
    ("-1 000.5", "-1000.5"),
    ("1\u2009000", "1000"),            # thin space
    ("1\u202f000", "1000"),            # narrow no-break space
    ("1\u00a0000", "1000"),            # no-break space
    ("1\\,000", "1000"),               # LaTeX thin space
    ("1 000 and 2 000", "1000 and 2000"),
    ("1 2", "1 2"),                    # groups after the first have exactly three digits
    ("12 345 67", "12 345 67"),
    ("1234 567", "1234 567"),          # the first group has at most three
    ("1 2 345", "1 2 345"),            # never joined after another number
    ("0.123 456", "0.123 456"),        # not after a decimal point
])
def test_join_digit_groups(text, want):
    assert join_digit_groups(text) == want


@pytest.mark.parametrize("answer,gold,want", [
    ("1 000", "1000", 1.0),
    ("12 345 678", "12345678", 1.0),
    ("1\\,000", "1000", 1.0),
    ("$1 000$", "1000", 1.0),
    ("1 000", "1 000", 1.0),
    ("1 2", "12", 0.0),
    ("1 2", "3", 0.0),                  # LaTeX reads `1 2` as the mixed number 1 + 2
    ("1 2", "2", 0.0),
    ("12 345 67", "1234567", 0.0),
    ("1 000", "1", 0.0),
])
def test_math_digit_groups(answer, gold, want):
    assert math_accuracy(tagged(answer), gold) == want


@pytest.mark.parametrize("answer,gold,want", [
    ("1 000", "1000", 1.0),
    ("12 345 678 dollars", "12345678", 1.0),
    ("$1\\,000", "1000", 1.0),
    ("1 2", "12", 0.0),                 # two numbers: the last one counts
    ("1 2", "2", 1.0),
    ("12 345 67", "1234567", 0.0),
])
def test_number_digit_groups(answer, gold, want):
    assert number_accuracy(tagged(answer), gold) == want


# -- a box inside a longer answer -------------------------------------------------------------------
LONG = "First, 3 + 4 = 7 and 7 * 6 = 43 - 1. " * 40  # over 1000 characters, full of other numbers


@pytest.mark.parametrize("answer", [
    r"First we compute 6 times 7, so the result is \boxed{42}.",
    r"\boxed{42}. Check: 42 - 1 = 41",
    LONG + r"so the result is \boxed{42}.",
])
def test_a_boxed_answer_inside_the_answer_block_is_the_answer(answer):
    assert final_answer(tagged(answer)) == "42"
    assert math_accuracy(tagged(answer), "42") == 1.0
    assert number_accuracy(tagged(answer), "42") == 1.0
    assert math_accuracy(tagged(answer), "41") == 0.0
    assert number_accuracy(tagged(answer), "41") == 0.0


def test_final_answer_leaves_several_boxes_and_no_box_alone():
    assert final_answer(tagged(r"\boxed{4} or \boxed{5}")) == r"\boxed{4} or \boxed{5}"
    assert final_answer(tagged("42")) == "42"
    assert final_answer("no answer") is None


# -- intervals written as inequalities --------------------------------------------------------------
@pytest.mark.parametrize("answer", [r"-2 \le x \le 7", "-2 <= x <= 7", "−2 ≤ x ≤ 7", r"-2 \leq x \leq 7",
                                    r"7 \ge x \ge -2", r"$-2 \le x \le 7$", r"x \in [-2, 7]"])
def test_inequalities_match_a_closed_interval(answer):
    assert math_accuracy(tagged(answer), "[-2, 7]") == 1.0
    assert math_accuracy(tagged(answer), "(-2, 7)") == 0.0


@pytest.mark.parametrize("answer,gold", [
    ("-2 < x < 7", "(-2, 7)"),
    (r"-2 < x \le 7", "(-2, 7]"),
    (r"-2 \le x < 7", "[-2, 7)"),
    ("x > 3", r"(3, \infty)"),
    (r"x \ge 3", r"[3, \infty)"),
    ("x < 3", r"(-\infty, 3)"),
    ("3 < x", r"(3, \infty)"),
    (r"-2 \le x \le 7", r"-2 \le x \le 7"),   # the same spelling on both sides still matches
    ("[-2, 7]", r"-2 \le x \le 7"),
])
def test_strict_inequalities_give_open_ends(answer, gold):
    assert math_accuracy(tagged(answer), gold) == 1.0


@pytest.mark.parametrize("answer,gold", [
    ("-2 < x < 7", "[-2, 7]"),
    (r"-2 < x \le 7", "[-2, 7)"),
    ("x > 3", r"[3, \infty)"),
])
def test_wrong_ends_score_zero(answer, gold):
    assert math_accuracy(tagged(answer), gold) == 0.0


def test_answer_math_is_the_whole_answer():
    assert answer_math("The answer is $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert answer_math("The answer is 5.") == "5"
    assert answer_math("Answer: 5") == "5"
    assert answer_math("Therefore, x = 5.") == "x = 5"
    assert answer_math("x = 5") == "x = 5"
    assert answer_math("ln 5") == "ln 5"          # one word is not a lead-in: it may be a function
    assert answer_math("junk 7 $5$") is None      # a digit outside the math delimiters
    assert answer_math("1 2") is None


# -- aha score: the default self-test, and output that UTF-8 cannot encode --------------------------
def test_selftest_with_the_defaults_runs_built_in_golds():
    # The anchor: `aha score selftest=true` failed with "unknown task 'math'" (a verifier name was loaded
    # as a data set).
    lines = []
    report = run_score_config(ScoreConfig(selftest=True))
    assert report["checked"] >= 10 and report["gold_failures"] == 0 and report["negative_failures"] == 0
    report = run_score(input="", selftest=True, task="number", echo=lines.append)
    assert report["checked"] >= 5 and "task 'number'" in lines[0]


def test_selftest_rg_prefix_loads_the_dataset():
    report = run_score(input="", selftest=True, task="rg:leg_counting", echo=lambda *_: None)
    assert report["checked"] > 0 and report["gold_failures"] == 0


def test_score_writes_rows_with_lone_surrogates(tmp_path):
    # A completion cut inside a character: json.loads gives a lone surrogate, which UTF-8 cannot encode.
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"completion": "<think>x\\ud800</think><answer>5</answer>", "answer": "5"}\n'
        '{"completion": "<think>思考</think><answer>6</answer>", "answer": "5"}\n', encoding="utf-8")
    summary = run_score(input=str(src), echo=lambda *_: None)
    out = tmp_path / "in.scored.jsonl"
    assert summary["output"] == str(out) and summary["rows"] == 2
    text = out.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0]["completion"] == "<think>x\ud800</think><answer>5</answer>"  # escaped, read back exactly
    assert rows[0]["accuracy"] == 1.0 and rows[1]["accuracy"] == 0.0
    assert "思考" in text  # other rows stay readable UTF-8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "in.scored.jsonl"]  # no temp file left
