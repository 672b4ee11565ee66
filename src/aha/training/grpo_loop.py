"""`aha train`: GRPO with rule rewards on a causal LM (R1-Zero when started from a base model).

One step, top to bottom (`GRPOTrainer.step`): sample G completions per prompt (rollout/hf.py),
score them with the reward registry (rewards/), normalise rewards within each group into advantages
and minimise the clipped surrogate + k3 KL (grpo.py) over micro-batches, then one AdamW update per
inner iteration. Departures from the paper, all settings: Dr.GRPO and DAPO variants; dynamic
sampling; masking of truncated completions; bf16 autocast with fp32 master weights on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from aha import dist, runtime
from aha.config import check, save_config
from aha.data.example import Example
from aha.data.tasks import load_task
from aha.data.templates import encode_prompt, render_prompt, with_prefill
from aha.errors import AhaError
from aha.grpo import group_advantages, grpo_loss
from aha.io import atomic_write_jsonl
from aha.models import load_model, resolve_dtype
from aha.rewards import RewardSet
from aha.rewards.selftest import selftest
from aha.rollout import make_engine
from aha.rollout.base import Completion, SamplingConfig, shared_prefix_len
from aha.runtime import adamw, applied
from aha.training import checkpoint as ckpt
from aha.training import lora
from aha.training.batch import (
    InputEmbeddings,
    PackedGroups,
    SharedPrefix,
    checkpointing_wanted,
    collate,
    collate_groups,
    completion_logprobs,
    enable_gradient_checkpointing,
    logprob_chunk,
    packed_groups_logprobs,
    sliding_window,
)
from aha.training.config import TrainConfig
from aha.training.loop import Checkpointed, HeldInterrupt, LoopSettings, PromptSampler, lr_schedule, run_loop
from aha.training.metrics import component_means, kind_metrics, reflection_count
from aha.training.shared_casts import SharedCasts, linear_twins


def load_examples(cfg: TrainConfig, split: str) -> list[Example]:
    """The problems of `task` followed by those of each of `extra_tasks` (each row keeps its own kind).
    `data.eval_file` replaces the held-out split of `task` only; extra tasks hold out their own last rows."""
    out = list(load_task(cfg.task, cfg.data, split))
    for task in cfg.extra_tasks:
        out += load_task(task, dataclasses.replace(cfg.data, eval_file=""), split)
    return out


@dataclass
class Rollouts:
    examples: list[Example]  # (B*G,) each example repeated G times
    completions: list[Completion]  # (B*G,)
    rewards: torch.Tensor  # (B*G,)
    parts: dict[str, list[float]]
    advantages: torch.Tensor  # (B*G,)


@dataclass
class StepPlan:
    """How a step's rollouts go through the model: micro-batches and the loss normalisers."""

    batches: list  # (micro-batch number, index tensor into the step's sequences, batch on the device)
    passes: list  # `batches`, plus dummy passes up to the most any process has (FSDP's collectives pair up)
    prefix_ids: list[int]  # the prompt tokens every group begins with, run once per pass ([]: off)
    num_sequences: float  # over every process
    num_tokens: float  # completion tokens that count, over every process


class GRPOTrainer(Checkpointed):
    def __init__(self, cfg: TrainConfig, model=None, tokenizer=None, engine=None):
        check(cfg)
        self.cfg = cfg
        # Under torchrun: this process's place among the others and its device (dist.py); else one process.
        self.dist, self.device = dist.setup(cfg.device)
        if self.dist.on and cfg.grpo.prompts_per_step < self.dist.world:
            raise AhaError(f"grpo.prompts_per_step: {cfg.grpo.prompts_per_step} prompt groups cannot be shared by "
                           f"{self.dist.world} processes (a group never splits across processes)")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.run_dir = Path(cfg.out_dir)
        # Data and rewards first: a typo in either fails in a second, before a model is loaded.
        self.examples = load_examples(cfg, "train")
        self.eval_examples = load_examples(cfg, "eval")[:cfg.log.eval_problems] if cfg.data.eval_size > 0 else []
        self.by_kind = len({e.kind for e in self.examples + self.eval_examples}) > 1
        """Several routing kinds (R1's all-scenario RL): metrics are also logged per kind."""
        self.prompt_ids = {}
        self.rewards = RewardSet(cfg.rewards_config)
        if model is None:
            model, tokenizer = load_model(cfg.model, dtype="float32", device=self.device)
        self.tok = tokenizer
        model.train()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.autocast = resolve_dtype(cfg.dtype, self.device) == "bfloat16"
        self.lora = cfg.lora.rank > 0
        self.uses_ref = cfg.grpo.kl_coef > 0  # the reference model exists only when the KL term does
        self.ref = None
        if self.uses_ref and not self.lora:  # with LoRA the reference is the base model, adapters off
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
            if self.autocast:
                self.ref.to(torch.bfloat16)
        self.rollout_model = model
        if engine is None:
            # rollouts from a plain copy, re-synced after every update (with several processes the policy is
            # sharded: the copy holds the whole model, gathered once a step, and decodes without collectives)
            if self.autocast or self.lora or self.dist.on:
                self.rollout_model = copy.deepcopy(model).eval().requires_grad_(False)
                if self.autocast:
                    self.rollout_model.to(torch.bfloat16)
            # a bf16 copy samples from other numbers than the trainer's: it records its log-probs for the
            # importance correction (vLLM always does)
            extra = ({"compact_finished": cfg.rollout.compact_finished, "fast_decode": cfg.rollout.fast_decode,
                      "record_logprobs": self.autocast and cfg.grpo.tis_cap > 0} if cfg.rollout.engine == "hf"
                     else {"url": cfg.rollout.server_url} if cfg.rollout.engine == "vllm_server" else {})
            engine = make_engine(cfg.rollout.engine, self.rollout_model, tokenizer, max_batch=cfg.rollout.max_batch,
                                 **extra)
        self.engine = engine
        runtime.settle_malloc(sum(p.numel() for p in model.parameters()))  # malloc=auto: by the model's size
        self.policy = lora.apply(model, cfg.lora) if self.lora else model
        if self.rollout_model is model and self.lora:  # a given engine: nothing to merge into, it has its own
            self.rollout_model = self.policy
        if self.lora and not self.dist.on:  # frozen weights in bf16 under autocast, adapters fused (both exact)
            lora.prepare(self.policy, self.autocast, cfg.lora.fused)
        if self.dist.on:  # FSDP2 after the copies: the rollout model stays whole (it decodes without collectives)
            dist.shard(self.policy, bf16=self.autocast)
            if self.ref is not None:  # the frozen reference is sharded too, in its own dtype (bf16 with autocast)
                dist.shard(self.ref, bf16=False)
        self.trainable = [p for p in self.policy.parameters() if p.requires_grad]
        # the training passes' linear layers compute with the rollout copy's bf16 weights (the master weights
        # rounded, as autocast would cast them): one process, full fine-tuning, a bf16 copy of aha's own
        self.casts = (SharedCasts(linear_twins(self.policy, self.rollout_model))
                      if cfg.optim.shared_casts and self.autocast and not self.lora and not self.dist.on
                      and self.rollout_model is not model else None)
        o = cfg.optim  # a micro-batch's positions at most: its completions at full length, up to a packed row's
        longest = o.micro_batch_size * cfg.rollout.max_new_tokens
        self.checkpointing = checkpointing_wanted(o.gradient_checkpointing, self.policy, self.device, self.dist.world,
                                                  min(longest, o.pack_tokens) if o.share_prompt else longest)
        if self.checkpointing:  # after the copies: the reference and rollout models do not train
            enable_gradient_checkpointing(self.policy)
        self.sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                       top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens,
                                       stop=tuple(cfg.rollout.stop))
        self.sampler = PromptSampler(len(self.examples), cfg.seed)
        o = cfg.optim
        self.opt = adamw(self.trainable, fused=o.fused, lr=o.lr, betas=(o.beta1, o.beta2),
                         weight_decay=o.weight_decay)
        self.sched = lr_schedule(self.opt, cfg.steps * cfg.grpo.mu, o.warmup_steps, o.schedule)
        self.step_no = 0
        if self.dist.on:  # after every random initialisation (LoRA's): each process samples its own random numbers
            torch.manual_seed(cfg.seed + self.dist.rank)

    # ----------------------------------------------------------------------------------------- data
    def encode(self, ex: Example) -> list[int]:
        if ex.id not in self.prompt_ids or not ex.id:
            text = render_prompt(ex.prompt, self.tok, self.cfg.template, self.cfg.system_prompt,
                                 self.cfg.few_shot, self.cfg.prefill)
            ids = encode_prompt(text, self.tok)
            if not ex.id:
                return ids
            self.prompt_ids[ex.id] = ids
        return self.prompt_ids[ex.id]

    def rollout(self, examples: list[Example]) -> Rollouts:
        G = self.cfg.grpo.group_size
        groups = self.engine.generate([self.encode(e) for e in examples], G, self.sampling)
        completions = with_prefill([c for g in groups for c in g], self.cfg.prefill)  # (B*G,)
        repeated = [e for e in examples for _ in range(G)]
        totals, parts = self.rewards.score(completions, repeated, step=self.step_no)
        rewards = torch.tensor(totals, dtype=torch.float32)
        adv = group_advantages(rewards, G, scale_by_std=self.cfg.grpo.scale_by_std)
        return Rollouts(repeated, completions, rewards, parts, adv)

    def collect(self) -> tuple[Rollouts, dict]:
        """B groups of G; with dynamic sampling, zero-variance groups are replaced by fresh prompts (capped).

        Several processes: every process draws the same B prompts and samples its share of the groups
        (round robin, a group never splits); which groups are informative is summed over the processes, so
        every process keeps the groups one process would keep, and they agree on the number of rounds.
        `self.group_keys` holds each local group's place in the step's whole list of groups."""
        B = self.cfg.grpo.prompts_per_step
        ro = self.rollout(dist.my_share([self.examples[i] for i in self.sampler.take(B)]))
        info = {"groups_sampled": B}
        self.group_keys = dist.my_share(list(range(B)))
        if not self.cfg.grpo.dynamic_sampling:
            return ro, info
        keep, flags = [ro], [self._informative(ro, B)]
        rounds = 0
        while rounds < self.cfg.grpo.max_resample_rounds:
            kept = sum(sum(f) for f in flags)
            if kept >= B:
                break
            rounds += 1
            keep.append(self.rollout(dist.my_share([self.examples[i] for i in self.sampler.take(B)])))
            flags.append(self._informative(keep[-1], B))
            info["groups_sampled"] += B
        merged = self._merge_informative(keep, flags, B)
        info["resample_rounds"] = rounds
        info["groups_informative"] = sum(sum(f) for f in flags)
        # the step's other metrics describe the kept groups, which dynamic sampling chose for having both right
        # and wrong answers; the accuracy of everything sampled is the one that follows the policy
        acc = [v for r in keep for v, e in zip(r.parts.get("accuracy", []), r.examples)
               if "accuracy" in self.rewards.weights_for(e.kind)]
        total, n = dist.all_reduce_sum([float(sum(acc)), float(len(acc))])
        if n:
            info["sampled_accuracy"] = total / n
        return merged, info

    def _informative(self, r: Rollouts, B: int) -> list[bool]:
        """For each of the step's B groups (all processes'), whether its rewards differ."""
        local = (r.rewards.view(-1, self.cfg.grpo.group_size).std(1) > 0).tolist() if len(r.rewards) else []
        flags = [0.0] * B
        for key, f in zip(dist.my_share(list(range(B))), local):
            flags[key] = float(f)
        return [f > 0 for f in dist.all_reduce_sum(flags)]

    def _merge_informative(self, parts: list[Rollouts], flags: list[list[bool]], B: int) -> Rollouts:
        """The first B informative groups over all rounds (this process's among them), in round order."""
        G = self.cfg.grpo.group_size
        chosen = [(rnd, g) for rnd, f in enumerate(flags) for g in range(B) if f[g]][:B]
        if not chosen:  # nothing informative at all: train on the first batch (zero advantages, no update)
            return parts[0]
        d = self.dist
        sel, self.group_keys = [], []  # (rollouts, local group index), informative groups first
        for key, (rnd, g) in enumerate(chosen):
            if g % d.world == d.rank:
                sel.append((parts[rnd], g // d.world))
                self.group_keys.append(key)
        idx = lambda g: range(g * G, (g + 1) * G)  # noqa: E731
        ex = [r.examples[i] for r, g in sel for i in idx(g)]
        comp = [r.completions[i] for r, g in sel for i in idx(g)]
        rew = torch.cat([r.rewards[g * G:(g + 1) * G] for r, g in sel] or [torch.zeros(0)])
        adv = torch.cat([r.advantages[g * G:(g + 1) * G] for r, g in sel] or [torch.zeros(0)])
        names = parts[0].parts.keys()
        pts = {k: [r.parts[k][i] for r, g in sel for i in idx(g)] for k in names}
        return Rollouts(ex, comp, rew, pts, adv)

    # ----------------------------------------------------------------------------------------- step
    def forward_logprobs(self, model, batch, with_entropy=False, prefix: SharedPrefix | None = None,
                         embed: InputEmbeddings | None = None):
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.autocast), \
                self.casts_for(model):
            chunk = logprob_chunk(self.cfg.optim.logprob_chunk, model)
            if isinstance(batch, PackedGroups):
                return packed_groups_logprobs(model, batch, with_entropy, prefix, embed, chunk,
                                              self.cfg.optim.group_attention)
            return completion_logprobs(model, batch, with_entropy, embed, chunk)

    @contextlib.contextmanager
    def reference(self):
        """The KL reference model: the frozen copy, or with LoRA the policy with its adapters switched off."""
        if self.ref is not None:
            yield self.ref
        else:
            with lora.reference(self.policy):
                yield self.policy

    def sync_rollout_model(self) -> None:
        """The rollout copy (bf16, or the merged LoRA model) takes the policy's current weights."""
        if self.rollout_model is self.policy:
            return
        with torch.no_grad():
            if self.lora:
                lora.merge_into(self.rollout_model, self.policy)
            else:  # sharded weights are gathered whole (once a step, not per decode step)
                for dst, src in zip(self.rollout_model.parameters(), self.policy.parameters()):
                    dst.copy_(dist.full(src))

    def shared_prefix(self, model, ids: list[int], embed: InputEmbeddings | None = None) -> SharedPrefix | None:
        """The step's shared prompt prefix run through `model` (with a graph when gradients are enabled)."""
        if not ids:
            return None
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.autocast), \
                self.casts_for(model):
            return SharedPrefix(model, ids, self.device, embed)

    def casts_for(self, model):
        """The policy's forward passes take their bf16 linear weights from the rollout copy (`SharedCasts`),
        where the trainer shares them; any other model's run as they are."""
        return self.casts if self.casts is not None and model is self.policy else contextlib.nullcontext()

    def micro_batches(self, completions: list[Completion]) -> list[list[int]]:
        """Indices of each micro-batch. Shared prompts: the completions of one prompt (a group), in chunks of
        at most micro_batch_size completions and pack_tokens tokens (prompt included), each packed in one row;
        with merge_groups, consecutive whole chunks share a row while both limits hold.
        Otherwise: all rows sorted by length, so that a micro-batch wastes little on padding. The loss uses
        whole-step normalisers, so the grouping does not change the gradient."""
        mbs, budget = self.cfg.optim.micro_batch_size, self.cfg.optim.pack_tokens
        n = len(completions)
        if not self.cfg.optim.share_prompt:
            order = sorted(range(n), key=lambda j: len(completions[j].prompt_ids) + len(completions[j].completion_ids))
            return [order[i:i + mbs] for i in range(0, n, mbs)]
        groups: dict[tuple, list[int]] = {}
        for j, c in enumerate(completions):
            groups.setdefault(c.prompt_ids, []).append(j)
        chunks = []  # (indices, tokens): one prompt's completions
        for prompt, idx in groups.items():
            chunk, size = [], len(prompt)
            for j in idx:
                k = len(completions[j].completion_ids)
                if chunk and (len(chunk) == mbs or size + k > budget):
                    chunks.append((chunk, size))
                    chunk, size = [], len(prompt)
                chunk.append(j)
                size += k
            chunks.append((chunk, size))
        if not self.cfg.optim.merge_groups:
            return [c for c, _ in chunks]
        out, sizes = [], []  # whole groups share a row while both limits hold
        for chunk, size in chunks:
            if out and len(out[-1]) + len(chunk) <= mbs and sizes[-1] + size <= budget:
                out[-1] = out[-1] + chunk
                sizes[-1] += size
            else:
                out.append(chunk)
                sizes.append(size)
        return out

    def step(self) -> dict:
        """One GRPO step: rollouts -> rewards -> advantages -> mu x (micro-batched loss, AdamW update)."""
        t0 = time.perf_counter()
        ro, info = self.collect()  # rollouts, their rewards and group-normalised advantages
        runtime.release()  # the decode's memory, before training's differently sized tensors take its place
        t_gen = time.perf_counter() - t0  # includes scoring; scoring time is measured below
        plan = self.plan(ro)
        informative = self._any(bool((ro.advantages != 0).any()))
        t_lp = time.perf_counter()
        old, ref = self.fixed_logprobs(plan, informative)
        stats = defaultdict(float, {"loss": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0})
        stats["time/logprob_s"] = time.perf_counter() - t_lp  # old-policy and reference passes (no gradient)
        # Tokens the training forward passes see: real (prompt + completion) and with padding.
        stats["train_tokens"] = float(sum(b.tokens for _, _, b in plan.batches) + len(plan.prefix_ids))
        stats["train_tokens_padded"] = float(sum(b.padded_tokens for _, _, b in plan.batches) + len(plan.prefix_ids))
        t1 = time.perf_counter()
        # All groups flat and no KL term: the gradient is exactly zero, so skip the forward/backward passes
        # (common in early R1-Zero steps) but still take the optimizer step, as the full computation would.
        skip = not informative and not self.uses_ref
        stats["skipped_backward"] = float(skip)
        with HeldInterrupt() as held:  # from the first update on, Ctrl-C waits for the step's end
            for k in range(self.cfg.grpo.mu):
                self.update(ro, plan, old, ref, skip, stats, held)
                if self.casts is not None and k + 1 < self.cfg.grpo.mu:  # the next update's casts: these weights
                    self.sync_rollout_model()
            self.sync_rollout_model()
            self.engine.sync_weights(self.rollout_model)
            t_train = time.perf_counter() - t1
            self.step_no += 1
        if self.dist.on:
            ro, stats = self._gathered(ro), self._summed(stats)
        return self._step_metrics(ro, info, stats, t_gen, t_train)

    def plan(self, ro: Rollouts) -> StepPlan:
        """The step's micro-batches on the device (packed groups when share_prompt), the prompt prefix every
        group shares (run once per pass when share_prefix), and the whole step's loss normalisers."""
        cfg, g = self.cfg, self.cfg.grpo
        n = dist.all_reduce_sum([len(ro.completions)])[0] if self.dist.on else len(ro.completions)  # sequences
        mask_keep = [0.0 if (g.mask_truncated and not c.finished) else 1.0 for c in ro.completions]
        groups = self.micro_batches(ro.completions)
        k = (shared_prefix_len([c.prompt_ids for c in ro.completions]) if cfg.optim.share_prompt
             and cfg.optim.share_prefix and len(groups) > 1 and not sliding_window(self.policy)
             and not self.checkpointing and not self.dist.on else 0)
        batches = []  # (micro-batch number, index tensor into the step's sequences, batch)
        for i, idx in enumerate(groups):
            rows = [ro.completions[j] for j in idx]
            b = (collate_groups(rows, self.pad_id, k) if cfg.optim.share_prompt else collate(rows, self.pad_id))
            b = b.to(self.device)
            b.completion_mask *= torch.tensor([mask_keep[j] for j in idx], device=self.device).unsqueeze(-1)
            batches.append((i, torch.tensor(idx), b))
        num_tokens = float(sum(b.completion_mask.sum().item() for _, _, b in batches))
        if self.dist.on:  # whole-step normalisers: the update equals one process's on the same rollouts
            num_tokens = dist.all_reduce_sum([num_tokens])[0]
        passes = self._padded(batches)  # as many passes in every process (FSDP's collectives pair up)
        return StepPlan(batches, passes, list(ro.completions[0].prompt_ids[:k]), n, num_tokens)

    @torch.no_grad()
    def fixed_logprobs(self, plan: StepPlan, informative: bool) -> tuple[dict, dict]:
        """Per micro-batch, the log-probs the update holds fixed: the old policy's (only when mu > 1: with mu=1
        the ratio is 1) and the KL reference's."""
        old, ref = {}, {}
        if self.cfg.grpo.mu > 1 and (informative or self.uses_ref):
            old_prefix = self.shared_prefix(self.policy, plan.prefix_ids)
            for i, _, b in plan.passes:
                lp = self.forward_logprobs(self.policy, b, prefix=old_prefix)[0]
                if i is not None:
                    old[i] = lp
        if self.uses_ref:
            with self.reference() as ref_model:
                ref_prefix = self.shared_prefix(ref_model, plan.prefix_ids)
                # sharded (the frozen copy, or with LoRA the policy): as many passes in every process
                for i, _, b in plan.passes:
                    lp = self.forward_logprobs(ref_model, b, prefix=ref_prefix)[0]
                    if i is not None:
                        ref[i] = lp
        return old, ref

    def update(self, ro: Rollouts, plan: StepPlan, old: dict, ref: dict, skip: bool, stats: dict, held) -> None:
        """One of the step's mu updates: the loss micro-batch by micro-batch, gradients accumulated, clipped,
        AdamW. `stats` gathers the update's share of the step's metrics."""
        cfg, g = self.cfg, self.cfg.grpo
        self.opt.zero_grad(set_to_none=True)
        if skip:
            for p in self.trainable:
                p.grad = torch.zeros_like(p)
        # With LoRA the embeddings are frozen: no embedding gradient to send at all.
        embed = (InputEmbeddings(self.policy) if cfg.optim.embedding_grad_once and not skip and not self.lora
                 and not self.dist.on else None)
        prefix = self.shared_prefix(self.policy, plan.prefix_ids, embed) if not skip else None
        for i, idx, b in (plan.passes if not skip else []):
            if i is None:  # a process with fewer micro-batches than another: a pass that adds nothing
                (self.forward_logprobs(self.policy, b)[0].sum() * 0.0).backward()
                continue
            adv = ro.advantages[idx].to(self.device)
            logp, ent = self.forward_logprobs(self.policy, b, with_entropy=True, prefix=prefix, embed=embed)
            terms = grpo_loss(logp, old.get(i), adv, b.completion_mask, ref.get(i), g.kl_coef, g.eps_low,
                              g.eps_high, g.loss_agg, num_sequences=plan.num_sequences, num_tokens=plan.num_tokens,
                              max_tokens=cfg.rollout.max_new_tokens, tis_cap=g.tis_cap,
                              sampler_logprobs=sampler_logprobs(ro.completions, idx, logp))
            if not torch.isfinite(terms.loss):
                raise FloatingPointError(f"step {self.step_no + 1}: loss is {terms.loss.item()}")
            terms.loss.backward()
            w = b.completion_mask.sum().item() / max(plan.num_tokens, 1.0)
            stats["loss"] += terms.loss.item() / g.mu
            stats["kl"] += terms.kl * w / g.mu
            stats["clip_low"] += terms.clip_low * w / g.mu
            stats["clip_high"] += terms.clip_high * w / g.mu
            stats["tis_mean"] += terms.tis_mean * w / g.mu
            stats["tis_capped"] += terms.tis_capped * w / g.mu
            stats["entropy"] += float((ent * b.completion_mask).sum() / max(plan.num_tokens, 1.0)) / g.mu
            del terms, logp, ent
            runtime.release()  # this micro-batch's activations, before the next one's of another size
        if prefix is not None:
            prefix.backward()  # the prefix's share of the gradient, gathered over all micro-batches
        if embed is not None:
            embed.backward()  # the embedding layer's share, after the prefix's (it has embeddings too)
        gn = dist.clip_grad_norm(self.trainable, cfg.optim.max_grad_norm or float("inf"))
        if not torch.isfinite(gn):
            raise FloatingPointError(f"step {self.step_no + 1}: gradient norm is {gn.item()}")
        stats["grad_norm"] += float(gn) / g.mu
        stats["lr"] = self.sched.get_last_lr()[0]
        held.hold()
        self.opt.step()
        self.sched.step()

    # ----------------------------------------------------------------------------------------- processes
    def _any(self, flag: bool) -> bool:
        """Whether `flag` holds in any process (the flag itself in a single process)."""
        return dist.all_reduce_sum([float(flag)])[0] > 0 if self.dist.on else flag

    def _padded(self, batches: list) -> list:
        """`batches`, followed, when another process has more micro-batches, by dummy passes `(None, None,
        one-token batch)` up to its number: FSDP gathers and reduces the weights pass by pass, so every process
        must run as many passes. A dummy pass's loss is multiplied by zero."""
        if not self.dist.on:
            return batches
        most = int(dist.all_reduce_max(float(len(batches))))
        if most == len(batches):
            return batches
        one = [Completion(text="", completion_ids=(self.pad_id,), prompt_ids=(self.pad_id,))]
        dummy = collate_groups(one, self.pad_id) if self.cfg.optim.share_prompt else collate(one, self.pad_id)
        return batches + [(None, None, dummy.to(self.device))] * (most - len(batches))

    def _summed(self, stats: dict) -> dict:
        """The step's loss statistics summed over the processes (each process's share is already weighted by
        the whole step's normalisers); gradient norm, learning rate and timings are the same, or rank 0's."""
        names = sorted(set().union(*dist.all_gather(sorted(stats))))
        additive = [k for k in names if k not in ("grad_norm", "lr", "skipped_backward") and not k.startswith("time/")]
        out = dict(stats)
        out.update(zip(additive, dist.all_reduce_sum([float(stats.get(k, 0.0)) for k in additive])))
        return out

    def _gathered(self, ro: Rollouts) -> Rollouts:
        """The step's rollouts from every process, in the order one process would hold them (for the metrics
        and the rollout dump)."""
        G = self.cfg.grpo.group_size
        shares = dist.all_gather((self.group_keys, ro.examples, ro.completions, ro.rewards.tolist(), ro.parts,
                                  ro.advantages.tolist()))
        names = list(dict.fromkeys(k for share in shares for k in share[4]))
        groups = []  # (key, examples, completions, rewards, advantages, parts) of each group
        for keys, ex, comp, rew, parts, adv in shares:
            for j, key in enumerate(keys):
                rows = slice(j * G, (j + 1) * G)
                groups.append((key, ex[rows], comp[rows], rew[rows], adv[rows],
                               {k: parts[k][rows] if k in parts else [0.0] * G for k in names}))
        groups.sort(key=lambda t: t[0])
        return Rollouts([e for grp in groups for e in grp[1]], [c for grp in groups for c in grp[2]],
                        torch.tensor([r for grp in groups for r in grp[3]], dtype=torch.float32),
                        {k: [v for grp in groups for v in grp[5][k]] for k in names},
                        torch.tensor([a for grp in groups for a in grp[4]], dtype=torch.float32))

    def _step_metrics(self, ro: Rollouts, info: dict, stats: dict, t_gen: float, t_train: float) -> dict:
        lengths = [len(c.completion_ids) for c in ro.completions]
        ntok = sum(lengths)
        row_weights = [self.rewards.weights_for(e.kind) for e in ro.examples]
        m = {f"reward/{k}": v for k, v in component_means(ro.parts, row_weights).items()}
        m["reward"] = float(ro.rewards.mean())
        m["reward_std"] = float(ro.rewards.std()) if len(ro.rewards) > 1 else 0.0
        m["accuracy"] = m.get("reward/accuracy", 0.0)
        fmt_name = next((n for n in ("format", "format_r1", "format_partial") if ro.parts.get(n)), None)
        fmt = [v for v, w in zip(ro.parts[fmt_name], row_weights) if fmt_name in w] if fmt_name else []
        m["format_rate"] = sum(1.0 for v in fmt if v >= 1.0) / len(fmt) if fmt else 0.0
        if self.by_kind:
            m.update(kind_metrics([e.kind for e in ro.examples], ro.rewards.tolist(), ro.parts, row_weights, lengths))
        m["length_mean"] = ntok / len(lengths)
        m["length_max"] = max(lengths)
        m["truncated"] = sum(not c.finished for c in ro.completions) / len(ro.completions)
        m["reflection_per_1k_tokens"] = 1000.0 * sum(reflection_count(c.text) for c in ro.completions) / max(ntok, 1)
        m.update({k: float(v) for k, v in stats.items()})
        m.update(info)
        score_s = self.rewards.last_seconds if hasattr(self.rewards, "last_seconds") else 0.0
        m["time/generate_s"] = t_gen - score_s
        m["time/score_s"] = score_s
        m["time/train_s"] = t_train
        m["tokens_per_s"] = ntok / max(t_gen + t_train, 1e-9)
        self._last_rollouts = ro
        return m

    # ----------------------------------------------------------------------------------------- run
    def dump_rollouts(self, step: int) -> None:
        ro = self._last_rollouts
        rows = [{"step": step, "kind": e.kind, "prompt": e.prompt, "answer": e.answer, "completion": c.text,
                 "reward": float(ro.rewards[i]), **{k: v[i] for k, v in ro.parts.items()},
                 "advantage": float(ro.advantages[i]), "finished": c.finished, "tokens": len(c.completion_ids)}
                for i, (e, c) in enumerate(zip(ro.examples, ro.completions))]
        atomic_write_jsonl(self.run_dir / "rollouts" / f"step_{step:06d}.jsonl", rows)

    def after_restore(self) -> None:
        self.sync_rollout_model()
        self.engine.sync_weights(self.rollout_model)

    def evaluate(self) -> dict:
        """Held-out greedy accuracy and format rate (the R1-Zero accuracy curve); per kind when routed."""
        if not self.eval_examples:
            return {}
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=self.sampling.max_new_tokens, stop=self.sampling.stop)
        mine = dist.my_share(self.eval_examples)  # several processes: each its share, then gathered
        groups = self.engine.generate([self.encode(e) for e in mine], 1, greedy) if mine else []
        comps = with_prefill([g[0] for g in groups], self.cfg.prefill)
        totals, parts = self.rewards.score(comps, mine, step=self.step_no) if mine else ([], {})
        if self.dist.on:
            shares = dist.all_gather((comps, totals, parts))
            names = list(dict.fromkeys(k for share in shares for k in share[2]))
            comps, totals = dist.interleave([s[0] for s in shares]), dist.interleave([s[1] for s in shares])
            parts = {k: dist.interleave([s[2].get(k, [0.0] * len(s[1])) for s in shares]) for k in names}
        lengths = [len(c.completion_ids) for c in comps]
        row_weights = [self.rewards.weights_for(e.kind) for e in self.eval_examples]
        means = component_means(parts, row_weights)
        out = {"eval/accuracy": 0.0}
        for name in ("accuracy", "accuracy_lenient", "format", "format_partial"):
            if name in means:
                out[f"eval/{name}"] = means[name]
        out["eval/length_mean"] = sum(lengths) / len(lengths)
        if self.by_kind:
            kinds = [e.kind for e in self.eval_examples]
            out.update({f"eval/{k}": v for k, v in kind_metrics(kinds, totals, parts, row_weights, lengths).items()})
        return out

    def data_state(self) -> dict:
        return self.sampler.state()

    def load_data_state(self, state: dict) -> None:
        self.sampler.load(state)

    def run(self) -> Path:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.selftest and not (cfg.resume and ckpt.latest_checkpoint(self.run_dir)):
            selftest(self.examples[:200], self.rewards)
        if self.dist.main:
            save_config(cfg, self.run_dir / "config.yaml", runtime=applied())
        settings = LoopSettings(cfg.steps, cfg.resume, cfg.log.eval_every, cfg.log.checkpoint_every, cfg.log.progress,
                                cfg.log.tensorboard, "aha train", f"aha train {self.run_dir}/config.yaml resume=true",
                                max_minutes=cfg.max_minutes)
        return run_loop(self, settings, after_step=self._after_step, postfix=_postfix)

    def _after_step(self, step: int, metrics: dict) -> None:
        every = self.cfg.log.rollouts_every
        if every and self.dist.main and (step % every == 0 or step == 1):
            self.dump_rollouts(step)


def sampler_logprobs(completions: list[Completion], idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """(N, C) log-probs the engine sampled micro-batch `idx`'s tokens with (zero-padded like `like`), or None
    when the engine did not record them (it sampled from the trainer's own weights)."""
    rows = [completions[j].logprobs for j in idx.tolist()]
    if any(r is None for r in rows):
        return None
    out = torch.zeros_like(like, dtype=torch.float32)
    for r, lp in enumerate(rows):
        out[r, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return out


def _postfix(metrics: dict) -> dict:
    return {"reward": f"{metrics['reward']:.3f}", "acc": f"{metrics['accuracy']:.2f}",
            "len": f"{metrics['length_mean']:.0f}"}


def train(cfg: TrainConfig) -> Path:
    return GRPOTrainer(cfg).run()
