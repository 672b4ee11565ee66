"""The SFT loop of `aha sft`: next-token loss on completion tokens only, over packed rows.

Packing: samples go into rows of at most `max_length` tokens (first-fit decreasing), `position_ids`
restart at 0 at each sample, and no token attends across samples. With SDPA attention (the default on CPU)
the rows of a micro-batch run as ONE row, no padding at all: attention is computed one sample at a time
(each sample a causal sequence of its own; `aha.training.batch._block_attention`) and the LM head runs only on
the positions that have a target (`logits_to_keep`), their log-probs, loss and backward from one softmax
(`aha.grpo.selected_logprobs`). Other attention kernels get the Hugging Face "packed" convention
(DataCollatorWithFlattening): rows with no attention mask, from which transformers builds a block-diagonal
causal mask or variable-length flash-attention calls. The loss of a step is the mean over the step's
completion tokens (summed over micro-batches, divided once), so the micro-batch size does not change the
gradient. Checkpoints, metrics, resume and bf16 (fp32 master weights, bf16 autocast) work as in `aha train`.

Under torchrun (`aha.dist`) each process trains on its share of the step's samples (round robin) with the
policy sharded by FSDP2; the token count that divides the loss is summed over the processes, so the update
equals one process's on the same samples.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from aha import dist, runtime
from aha.config import save_config
from aha.errors import AhaError
from aha.models import resolve_dtype
from aha.runtime import adamw, applied
from aha.training import lora
from aha.training.batch import (
    InputEmbeddings,
    blocks_forward,
    checkpointing_wanted,
    enable_gradient_checkpointing,
    input_kwargs,
    kept_logprobs,
    logprob_chunk,
)
from aha.training.config import SFTConfig
from aha.training.loop import Checkpointed, HeldInterrupt, LoopSettings, PromptSampler, lr_schedule, run_loop
from aha.transformers_internals import attention_name

IGNORE = -100
"""Target id of positions that are not trained on (prompt tokens, padding, the last token of a sample)."""


@dataclass(frozen=True)
class TokenSample:
    """One SFT sample as token ids: the rendered prompt (never trained on) and the target completion."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (R, T) R packed rows
    position_ids: torch.Tensor  # (R, T) restart at 0 at each sample (and at the padding tail)
    targets: torch.Tensor  # (R, T) the token position t predicts, IGNORE where nothing is trained

    def to(self, device) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.targets.to(device))

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def pack(lengths: list[int], max_length: int, packing: bool = True) -> list[list[int]]:
    """Sample indices grouped into rows of at most `max_length` tokens, longest rows first.

    packing: first-fit decreasing (each sample, longest first, goes into the first row with room).
    Without packing each sample is its own row; sorting by length then makes the rows of one micro-batch
    similar in length (length bucketing). Samples longer than `max_length` must be removed before."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if not packing:
        return [[i] for i in order]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        if lengths[i] > max_length:
            raise ValueError(f"sample {i} has {lengths[i]} tokens > max_length {max_length}")
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_length - lengths[i])
    return rows


def sample_targets(sample: TokenSample) -> list[int]:
    """Per position of prompt+completion, the next token when it is a completion token, else IGNORE."""
    ids = sample.prompt_ids + sample.completion_ids
    first = len(sample.prompt_ids)  # index of the first completion token
    return [ids[t + 1] if t + 1 >= first else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def collate_packed(samples: list[TokenSample], rows: list[list[int]], pad_id: int) -> PackedBatch:
    """Rows of concatenated samples, right-padded to the longest row. The padding is its own segment
    (positions from 0, no targets), so it neither attends to nor is attended by a real sample."""
    width = max(sum(len(samples[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    tgt = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            s = samples[i]
            n = len(s)
            ids[r, at:at + n] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
            pos[r, at:at + n] = torch.arange(n)
            tgt[r, at:at + n] = torch.tensor(sample_targets(s), dtype=torch.long)
            at += n
        pos[r, at:] = torch.arange(width - at)
    return PackedBatch(ids, pos, tgt)


def sample_blocks(batch: PackedBatch) -> list[tuple[int, int]]:
    """[start, end) of each sample in a one-row batch (positions restart at 0 at each sample)."""
    starts = torch.nonzero(batch.position_ids[0] == 0).flatten().tolist()
    return list(zip(starts, [*starts[1:], batch.position_ids.shape[1]]))


def per_sample_attention(model) -> bool:
    """Whether a packed row can attend one sample at a time (`aha.training.batch._block_attention`): SDPA
    attention (flash-attention kernels on GPUs take packed rows as variable-length sequences themselves)."""
    return (attention_name(model) or "sdpa") == "sdpa"


def loss_sum(model, batch: PackedBatch, embed: InputEmbeddings | None = None, chunk: int = 0) -> torch.Tensor:
    """Summed negative log-likelihood of the target tokens of a packed batch (fp32 softmax).

    A one-row batch (`SFTTrainer` builds one per micro-batch) attends one sample at a time and runs the LM head
    on the target positions only: a prompt's positions get no logits, and no token's scores against other
    samples' keys are computed only to be masked. `embed`: the step's input embeddings (see InputEmbeddings);
    `chunk`: the LM head this many target positions at a time (`aha.training.batch.kept_logprobs`)."""
    inputs = input_kwargs(batch.input_ids, embed)
    if batch.input_ids.shape[0] == 1 and per_sample_attention(model):
        keep = torch.nonzero(batch.targets[0] != IGNORE).flatten()
        if not len(keep):
            return batch.input_ids.new_zeros((), dtype=torch.float32)
        rows = torch.arange(len(keep), device=keep.device)
        return -kept_logprobs(
            model, lambda: blocks_forward(model, sample_blocks(batch), **inputs, position_ids=batch.position_ids,
                                          use_cache=False, logits_to_keep=keep),
            rows, batch.targets[0, keep], chunk=chunk)[0].sum()
    logits = model(**inputs, position_ids=batch.position_ids, use_cache=False).logits  # (R, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE, reduction="sum")


class SFTTrainer(Checkpointed):
    """Trains `model` on tokenised samples; `run()` writes the run folder and returns it."""

    def __init__(self, cfg: SFTConfig, train: list[TokenSample], held_out: list[TokenSample], model, tokenizer):
        if not train:
            raise AhaError(f"{cfg.input}: no training samples left")
        self.cfg = cfg
        self.dist, self.device = dist.setup(cfg.device)
        if self.dist.on and cfg.samples_per_step < self.dist.world:
            raise AhaError(f"samples_per_step: {cfg.samples_per_step} samples cannot be shared by {self.dist.world} "
                           "processes")
        self.run_dir = Path(cfg.out_dir)
        self.train_samples, self.held_out = train, held_out
        self.tok = tokenizer
        self.lora = cfg.lora.rank > 0
        model = model.to(self.device)
        runtime.settle_malloc(sum(p.numel() for p in model.parameters()))  # malloc=auto: by the model's size
        self.policy = lora.apply(model, cfg.lora) if self.lora else model
        self.policy.train()
        self.checkpointing = checkpointing_wanted(cfg.optim.gradient_checkpointing, self.policy, self.device,
                                                  self.dist.world, cfg.optim.micro_batch_size * cfg.max_length)
        if self.checkpointing:
            enable_gradient_checkpointing(self.policy)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.autocast = resolve_dtype(cfg.dtype, self.device) == "bfloat16"
        if self.lora and not self.dist.on:  # frozen weights in bf16 under autocast, adapters fused (both exact)
            lora.prepare(self.policy, self.autocast, cfg.lora.fused)
        if self.dist.on:
            dist.shard(self.policy, bf16=self.autocast)
        self.steps = cfg.steps or math.ceil(cfg.epochs * len(train) / cfg.samples_per_step)
        self.sampler = PromptSampler(len(train), cfg.seed)
        o = cfg.optim
        self.trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.opt = adamw(self.trainable, fused=o.fused, lr=o.lr, betas=(o.beta1, o.beta2),
                         weight_decay=o.weight_decay)
        self.sched = lr_schedule(self.opt, self.steps, o.warmup_steps, o.schedule)
        self.step_no = 0

    def _micro_batches(self, samples: list[TokenSample]) -> list[PackedBatch]:
        """micro_batch_size packed rows per forward pass; with SDPA attention they run as ONE row, no padding
        at all, each sample attending to itself only (see loss_sum)."""
        rows = pack([len(s) for s in samples], self.cfg.max_length, self.cfg.packing)
        mbs = self.cfg.optim.micro_batch_size
        parts = [rows[i:i + mbs] for i in range(0, len(rows), mbs)]
        if self.cfg.packing and per_sample_attention(self.policy):
            parts = [[[i for row in part for i in row]] for part in parts]
        return [collate_packed(samples, part, self.pad_id).to(self.device) for part in parts]

    def _loss_sum(self, batch: PackedBatch, embed: InputEmbeddings | None = None) -> torch.Tensor:
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.autocast):
            return loss_sum(self.policy, batch, embed, logprob_chunk(self.cfg.optim.logprob_chunk, self.policy))

    def step(self) -> dict:
        """One optimizer step on `samples_per_step` samples: packed micro-batches, token-mean loss."""
        t0 = time.perf_counter()
        samples = dist.my_share([self.train_samples[i] for i in self.sampler.take(self.cfg.samples_per_step)])
        batches = self._micro_batches(samples)
        n_targets = sum(b.num_targets for b in batches)
        if self.dist.on:  # the whole step's token count divides every process's loss
            n_targets = int(dist.all_reduce_sum([n_targets])[0])
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        # With LoRA the embeddings are frozen: no embedding gradient to send at all.
        embed = (InputEmbeddings(self.policy) if self.cfg.optim.embedding_grad_once and not self.lora
                 and not self.dist.on else None)
        for b in self._padded(batches):
            if b is None:  # fewer micro-batches here than in another process: a pass that adds nothing
                (self._loss_sum(self._dummy()) * 0.0).backward()
                continue
            if not b.num_targets and not self.dist.on:  # no completion token: no gradient (and no graph) to take
                continue
            loss = self._loss_sum(b, embed) / max(n_targets, 1)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {self.step_no + 1}: loss is {loss.item()}")
            loss.backward()
            total += loss.item()
            del loss
            runtime.release()  # this micro-batch's activations, before the next one's of another size
        if embed is not None:
            embed.backward()  # the embedding layer's gradient, once for all micro-batches
        gn = dist.clip_grad_norm(self.trainable, self.cfg.optim.max_grad_norm or float("inf"))
        if not torch.isfinite(gn):
            raise FloatingPointError(f"step {self.step_no + 1}: gradient norm is {gn.item()}")
        lr = self.sched.get_last_lr()[0]
        with HeldInterrupt() as held:  # the update and its step count are never split by Ctrl-C
            held.hold()
            self.opt.step()
            self.sched.step()
            self.step_no += 1
        seconds = time.perf_counter() - t0
        width = sum(b.input_ids.numel() for b in batches)
        real = sum(len(s) for s in samples)
        rows = sum(len(b.input_ids) for b in batches)
        if self.dist.on:
            total, width, real, rows = dist.all_reduce_sum([total, width, real, rows])
        return {"loss": total, "grad_norm": float(gn), "lr": lr, "tokens": n_targets, "rows": int(rows),
                "pack_efficiency": real / max(width, 1), "time/step_s": seconds, "tokens_per_s": real / max(seconds, 1e-9)}

    @torch.no_grad()
    def validate(self) -> dict:
        """Token-mean loss on the held-out samples (the validation loss)."""
        if not self.held_out:
            return {}
        was_training = self.policy.training
        self.policy.eval()
        total, n = 0.0, 0
        mine = dist.my_share(self.held_out)
        for b in self._padded(self._micro_batches(mine) if mine else []):
            if b is None:
                self._loss_sum(self._dummy())
                continue
            total += self._loss_sum(b).item()
            n += b.num_targets
        if self.dist.on:
            total, n = dist.all_reduce_sum([total, n])
        if was_training:
            self.policy.train()
        return {"eval/loss": total / max(n, 1)}

    # ----------------------------------------------------------------------------------------- processes
    def _padded(self, batches: list[PackedBatch]) -> list[PackedBatch | None]:
        """`batches`, then `None` up to the number of micro-batches of the busiest process: FSDP gathers and
        reduces the weights pass by pass, so every process must run as many passes (None: a dummy one)."""
        if not self.dist.on:
            return batches
        return batches + [None] * (int(dist.all_reduce_max(float(len(batches)))) - len(batches))

    def _dummy(self) -> PackedBatch:
        one = [TokenSample((self.pad_id,), (self.pad_id,))]
        return collate_packed(one, [[0]], self.pad_id).to(self.device)

    # ----------------------------------------------------------------------------------------- state
    def data_state(self) -> dict:
        return self.sampler.state()

    def load_data_state(self, state: dict) -> None:
        self.sampler.load(state)

    def evaluate(self) -> dict:
        return self.validate()

    # ----------------------------------------------------------------------------------------- run
    def run(self) -> Path:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if self.dist.main:
            save_config(cfg, self.run_dir / "config.yaml", runtime=applied())
        settings = LoopSettings(self.steps, cfg.resume, cfg.log.eval_every, cfg.log.checkpoint_every, cfg.log.progress,
                                cfg.log.tensorboard, "aha sft", f"aha sft {self.run_dir} resume=true",
                                max_minutes=cfg.max_minutes)
        return run_loop(self, settings, postfix=lambda m: {"loss": f"{m['loss']:.3f}"})
