"""Shared fixtures: a tiny random Llama and a byte-level BPE tokenizer built in code (no network)."""

from __future__ import annotations

import json

import pytest
import torch

# Tiny models gain nothing from a second thread, and a single-threaded suite leaves the other core to
# whatever else runs (a benchmark, a second suite): threads of two processes fighting over two cores
# slow both by far more than half.
torch.set_num_threads(1)

CORPUS = [
    "<think> 12 + 7 = 19 </think> <answer> 19 </answer>",
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
    "State the final answer to the following arithmetic problem: 15 - 43 = -28",
    "wait, let me re-check the sum. However the answer is 42.",
    "You are a helpful assistant. Think step by step.",
] * 20


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|pad|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def build_bos_tokenizer():
    """The same tokenizer, but putting its BOS in front of every text by default, as Gemma's and Llama's do."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tk = build_tokenizer().backend_tokenizer
    bos = tk.token_to_id("<|im_start|>")
    tk.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|pad|>",
                                   bos_token="<|im_start|>")


def build_model(tok, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An HF folder with a tiny random Llama and its tokenizer."""
    tok = build_tokenizer()
    model = build_model(tok)
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture()
def aha_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AHA_HOME", str(tmp_path / "aha_home"))
    return tmp_path / "aha_home"


@pytest.fixture()
def task_file(tmp_path):
    """A JSONL task of 24 small sums (the `number` verifier); modules with other needs define their own."""
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b), "task": "number"} for a in range(6) for b in range(4)]
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
