"""Prompt templates: the R1-Zero template (paper, Table 1) for base models; the model's chat template
with an R1 system prompt for instruct models; the R1 output form (reasoning, then a summary) for the
later stages. The template is a setting (`template=r1_zero|chat|r1|plain|auto`).

No template prefills `<think>`: the completion itself must open the tag, so the format reward and
the SFT targets see exactly one `<think>` (a prefilled tag that the SFT target repeats is the
classic way to silently ruin SFT of reasoning models).
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

TEMPLATES = ("auto", "r1_zero", "chat", "r1", "plain")


def render_prompt(question: str, tokenizer, template: str = "auto", system_prompt: str = "") -> str:
    """The text the model is conditioned on for `question`.

    auto: `chat` when the tokenizer has a chat template (instruct models), else `r1_zero`.
    """
    if template not in TEMPLATES:
        raise AhaError(f"template: unknown template '{template}'{closest(template, TEMPLATES)}; "
                       f"choose from {', '.join(TEMPLATES)}")
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "auto":
        template = "chat" if has_chat else "r1_zero"
    if template == "r1_zero":
        return R1_ZERO.format(prompt=question.strip().rstrip("."))
    if template == "plain":
        return question
    system = system_prompt or (R1_SUMMARY_SYSTEM if template == "r1" else R1_SYSTEM)
    if not has_chat:
        return f"{system}\n\nUser: {question}\nAssistant:"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_completion_target(completion: str, tokenizer) -> str:
    """SFT target text: the completion followed by the end-of-sequence token (once)."""
    eos = tokenizer.eos_token or ""
    return completion if not eos or completion.endswith(eos) else completion + eos
