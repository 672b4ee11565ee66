"""R1's accuracy reward for programming problems: run the model's program against the example's tests.

The program (see `aha.data.code.extract_code`) runs in `aha.sandbox`, which isolates it and produces
verdicts the program cannot forge. `code_accuracy` is 1 when every test passes and 0 otherwise;
`code_partial` is the fraction of tests passed. Both are total for anything the completion or the gold
data does (no code, bad gold tests, a program that crashes the sandbox): that scores 0 and never raises.
The one exception is the sandbox itself: `isolation="auto"` (the default) without a working bubblewrap is
an AhaError, never a silent run without namespaces; pass `isolation="rlimits"` to accept that.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence

from aha.data.code import extract_code
from aha.data.example import Example
from aha.rollout.base import Completion
from aha.sandbox import SandboxJob, SandboxResult, run_job, run_many, tests_from_source
from aha.sandbox import isolation as resolve_isolation

log = logging.getLogger("aha.rewards.code")

TIMEOUT_S = 10.0
"""Wall clock for one program and all its tests."""
MEMORY_MB = 512
MAX_PROCS = 16


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and s.name == name
               for s in tree.body)


def build_job(text: str, example: Example, *, timeout_s: float = TIMEOUT_S, memory_mb: int = MEMORY_MB,
              max_procs: int = MAX_PROCS, isolation: str = "auto") -> SandboxJob | None:
    """The sandbox job that scores completion `text` on `example`, or None when there is nothing to run
    (no code in the completion). Raises ValueError/SyntaxError for unusable gold tests."""
    meta = example.metadata or {}
    tests, entry = meta.get("tests"), meta.get("entry_point")
    if not isinstance(tests, str) or not tests.strip():
        raise ValueError(f"example {example.id!r} has no 'tests' in its metadata")
    if entry is not None and (not isinstance(entry, str) or not entry.isidentifier()):
        raise ValueError(f"example {example.id!r}: 'entry_point' must be an identifier")
    code = extract_code(text)
    if not code.strip():
        return None
    prefix = str(meta.get("prefix") or "")
    if prefix:  # HumanEval: a whole function goes after the prompt, a bare body continues it
        program = prefix + "\n\n" + code if entry and _defines(code, entry) else prefix + code
    else:
        program = code
    return SandboxJob(program, tuple(tests_from_source(tests, entry)), entry_point=entry,
                      prelude=str(meta.get("prelude") or ""), timeout_s=timeout_s, memory_mb=memory_mb,
                      max_procs=max_procs, isolation=isolation)


def _score(result: SandboxResult, partial: bool) -> float:
    if result.status != "ok" and not partial:
        return 0.0
    return result.fraction if partial else float(result.passed and result.tests_total > 0)


def code_reward(completion: Completion, example: Example, step: int = 0, *, partial: bool = False,
                timeout_s: float = TIMEOUT_S, memory_mb: int = MEMORY_MB, max_procs: int = MAX_PROCS,
                isolation: str = "auto") -> float:
    """1.0 if all tests pass (or, with `partial`, the fraction that pass), else 0.0. Raises only AhaError,
    when the sandbox cannot give `isolation` here (before anything runs)."""
    resolve_isolation(isolation)
    try:
        job = build_job(completion.text, example, timeout_s=timeout_s, memory_mb=memory_mb,
                        max_procs=max_procs, isolation=isolation)
        if job is None:
            return 0.0
        return _score(run_job(job), partial)
    except Exception as e:  # a reward must be total: bad gold, no sandbox, anything -> 0
        log.debug("code reward for %r scored 0: %s", getattr(example, "id", "?"), e)
        return 0.0


def code_accuracy(completion: Completion, example: Example, step: int = 0, *, isolation: str = "auto") -> float:
    """1.0 when the program in the completion passes every test of the example, else 0.0."""
    return code_reward(completion, example, step, isolation=isolation)


def code_partial(completion: Completion, example: Example, step: int = 0, *, isolation: str = "auto") -> float:
    """The fraction of the example's tests that the program passes (partial credit)."""
    return code_reward(completion, example, step, partial=True, isolation=isolation)


def code_rewards(completions: Sequence[Completion], examples: Sequence[Example], *, partial: bool = False,
                 workers: int | None = None, timeout_s: float = TIMEOUT_S, memory_mb: int = MEMORY_MB,
                 isolation: str = "auto") -> list[float]:
    """Scores for many (completion, example) pairs, run in parallel: the fast path for a GRPO batch.
    AhaError (before anything runs) when the sandbox cannot give `isolation` here."""
    resolve_isolation(isolation)
    scores = [0.0] * len(completions)
    jobs: list[SandboxJob] = []
    where: list[int] = []
    for i, (c, ex) in enumerate(zip(completions, examples, strict=True)):
        try:
            job = build_job(c.text, ex, timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation)
        except Exception as e:
            log.debug("code reward for %r scored 0: %s", getattr(ex, "id", "?"), e)
            continue
        if job is not None:
            jobs.append(job)
            where.append(i)
    try:
        results = run_many(jobs, workers=workers)
    except Exception as e:
        log.warning("code rewards: the sandbox failed (%s); scoring the batch 0", e)
        return scores
    for i, r in zip(where, results, strict=True):
        scores[i] = _score(r, partial)
    return scores
