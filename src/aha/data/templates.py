"""Prompt templates: the R1-Zero template (paper, Table 1) for base models; the model's chat template
with an R1 system prompt for instruct models; the R1 output form (reasoning, then a summary) for the
later stages. The template is a setting (`template=r1_zero|chat|r1|plain|auto`).

Two optional aids for small models that never write tags on their own (SmolLM2-135M: 0 of 128
samples with the R1 system prompt alone):

- `few_shot`: one worked demonstration (`DEMO`) given as an earlier user/assistant turn before the
  question. Small instruct models imitate an earlier assistant turn far more than an instruction.
- `prefill`: text that starts the assistant's turn (typically `<think>`), as TinyZero and
  nano-aha-moment do. The prefill belongs to the prompt tokens (never trained on), but rewards,
  logs and evaluation see `prefill + completion` (`with_prefill`), so the format reward still checks
  one complete `<think>` block. An SFT target must then not repeat it (`strip_prefill`): a prefilled tag
  that the target repeats is the classic way to silently ruin SFT of reasoning models.

Measured on SmolLM2-135M-Instruct, two-term chain_sum, T=1, 12 prompts x 8 samples: R1 system prompt
alone: answer tags 0%, strict accuracy 0%; with the demo turn: tags 11%; demo + `<think>` prefill:
tags 29%, strict accuracy 9%.
"""

from __future__ import annotations

from aha.errors import AhaError, closest

R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)
"""R1-Zero's template, verbatim from the paper; {prompt} is replaced by the question."""

R1_SYSTEM = (
    "Think step by step inside <think> </think> tags, then give only the final answer inside "
    "<answer> </answer> tags."
)
"""System prompt for instruct models in R1-Zero-style RL: short, because every prompt token is paid for in
every rollout and every training forward pass."""

R1_SUMMARY_SYSTEM = (
    "You are a helpful assistant. Think through the problem inside <think> </think> tags, then write a short, "
    "readable summary of the solution, ending with the final answer inside <answer> </answer> tags."
)
"""The R1 output form for the later stages: |special_token|reasoning|special_token|summary."""

DEMO = ("What is 7 + 5?", "<think>7 + 5 = 12</think>\n<answer>12</answer>")
"""The worked demonstration of `few_shot`: short, so it costs few prompt tokens, and in the exact format."""

TEMPLATES = ("auto", "r1_zero", "chat", "r1", "plain")


def render_prompt(question: str, tokenizer, template: str = "auto", system_prompt: str = "",
                  few_shot: bool = False, prefill: str = "") -> str:
    """The text the model is conditioned on for `question`.

    auto: `chat` when the tokenizer has a chat template (instruct models), else `r1_zero`.
    few_shot: put the `DEMO` exchange before the question. prefill: start the assistant's turn with it.
    """
    return _render(question, tokenizer, template, system_prompt, few_shot) + prefill


def encode_prompt(text: str, tokenizer) -> list[int]:
    """Token ids of a rendered prompt: the text as written, behind the tokenizer's beginning-of-sequence token
    when the tokenizer puts one in front by default (Gemma, Llama) and the text does not start with it already
    (a chat template that writes it). Prompts are tokenized without special tokens so that a chat template's
    own is never doubled; a plain-text template (`r1_zero`) would then reach the model with no BOS at all, and
    Gemma-3 without its `<bos>` degenerates: 95 of 128 samples of the 270m base on GSM8K began
    "<think> <answer> <answer> <answer> ..." until cut at 512 tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos) and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]:
        ids = [bos, *ids]
    return ids


def with_prefill(completions: list, prefill: str) -> list:
    """Completions as the reader sees them: the prefilled text (part of the prompt) put back in front."""
    if not prefill:
        return completions
    import dataclasses

    return [dataclasses.replace(c, text=prefill + c.text) for c in completions]


def strip_prefill(target: str, prefill: str) -> str:
    """An SFT target for a prompt that ends with `prefill`: the target minus that prefix (never twice)."""
    if prefill and target.lstrip().startswith(prefill):
        return target.lstrip()[len(prefill):]
    return target


def _render(question: str, tokenizer, template: str, system_prompt: str, few_shot: bool) -> str:
    if template not in TEMPLATES:
        raise AhaError(f"template: unknown template '{template}'{closest(template, TEMPLATES)}; "
                       f"choose from {', '.join(TEMPLATES)}")
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "auto":
        template = "chat" if has_chat else "r1_zero"
    demo_q, demo_a = DEMO
    if template == "r1_zero":
        text = R1_ZERO.format(prompt=question.strip().rstrip("."))
        if few_shot:  # the demonstration as an earlier exchange of the same conversation
            text = text.replace("User: ", f"User: {demo_q.rstrip('?')}. Assistant: {demo_a}\nUser: ", 1)
        return text
    if template == "plain":
        return f"{demo_q}\n{demo_a}\n\n{question}" if few_shot else question
    system = system_prompt or (R1_SUMMARY_SYSTEM if template == "r1" else R1_SYSTEM)
    if not has_chat:
        demo = f"User: {demo_q}\nAssistant: {demo_a}\n" if few_shot else ""
        return f"{system}\n\n{demo}User: {question}\nAssistant:"
    messages = [{"role": "system", "content": system}]
    if few_shot:
        messages += [{"role": "user", "content": demo_q}, {"role": "assistant", "content": demo_a}]
    messages += [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_completion_target(completion: str, tokenizer) -> str:
    """SFT target text: the completion followed by the end-of-sequence token (once)."""
    eos = tokenizer.eos_token or ""
    return completion if not eos or completion.endswith(eos) else completion + eos
