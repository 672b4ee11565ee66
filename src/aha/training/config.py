"""The trainers' configs. `aha train` (TrainConfig): GRPO, rollout, optimiser and logging settings, with the
defaults of the README's main job (R1-Zero-style RL of SmolLM2-135M-Instruct on two-term chain_sum, on a CPU).
`aha sft` (SFTConfig): its data, template, optimiser and logging settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from aha.config import (
    Fraction,
    FractionBelowOne,
    Invalid,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Probability,
)
from aha.data.tasks import TaskConfig
from aha.rewards.config import RewardsConfig

MOVED_TO_RUNTIME = {k: f"a process setting now: runtime.{k} (a recipe's top-level `runtime:` section, or "
                        f"runtime.{k}=... on the command line)" for k in ("threads", "malloc")}


@dataclass
class GRPOConfig:
    group_size: PositiveInt = 8
    """Completions sampled per prompt (G). The one name for this everywhere."""
    prompts_per_step: PositiveInt = 8
    """Prompts per optimisation step (B); a step trains on B*G completions."""
    kl_coef: NonNegFloat = 0.0
    """beta: weight of the k3 KL to a frozen reference; 0 skips loading the reference model."""
    eps_low: Fraction = 0.2
    """Lower clip of the ratio (1 - eps_low)."""
    eps_high: NonNegFloat = 0.2
    """Upper clip of the ratio (1 + eps_high); DAPO's clip-higher uses 0.28."""
    scale_by_std: bool = True
    """Divide advantages by the group std (GRPO); false for Dr.GRPO."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "seq_mean_token_mean"
    """Loss aggregation: GRPO seq_mean_token_mean, DAPO token_mean, Dr.GRPO seq_mean_token_sum_norm."""
    mu: PositiveInt = 1
    """Inner optimisation iterations over the same rollouts (old log-probs are stored when mu > 1)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and draw more prompts until the batch is full."""
    max_resample_rounds: NonNegInt = 3
    """Cap on extra prompt draws per step for dynamic sampling."""
    mask_truncated: bool = False
    """Exclude completions cut off at max_new_tokens from the loss (DAPO's overlong filtering)."""
    tis_cap: NonNegFloat = 2.0
    """Truncated importance sampling between sampler and trainer: each token's policy term is weighted by
    min(pi_trainer / pi_sampler, tis_cap) when the rollouts come from another copy of the weights (vLLM, or
    the bf16 rollout copy of dtype=bfloat16), whose log-probs the engine then records. 0: off."""


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm", "vllm_server"] = "hf"
    """Rollout engine: hf (transformers, CPU or GPU), vllm (GPU, beside the trainer) or vllm_server (an `aha
    vllm-serve` process on GPUs of its own, at server_url; weights pushed after every update)."""
    server_url: str = "http://localhost:8000"
    """vllm_server: where `aha vllm-serve` answers."""
    temperature: NonNegFloat = 1.0
    """Sampling temperature for training rollouts."""
    top_p: Probability = 1.0
    top_k: NonNegInt = 0
    max_new_tokens: PositiveInt = 128
    """Completion budget in tokens; longer completions are truncated (finished=false)."""
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    """Completions also end when their text contains one of these."""
    max_batch: PositiveInt = 64
    """Most sequences decoded at once."""
    compact_finished: Fraction = 0.0
    """hf engine: finished completions leave the decode batch (which copies the KV cache) once this share of
    the batch has finished; 0 drops them at once."""
    fast_decode: bool = True
    """hf engine: decode Llama-family models (Llama, SmolLM2, Qwen2) with aha's lean decode step
    (aha.rollout.fast_decode: the same logits, a static KV cache, no per-token transformers overhead); other
    models always decode through transformers."""


@dataclass
class OptimConfig:
    lr: PositiveFloat = 2e-5
    """Peak AdamW learning rate."""
    weight_decay: NonNegFloat = 0.0
    beta1: FractionBelowOne = 0.9
    beta2: FractionBelowOne = 0.99
    warmup_steps: NonNegInt = 3
    """Linear warm-up (optimizer steps)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """LR after warm-up."""
    max_grad_norm: NonNegFloat = 1.0
    """Gradient clipping by global norm (0 disables)."""
    micro_batch_size: PositiveInt = 32
    """Sequences per forward/backward; gradients accumulate over the step's B*G sequences. With packed groups
    (share_prompt) 32 puts four groups of 8 in a row: training -7% and reference -6% against two on the CPU
    benchmark (attention runs one prompt's run at a time, so longer rows cost no more attention per token);
    all eight in one row was 30% slower."""
    fused: bool = True
    """AdamW with torch's fused kernel (CPU and CUDA): faster and less memory than the multi-tensor default."""
    share_prompt: bool = True
    """Pack each micro-batch's completions end to end in ONE row, each prompt once before its completions,
    with a block attention mask: no padding, and a group's prompt runs once (exact, gradients included;
    aha.training.batch.PackedGroups). False: one padded row per completion, each with its own prompt, rows sorted
    by length."""
    merge_groups: bool = True
    """With share_prompt: several groups share one packed row while micro_batch_size and pack_tokens allow
    (fewer, larger matmuls and gradient accumulations: training -8% on the CPU benchmark at two groups a row,
    when attention still ran over the whole row's block mask)."""
    share_prefix: bool = True
    """With share_prompt: the prompt tokens all of a step's groups begin with (system prompt, worked example)
    run once per pass, and every packed row attends to their keys and values (exact, gradients included;
    aha.training.batch.SharedPrefix)."""
    embedding_grad_once: bool = True
    """Training passes look their input embeddings up as leaf tensors and send the gathered gradient through
    the embedding layer once per step (sparse into the tied LM head's gradient), instead of a dense
    vocabulary-sized embedding gradient per micro-batch (exact; aha.training.batch.InputEmbeddings)."""
    shared_casts: bool = True
    """GRPO under bf16 autocast in one process without LoRA: the training passes' linear layers compute with the
    rollout copy's bf16 weights, which are the master weights rounded, instead of casting the fp32 weights
    afresh every micro-batch (the same forward numbers; no cast copies held during the pass; a weight used
    several times in a pass has its gradient summed in fp32; aha.training.shared_casts)."""
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute each decoder layer in the backward pass instead of keeping its activations (exact; one more
    forward pass of compute for activation memory of one layer instead of all). In GRPO it turns share_prefix
    off (a recomputed layer cannot re-read a cache it wrote to). auto: on when the training state (fp32 weights,
    gradients and AdamW moments of the trainable parameters) or the activations of the largest micro-batch the
    settings allow (micro_batch_size completions of max_new_tokens, at most pack_tokens; SFT: micro_batch_size
    rows of max_length) would fill over a quarter of the device's memory (aha.training.batch.AUTO_CHECKPOINT_SHARE):
    full fine-tuning of a 0.5B model on a 24 GB machine, and its LoRA training at R1 lengths (8 completions of
    512 tokens a micro-batch); not the 135M main job."""
    logprob_chunk: NonNegInt | None = None
    """The LM head runs this many positions at a time and again in the backward pass, so that a micro-batch's
    (positions x vocabulary) logits never exist at once (exact; aha.grpo.head_logprobs): for long completions,
    where they outgrow the layers' activations. 0: all positions at once (one head pass fewer). Unset: chunks
    of 2^27 / vocabulary positions (512 MB of fp32 scores: 883 positions for Qwen2.5's 151,936 entries, 2,730
    for SmolLM2's 49,152), which only rows longer than that are cut into."""
    group_attention: Literal["auto", "spans", "blocks"] = "auto"
    """With share_prompt, how a packed row's attention runs (all exact): "spans", one prompt or completion at a
    time against the keys it may see; "blocks", each prompt's run at once under its block mask (computing and
    masking the pairs between a group's completions); "auto", spans when the row's prompts and completions
    average 64 tokens or more (aha.training.batch.SPAN_ATTENTION_MIN_TOKENS), else blocks."""
    pack_tokens: PositiveInt = 4096
    """Most tokens in one packed row (its prompt and completions); a longer group is split over rows, each
    with its prompt. Bounds the row's block attention mask (L x L) and the attention it computes and masks."""


@dataclass
class LoRAConfig:
    rank: NonNegInt = 0
    """Rank of the adapters (0: train every weight, no LoRA). With a rank, only the adapters train: the
    optimizer state and gradients shrink to theirs, and the KL reference needs no copy of the model."""
    alpha: PositiveFloat = 32.0
    """Scale numerator: the update is B @ A x alpha / rank."""
    dropout: FractionBelowOne = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt (peft's `target_modules`); "all-linear": every linear layer but the LM head."""
    fused: bool = True
    """Each adapted layer adds its update inside one matmul (the scale folded into B, `torch.addmm` onto the base
    output) instead of peft's separate scale and add over the output (one process, no dropout). The same
    function up to rounding; a decoder layer's adapted linears 22-26% faster, the training passes at R1
    lengths 5% (bench/grpo_vs_trl/README.md)."""

    def check(self) -> None:
        if self.rank and not self.target_modules:
            raise Invalid("target_modules", "empty, so nothing would train")


@dataclass
class LogConfig:
    rollouts_every: NonNegInt = 5
    """Dump rollouts/step_N.jsonl every N steps (0: never)."""
    checkpoint_every: PositiveInt = 20
    """Save a checkpoint every N steps (and at the end)."""
    keep_checkpoints: PositiveInt = 2
    """Keep the newest K checkpoints."""
    eval_every: NonNegInt = 10
    """Held-out greedy accuracy every N steps (0: only before and after training when eval_size > 0)."""
    eval_problems: NonNegInt | None = None
    """How many of the held-out problems that greedy evaluation uses (unset: all of them; 0: none, e.g. when a
    benchmark evaluates the held-out split by itself). The held-out split stays out of training either way."""
    tensorboard: bool = True
    progress: bool = True
    """Show a progress bar (step, reward, accuracy, length, ETA)."""


@dataclass
class TrainConfig:
    RENAMED: ClassVar[dict[str, str]] = MOVED_TO_RUNTIME
    model: str = "smollm2-135m-instruct"
    """Registry name, .gguf file or HF folder."""
    task: str = "chain_sum"
    """reasoning-gym name, JSONL path or hf:NAME (see `aha tasks`)."""
    extra_tasks: list[str] = field(default_factory=list)
    """More tasks whose problems join `task`'s in training and held-out evaluation, each row keeping its
    routing kind (`rewards.by_kind`): e.g. a JSONL of general prompts {prompt, kind: general} beside a
    reasoning task, for R1's all-scenario RL. Loaded with the same `data` settings."""
    data: TaskConfig = field(default_factory=lambda: TaskConfig(
        size=4000, eval_size=100, args={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}))
    """Task size, seeds and difficulty."""
    template: Literal["auto", "r1_zero", "chat", "r1", "plain"] = "auto"
    """Prompt template: r1_zero for base models, chat (+ R1 system prompt) for instruct models; auto picks."""
    system_prompt: str = ""
    """Overrides the R1 system prompt of the chat template."""
    few_shot: bool = True
    """Show one worked example in the answer format before each question (see aha.data.templates)."""
    prefill: str = "<think>"
    """Text that starts every completion ("" for none); rewards and logs see prefill + completion."""
    out_dir: str = "runs/r1_zero_smollm2"
    """Run folder: config, metrics, rollouts, checkpoints, TensorBoard events."""
    steps: NonNegInt = 40
    """Optimisation steps (each on prompts_per_step * group_size completions)."""
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute dtype. bfloat16: fp32 master weights with bf16 autocast for training and a bf16 copy for rollouts.
    auto: bfloat16 on GPUs and on CPUs with bf16 matrix units (AMX, AVX512-BF16), else float32 (bf16 is ~4x
    slower than fp32 on CPUs without them)."""
    device: str = "auto"
    """cpu, cuda or auto."""
    resume: bool = False
    """Continue from the newest checkpoint in out_dir."""
    max_minutes: NonNegFloat = 0.0
    """Stop after the step that passes this many minutes of this run (evaluated and checkpointed; `resume=true`
    continues it): a training budget in wall time. 0: no limit, `steps` only."""
    selftest: bool = True
    """Run the verifier self-test on the task's gold answers before step 1."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    """Rewards and weights (default: `aha.rewards.config.DEFAULT_WEIGHTS`)."""
    log: LogConfig = field(default_factory=LogConfig)

    def check(self) -> None:
        # The overlong penalty belongs at the sampling cut: derived from it unless set (`rewards_config`), and
        # refused when set elsewhere while weighted (-1 for every answer past 256 tokens while sampling 4,096
        # would stop the length growth R1-Zero is about; past the cut it would never fire).
        ol, cut = self.rewards.overlong, self.rollout.max_new_tokens
        weighted = any(w.get("overlong") for w in (self.rewards.weights, *self.rewards.by_kind.values()))
        if ol.max_tokens and ol.max_tokens != cut and weighted:
            raise Invalid("rewards.overlong.max_tokens", f"{ol.max_tokens} is not rollout.max_new_tokens ({cut}); "
                          "leave it unset to follow the sampling cut (a length target is the budget reward's job)")

    @property
    def rewards_config(self) -> RewardsConfig:
        """`rewards` with the overlong penalty's lengths filled in for this run's sampling cut."""
        return dataclasses.replace(self.rewards, overlong=self.rewards.overlong.resolved(self.rollout.max_new_tokens))


# -- aha sft ---------------------------------------------------------------------------------------
@dataclass
class MixConfig:
    """Non-reasoning data mixed into the training samples (R1 §2.3.3: ~200k non-reasoning samples next to
    ~600k reasoning ones)."""

    file: str = ""
    """JSONL of non-reasoning samples ({prompt, completion} or {messages}): answers with no chain of thought."""
    ratio: FractionBelowOne = 0.0
    """Share of the training samples drawn from `file` (0.25: one sample in four); 0 mixes nothing. The
    file is sampled without replacement, and repeated only when it is too small for the ratio."""


@dataclass
class SFTLogConfig:
    checkpoint_every: PositiveInt = 50
    """Save a checkpoint every N steps (and at the end)."""
    keep_checkpoints: PositiveInt = 2
    """Keep the newest K checkpoints."""
    eval_every: NonNegInt = 20
    """Validation loss on the held-out slice every N steps (and before and after training)."""
    tensorboard: bool = True
    progress: bool = True
    """Show a progress bar (step, loss, ETA)."""


@dataclass
class SFTConfig:
    RENAMED: ClassVar[dict[str, str]] = MOVED_TO_RUNTIME
    model: str = "smollm2-135m-instruct"
    """Registry name, .gguf file or HF folder to fine-tune."""
    input: str = ""
    """JSONL of samples: {prompt, completion} (prompt: the bare question) or {messages: [{role, content}, ...]}
    ending with the assistant's message; optional `kind: general` marks a non-reasoning sample."""
    eval_size: NonNegInt = 16
    """Held-out samples for the validation loss (whole prompts, drawn with `seed`); 0: none."""
    mix: MixConfig = field(default_factory=MixConfig)
    """Non-reasoning samples mixed in at a ratio."""
    template: Literal["auto", "r1_zero", "chat", "r1", "plain"] = "auto"
    """Prompt template of `prompt` rows, as in `aha train` (see aha.data.templates)."""
    system_prompt: str = ""
    """Overrides the template's system prompt."""
    few_shot: bool = False
    """Show one worked example before each question (as in `aha train`)."""
    prefill: str = "<think>"
    """Text that starts the assistant's turn of reasoning samples; removed from the front of targets that
    begin with it, so it is never duplicated. Use the value RL and evaluation use."""
    max_length: PositiveInt = 1024
    """Tokens per packed row; samples longer than this are dropped (and counted)."""
    packing: bool = True
    """Pack several samples per row (no attention across them); false: one sample per row, rows of similar
    length batched together."""
    samples_per_step: PositiveInt = 16
    """Samples per optimizer step; the loss is the mean over their completion tokens."""
    epochs: PositiveFloat = 2.0
    """Passes over the training samples (used when steps is 0)."""
    steps: NonNegInt = 0
    """Optimizer steps; 0: epochs * samples / samples_per_step."""
    out_dir: str = "runs/sft"
    """Run folder: config, metrics, TensorBoard events, checkpoints (HF folders)."""
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute dtype. bfloat16: fp32 master weights with bf16 autocast; auto: bfloat16 where the hardware
    computes it fast (see aha.models.fast_bf16), else float32."""
    device: str = "auto"
    """cpu, cuda or auto."""
    resume: bool = False
    """Continue from the newest checkpoint in out_dir."""
    max_minutes: NonNegFloat = 0.0
    """Stop after the step that passes this many minutes of this run (validated and checkpointed; `resume=true`
    continues it): a wall-time budget, as in `aha train`. 0: no limit, `steps` or `epochs` only."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=5, micro_batch_size=2))
    """AdamW settings; micro_batch_size counts packed rows per forward pass (2 rows of 1,024 tokens: as fast
    as 4 on the CPU benchmark, peak memory 6.0 instead of 8.9 GiB for SmolLM2-135M; bench/README.md)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (rank 0: train every weight), as in `aha train`."""
    log: SFTLogConfig = field(default_factory=SFTLogConfig)

    def check(self) -> None:
        if self.max_length < 2:
            raise Invalid("max_length", f"must be >= 2 (a prompt token and a target), got {self.max_length}")
