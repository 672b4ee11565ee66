"""`aha sample`: rejection sampling (R1 §2.3.3). Sample `group_size` completions per prompt, verify each with
the task's accuracy reward, and keep those that pass the filters, at most `max_per_prompt` per prompt.

The filters are R1's: correct; in the output format; no mixed-language reasoning (the language-consistency
score at least `min_language`); not truncated or over-long; no long repetition; optionally no code blocks
in the reasoning; exact and near duplicates (of a completion already kept for the same prompt) dropped. A
completion is counted under the first filter that rejects it, in that order.

Outputs in `out_dir`: `samples.jsonl` (`{id, prompt, answer, completion, task, kind, source_model, accuracy,
format, language, tokens, finished}`; `prompt` is the bare question and `completion` includes the prefill,
as `aha sft` expects), `rejected.jsonl` (dropped completions, the same fields plus `rejected_by`),
`report.json` (generated, kept, dropped by each filter) and `done.jsonl`. Each batch
of prompts is appended to samples.jsonl and then recorded in done.jsonl; a restart drops rows whose batch
was never recorded and skips recorded batches, so a crash loses only the prompts in flight. Every batch
samples under its own seed, so a resumed run writes what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from aha.config import Fraction, NonNegFloat, NonNegInt, PositiveInt, Probability, check, save_config
from aha.data.example import Example
from aha.data.tasks import TaskConfig, load_task
from aha.data.templates import R1_SUMMARY_SYSTEM, R1_SYSTEM, encode_prompt, render_prompt, with_prefill
from aha.errors import AhaError
from aha.io import atomic_write_jsonl, atomic_write_text, path_signature
from aha.models import load_model
from aha.rewards import RewardSet
from aha.rewards.config import RewardsConfig
from aha.rewards.extract import split_think
from aha.rewards.format import format_r1, format_strict
from aha.rollout import make_engine
from aha.rollout.base import Completion, SamplingConfig
from aha.runs import resolve_run
from aha.runtime import pick_device
from aha.stages.sft import read_samples


@dataclass
class FilterConfig:
    """What a sampled completion must satisfy to be kept (R1 §2.3.3's rejection sampling)."""

    correct: bool = True
    """Keep only completions the task's accuracy reward scores 1."""
    format: Literal["strict", "r1", "none"] = "strict"
    """strict: exactly `<think>…</think><answer>…</answer>` (the format reward); r1: R1's output form,
    `<think>…</think>`, a readable summary, then `<answer>…</answer>`; none: any text."""
    language: str = "en"
    """Target language of the reasoning (en, zh, ja, ko, ru)."""
    min_language: Fraction = 0.9
    """Least share of the reasoning's words in `language` (R1's language consistency); 0 disables. Reasoning
    without any words (pure arithmetic) passes."""
    truncated: bool = True
    """Drop completions cut off at max_new_tokens."""
    max_tokens: NonNegInt = 0
    """Drop completions longer than this many tokens (0: no limit below max_new_tokens)."""
    repeat_ngram: PositiveInt = 8
    """Length in words of the n-grams checked for repetition."""
    max_repeats: NonNegInt = 3
    """Drop a completion in which one repeat_ngram-word n-gram occurs more than this many times; 0 disables."""
    no_code: bool = False
    """Drop completions whose reasoning contains a code block (a ``` fence), as R1 does for its reasoning data."""
    near_duplicate: Probability = 0.9
    """Drop a completion whose word-trigram Jaccard similarity to one already kept for the same prompt is at
    least this; 1.0 drops exact duplicates only (those are always dropped)."""
    max_per_prompt: PositiveInt = 4
    """m: completions kept per prompt at most."""


FILTERS = ("truncated", "overlong", "format", "correct", "language", "repetition", "code", "duplicate", "per_prompt")
"""The filters in the order they are applied; a rejected completion is counted under the first that fails."""


@dataclass
class SampleConfig:
    RENAMED: ClassVar[dict[str, str]] = {"batch_size": "max_batch"}
    model: str = "smollm2-135m-instruct"
    """The model to sample from: registry name, .gguf file, HF folder, or a run folder (its newest checkpoint)."""
    task: str = "chain_sum"
    """reasoning-gym name, JSONL path or hf:NAME (see `aha tasks`); its accuracy reward verifies."""
    data: TaskConfig = field(default_factory=lambda: TaskConfig(
        size=500, eval_size=100, args={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}))
    """Task size, seeds and difficulty; the train split is sampled (held-out problems stay held out)."""
    limit: NonNegInt = 0
    """Sample only the first N prompts (0: all)."""
    max_minutes: NonNegFloat = 0.0
    """Stop after the batch that passes this many minutes of this invocation: a wall-time budget (what was
    sampled is kept and used; `resume=true` continues with the next prompts). 0: no limit."""
    code_isolation: Literal["auto", "bwrap", "rlimits"] = "auto"
    """Code tasks: how model-written programs are isolated, as rewards.code_isolation in training: auto
    (bubblewrap, else an error) or rlimits (no namespaces; see docs/sandbox.md)."""
    group_size: PositiveInt = 8
    """k: completions sampled per prompt."""
    temperature: NonNegFloat = 0.7
    top_p: Probability = 0.95
    max_new_tokens: PositiveInt = 256
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    """Completions also end when their text contains one of these."""
    template: Literal["auto", "r1_zero", "chat", "r1", "plain"] = "auto"
    """Prompt template, as in `aha train` (see aha.data.templates)."""
    system_prompt: str = ""
    """Overrides the template's system prompt."""
    few_shot: bool = False
    """Show one worked example before each question (as in `aha train`)."""
    prefill: str = "<think>"
    """Text that starts every completion; filters and the written completion see prefill + completion."""
    demos: str = ""
    """JSONL of {prompt, completion} worked examples shown as earlier chat turns before each question
    (few-shot prompting with long chains of thought); replaces few_shot."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine, as rollout.engine in training: hf (transformers, CPU or GPU) or vllm (GPU)."""
    max_batch: PositiveInt = 64
    """Sequences decoded at once (as rollout.max_batch in training); max_batch // group_size prompts are
    sampled, filtered and written together (a crash loses at most that batch)."""
    out_dir: str = "runs/sample"
    """Output folder: samples.jsonl, report.json, done.jsonl, config.yaml."""
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights and compute dtype of the sampled model (auto: bfloat16 where the hardware computes it fast)."""
    device: str = "auto"
    save_rejected: bool = True
    """Also write rejected.jsonl: every dropped completion with `rejected_by` (the first filter it failed), to
    see why a filter drops what it drops."""
    resume: bool = True
    """Continue an interrupted run in out_dir (its config must match); false: refuse a non-empty out_dir."""
    progress: bool = True


# ----------------------------------------------------------------------------------------- filters


def r1_form(text: str) -> bool:
    """R1's output form: think block, non-empty summary, answer block (`aha.rewards.format.format_r1`)."""
    return format_r1(text) >= 1.0


def format_ok(text: str, rule: str) -> bool:
    return rule == "none" or (r1_form(text) if rule == "r1" else format_strict(text) >= 1.0)


_WORD = re.compile(r"\S+")


def max_ngram_count(text: str, n: int) -> int:
    """How often the most frequent n-word n-gram of `text` occurs (0 for fewer than n words)."""
    words = _WORD.findall(text)
    if len(words) < n:
        return 0
    return max(Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1)).values())


_LETTER = re.compile(r"[^\W\d_]")


def has_words(text: str) -> bool:
    """Whether the reasoning (the whole text when there is no think block) has any letters: reasoning that is
    pure arithmetic has no language to mix, so the language filter lets it pass."""
    reasoning, _ = split_think(text)
    return _LETTER.search(reasoning or text) is not None


def has_code_block(text: str) -> bool:
    """A ``` fence in the reasoning (the whole text when there is no think block)."""
    reasoning, _ = split_think(text)
    return "```" in (reasoning or text)


def shingles(text: str, n: int = 3) -> frozenset:
    words = _WORD.findall(text.lower())
    return frozenset(tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1)))


def similarity(a: frozenset, b: frozenset) -> float:
    """Jaccard similarity of two shingle sets."""
    return len(a & b) / len(a | b) if a or b else 1.0


def rejection(c: Completion, accuracy: float, language: float, f: FilterConfig) -> str | None:
    """The first filter (of FILTERS, before the duplicate and per-prompt checks) that rejects `c`, or None."""
    if f.truncated and not c.finished:
        return "truncated"
    if f.max_tokens and c.num_tokens > f.max_tokens:
        return "overlong"
    if not format_ok(c.text, f.format):
        return "format"
    if f.correct and accuracy < 1.0:
        return "correct"
    if f.min_language > 0 and language < f.min_language and has_words(c.text):
        return "language"
    if f.max_repeats and max_ngram_count(c.text, f.repeat_ngram) > f.max_repeats:
        return "repetition"
    if f.no_code and has_code_block(c.text):
        return "code"
    return None


def verdicts(group: list[Completion], accuracy: list[float], language: list[float],
             f: FilterConfig) -> list[str | None]:
    """For each of one prompt's completions, in sampling order, the filter that rejects it or None (kept)."""
    out: list[str | None] = []
    seen: list[tuple[str, frozenset]] = []
    for i, c in enumerate(group):
        why = rejection(c, accuracy[i], language[i], f)
        if why is None:
            norm, sh = " ".join(c.text.split()), shingles(c.text)
            if any(norm == n or similarity(sh, s) >= f.near_duplicate for n, s in seen):
                why = "duplicate"
            elif len(seen) >= f.max_per_prompt:
                why = "per_prompt"
            else:
                seen.append((norm, sh))
        out.append(why)
    return out


def select(group: list[Completion], accuracy: list[float], language: list[float],
           f: FilterConfig) -> tuple[list[int], Counter]:
    """(indices kept, rejections per filter) for one prompt's completions, in sampling order."""
    why = verdicts(group, accuracy, language, f)
    return [i for i, w in enumerate(why) if w is None], Counter(w for w in why if w is not None)


# ----------------------------------------------------------------------------------------- prompts


def prompt_text(question: str, tokenizer, cfg: SampleConfig, demos: list) -> str:
    """The prompt for `question`: `render_prompt` with the template settings, or with `demos` (text samples
    with `prompt` and `completion`) as earlier turns of the conversation."""
    if not demos:
        return render_prompt(question, tokenizer, cfg.template, cfg.system_prompt, cfg.few_shot, cfg.prefill)
    system = cfg.system_prompt or (R1_SUMMARY_SYSTEM if cfg.template == "r1" else R1_SYSTEM)
    if getattr(tokenizer, "chat_template", None) is None:
        turns = "".join(f"User: {d.prompt}\nAssistant: {d.completion}\n" for d in demos)
        return f"{system}\n\n{turns}User: {question}\nAssistant:" + cfg.prefill
    messages = [{"role": "system", "content": system}]
    for d in demos:
        messages += [{"role": "user", "content": d.prompt}, {"role": "assistant", "content": d.completion}]
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + cfg.prefill


# ----------------------------------------------------------------------------------------- resumable output


def _read_lines(path: Path) -> list[dict]:
    """Rows of a JSONL this stage wrote; a line torn by a crash (not valid JSON) is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows with one write, flushed to disk before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


NOT_COMPARED = ("resume", "progress", "out_dir", "save_rejected", "max_minutes")
"""Settings a resumed run may change: they do not change what is sampled."""


def _config_tree(cfg: SampleConfig) -> dict:
    tree = dataclasses.asdict(cfg)
    for k in NOT_COMPARED:
        tree.pop(k)
    return tree


def _first_difference(a, b, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(dict.fromkeys([*a, *b])):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return prefix.rstrip(".") if a != b else None


def model_signature(source_model: str) -> str:
    """What identifies the sampled weights: the signature of the model's file or folder (a retrained model at
    the same path differs), or the name itself for a registry name."""
    p = Path(source_model)
    return path_signature(p) if p.exists() else source_model


def recover(out: Path, cfg: SampleConfig, source_model: str, signature: str) -> list[dict]:
    """The done records of an earlier run in `out` (checked against `cfg` and the sampled model's weights),
    with samples.jsonl and rejected.jsonl cut back to the rows of recorded batches; [] for a fresh folder."""
    import yaml

    done = _read_lines(out / "done.jsonl")
    saved = out / "config.yaml"
    if not done and not (out / "samples.jsonl").exists():
        return []
    if not cfg.resume:
        raise AhaError(f"{out}: holds an earlier sampling run; resume=true continues it, or choose another out_dir")
    if saved.exists():
        key = _first_difference(_config_tree(cfg), {k: v for k, v in (yaml.safe_load(saved.read_text()) or {}).items()
                                                     if k not in NOT_COMPARED})
        if key:
            raise AhaError(f"{saved}: {key}: differs from this run's setting; resume needs the same config "
                           "(or choose another out_dir)")
    source = out / "source.json"
    if source.exists() and json.loads(source.read_text()).get("signature") != signature:
        raise AhaError(f"{source}: the model at {source_model} changed since this run sampled from it; "
                       "resume needs the same weights (or choose another out_dir)")
    done_ids = {i for d in done for i in d["ids"]}
    for name in ("samples.jsonl", "rejected.jsonl"):
        if (out / name).exists():
            atomic_write_jsonl(out / name, [r for r in _read_lines(out / name) if r.get("id") in done_ids])
    return done


def summarize(done: list[dict], cfg: SampleConfig, source_model: str, asked: int) -> dict:
    dropped = Counter()
    for d in done:
        dropped.update(d["dropped"])
    return {"source_model": source_model, "task": cfg.task, "prompts": sum(len(d["ids"]) for d in done),
            "prompts_asked": asked,
            "prompts_with_kept": sum(d["prompts_with_kept"] for d in done),
            "generated": sum(d["generated"] for d in done), "kept": sum(d["kept"] for d in done),
            "dropped": {k: dropped.get(k, 0) for k in FILTERS}, "filters": dataclasses.asdict(cfg.filters)}


# ----------------------------------------------------------------------------------------- the stage


def sample_rows(examples: list[Example], groups: list[list[Completion]], parts: dict[str, list[float]],
                cfg: SampleConfig, source_model: str) -> tuple[list[dict], list[dict], Counter, int]:
    """(kept rows, rejected rows with `rejected_by`, rejections per filter, prompts with at least one kept) for
    one batch."""
    k = cfg.group_size
    rows, rejected, dropped, with_kept = [], [], Counter(), 0
    for g, (ex, group) in enumerate(zip(examples, groups)):
        acc, lang = parts["accuracy"][g * k:(g + 1) * k], parts["language"][g * k:(g + 1) * k]
        fmt = parts["format"][g * k:(g + 1) * k]
        why = verdicts(group, acc, lang, cfg.filters)
        dropped.update(w for w in why if w is not None)
        with_kept += any(w is None for w in why)
        for i, w in enumerate(why):
            row = {"id": ex.id, "prompt": ex.prompt, "answer": ex.answer, "completion": group[i].text,
                   "task": ex.task, "kind": ex.kind, "source_model": source_model, "accuracy": acc[i],
                   "format": fmt[i], "language": lang[i], "tokens": group[i].num_tokens,
                   "finished": group[i].finished}
            if w is None:
                rows.append(row)
            else:
                rejected.append({**row, "rejected_by": w})
    return rows, rejected, dropped, with_kept


def run(cfg: SampleConfig, engine=None, tokenizer=None) -> Path:
    """Sample, verify, filter and write; returns out_dir. AhaError when nothing passes the filters."""
    import torch

    check(cfg)
    out = Path(cfg.out_dir)
    examples = load_task(cfg.task, cfg.data, "train")
    examples = [dataclasses.replace(e, id=e.id or f"{cfg.task}:{i}") for i, e in enumerate(examples)]
    if cfg.limit:
        examples = examples[: cfg.limit]

    demos = read_samples(cfg.demos, what="demos") if cfg.demos else []
    rewards = RewardSet(RewardsConfig(weights={"accuracy": 1.0, "format": 0.0, "language": 0.0},
                                      language=cfg.filters.language, code_isolation=cfg.code_isolation))
    rewards.prepare(examples[:1])
    source_model = resolve_run(cfg.model)
    signature = model_signature(source_model)
    done = recover(out, cfg, source_model, signature)
    if engine is None:
        model, tokenizer = load_model(source_model, dtype=cfg.dtype, device=pick_device(cfg.device))
        engine = make_engine(cfg.engine, model, tokenizer, max_batch=cfg.max_batch)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "source.json", json.dumps({"model": source_model, "signature": signature}))
    (out / "samples.jsonl").touch()
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                              stop=tuple(cfg.stop))
    per_batch = max(1, cfg.max_batch // cfg.group_size)
    finished = {d["batch"] for d in done}
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), initial=sum(len(d["ids"]) for d in done), desc="aha sample", dynamic_ncols=True)
    started = time.monotonic()
    for b, start in enumerate(range(0, len(examples), per_batch)):
        if b in finished:
            continue
        batch = examples[start:start + per_batch]
        torch.manual_seed(cfg.seed * 1_000_003 + b)  # per-batch seed: a resumed run samples what a full one would
        prompts = [encode_prompt(prompt_text(e.prompt, tokenizer, cfg, demos), tokenizer)
                   for e in batch]
        groups = [with_prefill(g, cfg.prefill) for g in engine.generate(prompts, cfg.group_size, sampling)]
        _, parts = rewards.score([c for g in groups for c in g], [e for e in batch for _ in range(cfg.group_size)])
        rows, rejected, dropped, with_kept = sample_rows(batch, groups, parts, cfg, source_model)
        append_rows(out / "samples.jsonl", rows)
        if cfg.save_rejected:
            append_rows(out / "rejected.jsonl", rejected)
        record = {"batch": b, "ids": [e.id for e in batch], "generated": len(batch) * cfg.group_size,
                  "kept": len(rows), "prompts_with_kept": with_kept, "dropped": dict(dropped)}
        append_rows(out / "done.jsonl", [record])
        done.append(record)
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix(kept=sum(d["kept"] for d in done), refresh=False)
        if cfg.max_minutes and time.monotonic() - started >= 60 * cfg.max_minutes and start + per_batch < len(examples):
            print(f"aha sample: stopped after max_minutes={cfg.max_minutes:g} at {sum(len(d['ids']) for d in done)} "
                  f"of {len(examples)} prompts; resume=true continues", file=sys.stderr)
            break
    if bar is not None:
        bar.close()
    rewards.close()
    report = summarize(done, cfg, source_model, len(examples))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    if report["kept"] == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in report["dropped"].items() if v)
        raise AhaError(f"{out / 'samples.jsonl'}: no completion passed the filters ({report['generated']} generated; "
                       f"dropped by {reasons or 'nothing'}); see {out / 'rejected.jsonl'}")
    return out
