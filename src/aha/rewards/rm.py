"""Reward-model rewards: a sequence-classification model's scalar score of one segment of a completion.

R1's all-scenario RL (§2.3.4) judges helpfulness on the final summary only, so the reward does not
interfere with the reasoning, and harmlessness on the whole response, reasoning included. A reward
model is named in `rewards.reward_models` with the segment it reads and weighted like any other reward:

    rewards:
      by_kind: {general: {helpful: 1.0, harmless: 0.5}}
      reward_models:
        helpful: {model: runs/rm, segment: summary}
        harmless: {model: runs/rm_safety, segment: full}

Any HF sequence-classification folder works (an `aha rm` output, or a run folder: its newest checkpoint).
Unlike the rule rewards, a reward model is scored in batches (one forward pass per `batch_size`
completions) in this process, on its own device and dtype; it is loaded on first use and shared by
every reward that names the same folder, device and dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from aha.config import Invalid, PositiveInt, check
from aha.data.example import Example
from aha.errors import AhaError
from aha.models import load_error, load_errors, resolve, torch_dtype
from aha.rewards.base import RewardSpec
from aha.rewards.extract import split_think
from aha.rollout.base import Completion
from aha.runtime import pick_device

SEGMENTS = ("summary", "reasoning", "full")


@dataclass
class RewardModelConfig:
    """One reward model used as a reward."""

    model: str = ""
    """A sequence-classification model: an HF folder, an `aha rm` output folder (its newest checkpoint)."""
    segment: Literal["summary", "reasoning", "full"] = "summary"
    """What the model reads: summary (the text after </think>), reasoning (inside <think>), or full."""
    device: str = "auto"
    """cpu, cuda, cuda:1 ... or auto (cuda when available)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and compute dtype of the reward model."""
    batch_size: PositiveInt = 16
    """Completions per forward pass."""
    max_length: PositiveInt = 1024
    """Longest input in tokens; longer inputs keep their end (the score is read at the last token)."""
    label: int = 0
    """Which output logit is the score (models with several labels)."""
    squash: Literal["sigmoid", "none"] = "sigmoid"
    """sigmoid maps the score into (0, 1), comparable with rule rewards; none keeps the raw logit."""

    def check(self) -> None:
        if not self.model:
            raise Invalid("model", "no reward model given (an HF folder or an `aha rm` output)")


def completion_segment(text: str, segment: str) -> str:
    """The part of a completion a reward model reads: `summary` (after the first </think>; the whole text
    when there is no think block), `reasoning` (inside <think>), or `full`."""
    if segment == "full":
        return text
    reasoning, summary = split_think(text)
    if segment == "reasoning":
        return reasoning
    if segment == "summary":
        return summary
    raise AhaError(f"reward model segment must be one of {', '.join(SEGMENTS)}, got {segment!r}")


def rm_input(tokenizer, prompt: str, response: str) -> str:
    """The text a reward model scores: the model's chat template with one user and one assistant turn,
    or `prompt\\n\\nresponse` for a tokenizer without one. `aha rm` trains on exactly this form."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"{prompt}\n\n{response}"


def rm_batch(tokenizer, texts: list[str], max_length: int):
    """A padded batch (input_ids, attention_mask) of reward-model inputs, the same in `aha rm` training and in
    scoring: each text as `encode_prompt` gives it (behind the BOS a Gemma-like tokenizer adds by default), cut
    from the left to `max_length` tokens keeping that BOS (the score is read at the last token)."""
    from aha.data.templates import encode_prompt

    rows = []
    for text in texts:
        ids = encode_prompt(text, tokenizer)
        if len(ids) > max_length:
            head = ids[:1] if ids[0] == tokenizer.bos_token_id else []
            ids = head + ids[len(ids) - (max_length - len(head)):]
        rows.append(ids)
    return tokenizer.pad({"input_ids": rows}, return_tensors="pt")


def score_texts(model, tokenizer, texts: list[str], batch_size: int, max_length: int, label: int = 0) -> list[float]:
    """The model's raw score (logit `label` at the last non-pad token) of each text, in batches."""
    import torch

    device = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = rm_batch(tokenizer, texts[start:start + batch_size], max_length).to(device)
            logits = model(**enc).logits  # (b, num_labels)
            out += logits[:, label].float().tolist()
    return out


@lru_cache(maxsize=4)
def load_reward_model(model: str, device: str, dtype: str):
    """(model, tokenizer) of a sequence-classification folder, in eval mode, loaded once per process."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = resolve(model)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    try:
        rm = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch_dtype(dtype))
    except load_errors() as e:
        raise load_error(model, folder, e, "cannot load as a sequence-classification model") from None
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = tok.pad_token_id
    return rm.to(pick_device(device)).eval().requires_grad_(False), tok


class RewardModelReward:
    """A reward model scoring one segment of each completion; `__call__` scores a whole batch."""

    def __init__(self, cfg: RewardModelConfig):
        self.cfg = cfg

    def __call__(self, completions: list[Completion], examples: list[Example], step: int = 0) -> list[float]:
        if not completions:
            return []
        model, tok = load_reward_model(self.cfg.model, self.cfg.device, self.cfg.dtype)
        texts = [rm_input(tok, ex.prompt, completion_segment(c.text, self.cfg.segment))
                 for c, ex in zip(completions, examples, strict=True)]
        raw = score_texts(model, tok, texts, self.cfg.batch_size, self.cfg.max_length, self.cfg.label)
        if self.cfg.squash == "sigmoid":
            return [1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, r)))) for r in raw]
        return raw

    def score_one(self, completion: Completion, example: Example, step: int = 0) -> float:
        return self([completion], [example], step)[0]


def build_reward_model_spec(name: str, cfg: RewardModelConfig, where: str) -> RewardSpec:
    check(cfg, where + ".")
    scorer = RewardModelReward(cfg)
    low, high = (0.0, 1.0) if cfg.squash == "sigmoid" else (-math.inf, math.inf)
    return RewardSpec(name, scorer.score_one, low, high, batch_fn=scorer)
