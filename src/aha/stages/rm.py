"""`aha rm`: train a reward model on preference pairs with the Bradley-Terry loss.

A causal LM's backbone gets a scalar head (transformers' sequence classification with one label, read
at the last non-pad token); each pair `{prompt, chosen, rejected}` trains r(chosen) above r(rejected)
with loss -log sigmoid(r_chosen - r_rejected) (InstructGPT; R1 §2.3.4 uses such models for
helpfulness and harmlessness). Held-out pairs (the last `eval_size` rows) give the pairwise accuracy.
The output folder is a run folder: `checkpoints/step_N` are `save_pretrained` folders that
`AutoModelForSequenceClassification` loads, so the folder itself serves as a reward model
(`rewards.reward_models.NAME.model`) or as an `aha eval`-style input; `metrics.jsonl` logs the curve.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from aha import dist
from aha.config import NonNegInt, PositiveFloat, PositiveInt, check, save_config
from aha.errors import AhaError
from aha.io import read_jsonl
from aha.models import load_error, load_errors, load_tokenizer, resolve, resolve_dtype
from aha.rewards.rm import rm_batch, rm_input
from aha.runtime import adamw, applied
from aha.training.batch import checkpointing_wanted, enable_gradient_checkpointing
from aha.training.config import OptimConfig, SFTLogConfig
from aha.training.loop import Checkpointed, HeldInterrupt, LoopSettings, lr_schedule, run_loop


@dataclass
class RMConfig:
    RENAMED: ClassVar[dict[str, str]] = {
        **{k: f"optim.{k}" for k in ("lr", "weight_decay", "warmup_steps", "max_grad_norm", "micro_batch_size",
                                     "gradient_checkpointing")},
        **{k: f"log.{k}" for k in ("eval_every", "checkpoint_every", "keep_checkpoints", "progress")}}
    model: str = "smollm2-135m-instruct"
    """The backbone: a causal LM (registry name, .gguf, HF folder or run folder); its head is replaced by
    a scalar one. A sequence-classification folder continues training with its own head."""
    data: str = "recipes/data/preferences_helpful.jsonl"
    """Preference pairs, JSONL rows {prompt, chosen, rejected} (strings; chosen is the better response)."""
    eval_size: NonNegInt = 8
    """Held-out pairs: the file's last rows (at most half of it); their pairwise accuracy is the metric."""
    out_dir: str = "runs/rm"
    """Run folder: config, metrics.jsonl, checkpoints (the newest is the reward model)."""
    epochs: PositiveFloat = 2
    """Passes over the training pairs."""
    batch_size: PositiveInt = 4
    """Pairs per optimizer step."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=0, micro_batch_size=4,
                                                                           beta2=0.999))
    """AdamW settings, as in `aha train` and `aha sft`: lr, weight_decay, warmup_steps, schedule, max_grad_norm
    (0 disables clipping); micro_batch_size pairs a forward and backward pass (gradients accumulate over the
    step's batch_size pairs: the same gradient as all at once); gradient_checkpointing recomputes each layer in
    the backward pass (exact): long pairs on GPUs."""
    max_length: PositiveInt = 512
    """Longest pair member in tokens; longer ones keep their end (the score is read at the last token)."""
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    """Compute dtype: bfloat16 autocasts over fp32 master weights, as in `aha train`."""
    device: str = "auto"
    """cpu, cuda or auto."""
    log: SFTLogConfig = field(default_factory=lambda: SFTLogConfig(checkpoint_every=50, keep_checkpoints=1,
                                                                     eval_every=0, tensorboard=False))
    """checkpoint_every, keep_checkpoints, eval_every (held-out accuracy every N steps; 0: before and after
    training only), progress, as in `aha sft`."""
    resume: bool = False
    """Continue from the newest checkpoint in out_dir."""


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


# ----------------------------------------------------------------------------------------- pure parts


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """(P,) scores of the preferred and the other response -> mean of -log sigmoid(r_chosen - r_rejected)."""
    import torch.nn.functional as F

    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def pairwise_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Share of pairs whose chosen response scores strictly higher (a tie counts as wrong)."""
    if not chosen:
        return 0.0
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen)


def pair_from_row(row: dict, where: str) -> Pair:
    fields = {}
    for name in ("prompt", "chosen", "rejected"):
        if name not in row:
            raise AhaError(f"{where}: missing field '{name}' (a preference pair is {{prompt, chosen, rejected}})")
        if not isinstance(row[name], str) or not row[name].strip():
            raise AhaError(f"{where}: field '{name}' must be a non-empty string")
        fields[name] = row[name]
    if fields["chosen"] == fields["rejected"]:
        raise AhaError(f"{where}: fields 'chosen' and 'rejected' are identical")
    return Pair(**fields)


def load_pairs(path: str) -> list[Pair]:
    pairs = [pair_from_row(row, f"{path}:{lineno}") for lineno, row in read_jsonl(path)]
    if not pairs:
        raise AhaError(f"{path}: no preference pairs")
    return pairs


def split_pairs(pairs: list[Pair], eval_size: int) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): the last min(eval_size, half) rows are held out."""
    n_eval = min(eval_size, len(pairs) // 2)
    return pairs[: len(pairs) - n_eval], pairs[len(pairs) - n_eval:]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of one pass; a function of (seed, epoch) only, so resume needs no sampler state."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def batch_at(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Indices of training step `step` (0-based): passes of ceil(n / batch_size) steps, reshuffled each pass."""
    per_epoch = math.ceil(n / batch_size)
    epoch, k = divmod(step, per_epoch)
    return epoch_order(n, seed, epoch)[k * batch_size:(k + 1) * batch_size]


# ----------------------------------------------------------------------------------------- model


def load_backbone(model: str, device: str):
    """(sequence-classification model with one label, tokenizer) from a causal LM or a reward model folder."""
    from transformers import AutoModelForSequenceClassification

    folder = resolve(model)
    tok = load_tokenizer(model)
    try:
        rm = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
    except load_errors() as e:
        raise load_error(model, folder, e, "cannot load as a reward model backbone") from None
    rm.config.pad_token_id = tok.pad_token_id  # batches > 1 need it to find each row's last token
    return rm.to(device), tok


class RMTrainer(Checkpointed):
    def __init__(self, cfg: RMConfig, model=None, tokenizer=None):
        import torch

        self.cfg = cfg
        self.train_pairs, self.eval_pairs = split_pairs(load_pairs(cfg.data), cfg.eval_size)
        # Under torchrun: each process scores its share of a step's pairs, the model sharded by FSDP2 (aha.dist).
        self.dist, self.device = dist.setup(cfg.device)
        torch.manual_seed(cfg.seed)
        if model is None:
            model, tokenizer = load_backbone(cfg.model, self.device)
        self.model, self.tok = model, tokenizer
        self.checkpointing = checkpointing_wanted(cfg.optim.gradient_checkpointing, self.model, self.device,
                                                  self.dist.world)
        if self.checkpointing:
            enable_gradient_checkpointing(self.model)
        if self.dist.on:
            dist.shard(self.model, bf16=resolve_dtype(cfg.dtype, self.device) == "bfloat16")
        self.run_dir = Path(cfg.out_dir)
        self.total_steps = max(1, round(cfg.epochs * math.ceil(len(self.train_pairs) / cfg.batch_size)))
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.opt = adamw(self.trainable, fused=o.fused, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        self.sched = lr_schedule(self.opt, self.total_steps, cfg.optim.warmup_steps, cfg.optim.schedule)
        self.step_no = 0

    def scores(self, pairs: list[Pair], which: str):
        """(P,) scores of each pair's `which` response (chosen or rejected), with gradients."""
        import torch

        texts = [rm_input(self.tok, p.prompt, getattr(p, which)) for p in pairs]
        enc = rm_batch(self.tok, texts, self.cfg.max_length).to(self.device)
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16,
                            enabled=resolve_dtype(self.cfg.dtype, self.device) == "bfloat16"):
            return self.model(**enc).logits[:, 0].float()

    def _parts(self, pairs: list[Pair], size: int) -> list[list[Pair] | None]:
        """`pairs` in chunks of `size`; with several processes, followed by None (a pass that adds nothing) up to
        the number of chunks of the busiest process: FSDP gathers and reduces the weights pass by pass."""
        parts = [pairs[i:i + size] for i in range(0, len(pairs), size)]
        if not self.dist.on:
            return parts
        return parts + [None] * (int(dist.all_reduce_max(float(len(parts)))) - len(parts))

    def step(self) -> dict:
        import torch

        self.model.train()
        everyone = [self.train_pairs[i] for i in batch_at(self.step_no, len(self.train_pairs), self.cfg.batch_size,
                                                          self.cfg.seed)]
        pairs = dist.my_share(everyone)  # several processes: each scores its share, the loss is the mean over all
        self.opt.zero_grad(set_to_none=True)
        mbs = self.cfg.optim.micro_batch_size
        c, r, loss = [], [], 0.0
        for part in self._parts(pairs, mbs):  # the mean over the step's pairs, a micro-batch's share at a time
            if part is None:  # as many passes as a real micro-batch: chosen, then rejected
                one = self.train_pairs[:1]
                ((self.scores(one, "chosen") + self.scores(one, "rejected")).sum() * 0.0).backward()
                continue
            chosen, rejected = self.scores(part, "chosen"), self.scores(part, "rejected")
            share = bradley_terry_loss(chosen, rejected) * (len(part) / len(everyone))
            if not torch.isfinite(share):
                raise FloatingPointError(f"step {self.step_no + 1}: loss is {share.item()}")
            share.backward()
            loss += share.item()
            c += chosen.detach().tolist()
            r += rejected.detach().tolist()
        gn = dist.clip_grad_norm(self.trainable, self.cfg.optim.max_grad_norm or float("inf"))
        if not torch.isfinite(gn):
            raise FloatingPointError(f"step {self.step_no + 1}: gradient norm is {gn.item()}")
        lr = self.sched.get_last_lr()[0]
        if self.dist.on:
            loss = dist.all_reduce_sum([loss])[0]
            c, r = self._gathered(c, r)

        with HeldInterrupt() as held:  # the update and its step count are never split by Ctrl-C
            held.hold()
            self.opt.step()
            self.sched.step()
            self.step_no += 1
        return {"loss": loss, "accuracy": pairwise_accuracy(c, r),
                "margin": sum(a - b for a, b in zip(c, r)) / len(c), "grad_norm": float(gn), "lr": lr}

    def evaluate(self) -> dict:
        """Held-out pairwise accuracy and mean margin r(chosen) - r(rejected)."""
        import torch

        if not self.eval_pairs:
            return {}
        self.model.eval()
        c, r = [], []
        with torch.no_grad():
            for chunk in self._parts(dist.my_share(self.eval_pairs), self.cfg.batch_size):
                if chunk is None:
                    self.scores(self.eval_pairs[:1], "chosen"), self.scores(self.eval_pairs[:1], "rejected")
                    continue
                c += self.scores(chunk, "chosen").tolist()
                r += self.scores(chunk, "rejected").tolist()
        if self.dist.on:
            c, r = self._gathered(c, r)
        return {"eval/pairwise_accuracy": pairwise_accuracy(c, r),
                "eval/margin": sum(a - b for a, b in zip(c, r)) / len(c)}

    def _gathered(self, c: list[float], r: list[float]) -> tuple[list[float], list[float]]:
        """Every process's scores of chosen and rejected responses, in the order of the whole list of pairs."""
        shares = dist.all_gather((c, r))
        return dist.interleave([s[0] for s in shares]), dist.interleave([s[1] for s in shares])

    def saved_model(self):
        return self.model

    def run(self) -> Path:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            save_config(cfg, self.run_dir / "config.yaml", runtime=applied())
        settings = LoopSettings(self.total_steps, cfg.resume, cfg.log.eval_every, cfg.log.checkpoint_every,
                                cfg.log.progress, cfg.log.tensorboard, "aha rm", f"aha rm {self.run_dir}/config.yaml resume=true")
        return run_loop(self, settings, postfix=lambda m: {"loss": f"{m['loss']:.3f}", "acc": f"{m['accuracy']:.2f}"})


def run(cfg: RMConfig) -> Path:
    """Train the reward model; returns the run folder (its newest checkpoint is the reward model)."""
    check(cfg)
    return RMTrainer(cfg).run()
