"""`aha sft`: supervised fine-tuning on JSONL of `{prompt, completion}` or chat `{messages}` samples (R1's
cold-start and rejection-sampling SFT stages, and the student side of distillation).

A `prompt` is the bare question: it is rendered with the same template settings as `aha train` (template,
system_prompt, few_shot, prefill), so an SFT model is prompted the way RL and evaluation prompt it. A
`messages` row is rendered with the tokenizer's chat template; its last message is the assistant's target.
The target is the completion minus the prefill (`strip_prefill`, so a prefilled `<think>` is neither
dropped nor duplicated) plus one end-of-sequence token. Non-reasoning samples (`kind: general`, or the
`mix` file) are answers without a chain of thought: they get no prefill. The held-out slice for the
validation loss is made of whole prompts, so no prompt is both trained on and validated on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from aha.config import check
from aha.data.templates import encode_prompt, render_completion_target, render_prompt, strip_prefill
from aha.errors import AhaError
from aha.io import atomic_write_text, read_jsonl
from aha.models import load_model
from aha.runs import resolve_run
from aha.training.config import MixConfig, SFTConfig, SFTLogConfig  # noqa: F401  (this stage's config)
from aha.training.sft_loop import SFTTrainer, TokenSample


@dataclass(frozen=True)
class TextSample:
    """One sample as text: a bare question (`prompt`) or a conversation (`messages`, without the target),
    the target `completion`, and its kind (`reasoning` or `general`)."""

    completion: str
    prompt: str = ""
    messages: tuple[dict, ...] = ()
    kind: str = "reasoning"


# ----------------------------------------------------------------------------------------- reading


def _field(row: dict, name: str, where: str) -> str:
    if name not in row:
        raise AhaError(f"{where}: missing field '{name}'")
    value = row[name]
    if not isinstance(value, str) or not value.strip():
        raise AhaError(f"{where}: field '{name}' must be a non-empty string")
    return value


def sample_from_row(row: dict, where: str, kind: str = "reasoning") -> TextSample:
    """A TextSample from a `{prompt, completion}` or `{messages}` row; AhaError naming `where` and the field."""
    kind = str(row.get("kind", kind))
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise AhaError(f"{where}: field 'messages' must be a list of at least two messages")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise AhaError(f"{where}: field 'messages[{j}]' needs string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            raise AhaError(f"{where}: field 'messages' must end with a non-empty assistant message")
        return TextSample(completion=msgs[-1]["content"], messages=tuple(msgs[:-1]), kind=kind)
    prompt = _field(row, "prompt", where)
    return TextSample(completion=_field(row, "completion", where), prompt=prompt, kind=kind)


def read_samples(path: str, kind: str = "reasoning", what: str = "input") -> list[TextSample]:
    if not path:
        raise AhaError(f"{what}: no samples file given (a JSONL of {{prompt, completion}} or {{messages}})")
    rows = [sample_from_row(row, f"{path}:{lineno}", kind) for lineno, row in read_jsonl(path)]
    if not rows:
        raise AhaError(f"{path}: no samples (the file is empty)")
    return rows


def mix_samples(reasoning: list, general: list, ratio: float, seed: int) -> list:
    """`reasoning` plus general samples making up `ratio` of the result, in a seeded order."""
    if not 0.0 <= ratio < 1.0:
        raise AhaError(f"mix.ratio: must be in [0, 1), got {ratio}")
    rng = random.Random(seed)
    want = round(ratio / (1.0 - ratio) * len(reasoning)) if ratio > 0 and general else 0
    picked: list = []
    while len(picked) < want:
        batch = list(general)
        rng.shuffle(batch)
        picked += batch[: want - len(picked)]
    out = list(reasoning) + picked
    rng.shuffle(out)
    return out


def split_held_out(samples: list[TextSample], eval_size: int, seed: int) -> tuple[list[TextSample], list[TextSample]]:
    """(train, held_out): whole prompts are held out (in a seeded order) until `eval_size` samples are,
    and never more than half of the samples."""
    if eval_size <= 0:
        return list(samples), []
    keys = list(dict.fromkeys(_prompt_key(s) for s in samples))
    random.Random(seed).shuffle(keys)
    per_key: dict = {}
    for s in samples:
        per_key.setdefault(_prompt_key(s), []).append(s)
    held: set = set()
    n = 0
    for k in keys:
        if n >= eval_size or n + len(per_key[k]) > len(samples) // 2:
            break
        held.add(k)
        n += len(per_key[k])
    return [s for s in samples if _prompt_key(s) not in held], [s for s in samples if _prompt_key(s) in held]


def _prompt_key(s: TextSample):
    return s.prompt if not s.messages else tuple((m["role"], m["content"]) for m in s.messages)


# ----------------------------------------------------------------------------------------- rendering


def render_sample(s: TextSample, tokenizer, cfg: SFTConfig) -> tuple[str, str]:
    """(prompt text, target text) of a sample, as the model sees them."""
    prefill = cfg.prefill if s.kind == "reasoning" else ""
    if s.messages:
        if getattr(tokenizer, "chat_template", None) is None:
            raise AhaError(f"{cfg.input}: 'messages' samples need a model with a chat template ({cfg.model} has none)")
        prompt = tokenizer.apply_chat_template(list(s.messages), tokenize=False, add_generation_prompt=True) + prefill
    else:
        prompt = render_prompt(s.prompt, tokenizer, cfg.template, cfg.system_prompt, cfg.few_shot, prefill)
    return prompt, render_completion_target(strip_prefill(s.completion, prefill), tokenizer)


def tokenize(s: TextSample, tokenizer, cfg: SFTConfig) -> TokenSample:
    prompt, target = render_sample(s, tokenizer, cfg)
    return TokenSample(tuple(encode_prompt(prompt, tokenizer)), tuple(tokenizer(target, add_special_tokens=False)["input_ids"]))


def load_texts(cfg: SFTConfig) -> tuple[list[TextSample], list[TextSample]]:
    """(train, held_out) text samples: read, split by prompt, mixed with the non-reasoning file. Needs no
    model, so bad data fails before one is loaded."""
    check(cfg)
    train, held = split_held_out(read_samples(cfg.input), cfg.eval_size, cfg.seed)
    general = read_samples(cfg.mix.file, "general", "mix.file") if cfg.mix.ratio > 0 else []
    return mix_samples(train, general, cfg.mix.ratio, cfg.seed), held


def prepare(cfg: SFTConfig, tokenizer, texts: tuple[list[TextSample], list[TextSample]] | None = None,
            ) -> tuple[list[TokenSample], list[TokenSample], dict]:
    """(train, held_out, data report): tokenised samples, over-long ones dropped and counted."""
    train, held = texts or load_texts(cfg)
    tok_train = [tokenize(s, tokenizer, cfg) for s in train]
    tok_held = [tokenize(s, tokenizer, cfg) for s in held]
    fits = lambda xs: [x for x in xs if len(x) <= cfg.max_length]  # noqa: E731
    report = {"input": cfg.input, "train": len(tok_train), "held_out": len(tok_held),
              "general": sum(s.kind != "reasoning" for s in train),
              "dropped_too_long": len(tok_train) - len(fits(tok_train)) + len(tok_held) - len(fits(tok_held))}
    tok_train, tok_held = fits(tok_train), fits(tok_held)
    if not tok_train:
        raise AhaError(f"{cfg.input}: every training sample is longer than max_length={cfg.max_length} tokens")
    return tok_train, tok_held, report


def run(cfg: SFTConfig, model=None, tokenizer=None) -> Path:
    """Fine-tune and return the run folder (its newest checkpoint is the fine-tuned model)."""
    import json

    import torch

    texts = load_texts(cfg)  # bad data fails before the model is loaded
    if model is None:
        model, tokenizer = load_model(resolve_run(cfg.model), dtype="float32")
    train, held, report = prepare(cfg, tokenizer, texts)
    atomic_write_text(Path(cfg.out_dir) / "data.json", json.dumps(report, indent=2))
    torch.manual_seed(cfg.seed)
    return SFTTrainer(cfg, train, held, model, tokenizer).run()
