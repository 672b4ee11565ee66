"""`aha coldstart` (rollouts rewritten into R1's form, few-shot sampling, a user file; then SFT) and
`aha distill` (teacher -> sample -> sft) into a student with a different tokenizer, on tiny random models."""

import json

import pytest
import torch

from aha.config import load_config
from aha.errors import AhaError
from aha.stages import coldstart, distill, sft
from aha.stages.coldstart import ColdStartConfig
from aha.stages.distill import DistillConfig
from aha.stages.sample import r1_form
from aha.training import checkpoint as ckpt

QUIET_SFT = ["sft.steps=2", "sft.samples_per_step=2", "sft.eval_size=0", "sft.dtype=float32", "sft.optim.lr=1e-3",
             "sft.optim.warmup_steps=0", "sft.log.progress=false", "sft.log.tensorboard=false"]
OPEN_FILTERS = ["filters.correct=false", "filters.format=none", "filters.min_language=0", "filters.truncated=false",
                "filters.max_repeats=0", "filters.near_duplicate=1.0"]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_to_r1_form_rewrites_reasoning_into_the_readable_form():
    text = coldstart.to_r1_form("<think> 12 + 7 = 19\n\n\n12 + 7 = 19\n  check: 19 - 7 = 12 </think> <answer> 19 </answer>")
    assert text == "<think>\n12 + 7 = 19\ncheck: 19 - 7 = 12\n</think>\ncheck: 19 - 7 = 12. The answer is 19.\n<answer>19</answer>"
    assert r1_form(text)
    assert "\n12 + 7 = 19, so the answer is 19.\n" in coldstart.to_r1_form("<think> 12 + 7 = 19 </think><answer>19</answer>")
    assert coldstart.to_r1_form("<think></think><answer>3</answer>") is None  # no reasoning
    assert coldstart.to_r1_form("<think> thinking </think>") is None  # no answer
    assert r1_form(coldstart.to_r1_form(" 1 + 2 = 3 </think><answer>3</answer>"))  # prefilled <think> dropped earlier


@pytest.fixture()
def r1_zero_run(tmp_path):
    rows = [
        {"prompt": "What is 1 + 2?", "answer": "3", "completion": "<think> 1 + 2 = 3 </think><answer>3</answer>", "accuracy": 1.0, "finished": True},
        {"prompt": "What is 1 + 2?", "answer": "3", "completion": "<think> 1 + 2 = 3 </think><answer>3</answer>", "accuracy": 1.0, "finished": True},
        {"prompt": "What is 2 + 2?", "answer": "4", "completion": "<think> 2 + 2 = 5 </think><answer>5</answer>", "accuracy": 0.0},
        {"prompt": "What is 3 + 2?", "answer": "5", "completion": "<answer>5</answer>", "accuracy": 1.0},
        {"prompt": "What is 4 + 2?", "answer": "6", "completion": "<think> 4 + 2 = 6, 六 </think><answer>6</answer>", "accuracy": 1.0},
        {"prompt": "What is 5 + 2?", "answer": "7", "completion": "<think> five plus two is seven </think><answer>7</answer>", "accuracy": 1.0},
    ]
    write_jsonl(tmp_path / "zero" / "rollouts" / "step_000001.jsonl", rows[:3])
    write_jsonl(tmp_path / "zero" / "rollouts" / "step_000005.jsonl", rows[3:])
    return str(tmp_path / "zero")


def test_coldstart_from_rollouts_then_sft(tiny_model_dir, r1_zero_run, tmp_path):
    cfg = load_config(ColdStartConfig, None, [f"run={r1_zero_run}", f"out_dir={tmp_path / 'cs'}", "train=true",
                                              f"sft.model={tiny_model_dir}", *QUIET_SFT])
    out = coldstart.run(cfg)
    rows = [json.loads(line) for line in (out / "coldstart.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == ["What is 1 + 2?", "What is 5 + 2?"]
    assert all(r1_form(r["completion"]) for r in rows)
    report = json.loads((out / "report.json").read_text())
    # wrong answer -> correct; no reasoning -> format; mixed language (六); the repeated rollout -> duplicate
    assert report["dropped"] == {"correct": 1, "format": 1, "language": 1, "duplicate": 1}
    assert report["candidates"] == 6 and report["kept"] == 2
    assert ckpt.latest_checkpoint(out / "sft")[0] == 2 and report["model"].endswith("step_000002")
    # the SFT data were the cold-start file, prompts rendered by the sft settings
    assert json.loads((out / "sft" / "data.json").read_text())["input"] == str(out / "coldstart.jsonl")


def test_coldstart_from_a_file_drops_what_is_not_in_form(tmp_path):
    good = "<think> 2 + 2 = 4 </think>\nTwo and two make four.\n<answer>4</answer>"
    path = write_jsonl(tmp_path / "mine.jsonl", [{"prompt": "2+2?", "completion": good},
                                                 {"prompt": "3+3?", "completion": "<think> 6 </think><answer>6</answer>"}])
    out = coldstart.run(ColdStartConfig(source="file", input=path, out_dir=str(tmp_path / "cs")))
    rows = [json.loads(line) for line in (out / "coldstart.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows] == [good]
    assert json.loads((out / "report.json").read_text())["dropped"] == {"format": 1}


def test_coldstart_bad_input_is_one_line(tmp_path, r1_zero_run):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "c"}, {"prompt": "q2"}])
    with pytest.raises(AhaError, match=rf"^{bad}:2: missing field 'completion'$"):
        coldstart.run(ColdStartConfig(source="file", input=bad, out_dir=str(tmp_path / "a")))
    write_jsonl(tmp_path / "r" / "rollouts" / "step_000001.jsonl", [{"prompt": "q", "completion": "c"}])
    with pytest.raises(AhaError, match=r"step_000001.jsonl:1: missing field 'accuracy'$"):
        coldstart.run(ColdStartConfig(run=str(tmp_path / "r"), out_dir=str(tmp_path / "b")))
    with pytest.raises(AhaError, match="no cold-start sample passed the filters"):
        coldstart.run(ColdStartConfig(run=r1_zero_run, out_dir=str(tmp_path / "c"),
                                      filters=coldstart.FilterConfig(format="r1", max_tokens=2)))


@pytest.fixture()
def task_file(tmp_path):
    return write_jsonl(tmp_path / "sums.jsonl", [{"prompt": f"What is {a} + 2?", "answer": str(a + 2), "task": "number"}
                                                 for a in range(4)])


def test_coldstart_few_shot_samples_with_long_cot_demos(tiny_model_dir, task_file, tmp_path):
    sample_keys = [f"sample.{k}" for k in [f"model={tiny_model_dir}", f"task={task_file}", "data.eval_size=0",
                                           "group_size=2", "max_new_tokens=8", "dtype=float32", "progress=false", *OPEN_FILTERS]]
    out = coldstart.run(load_config(ColdStartConfig, None, ["source=few_shot", f"out_dir={tmp_path / 'cs'}", *sample_keys]))
    assert len((out / "coldstart.jsonl").read_text().splitlines()) == 8
    demos = [json.loads(line) for line in (out / "demos.jsonl").read_text().splitlines()]
    assert all(r1_form(d["completion"]) for d in demos)
    assert json.loads((out / "sample" / "report.json").read_text())["generated"] == 8
    assert json.loads((out / "report.json").read_text())["kept"] == 8


def other_tokenizer():
    """A tokenizer unlike conftest's: another vocabulary size, other special tokens, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(["What is 3 + 2? <think> 3 + 2 = 5 </think> <answer> 5 </answer>"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", bos_token="<s>")


def test_distill_into_a_student_with_another_tokenizer(tiny_model_dir, task_file, tmp_path):
    from conftest import build_model

    from aha.models import load_model, load_tokenizer

    tok = other_tokenizer()
    student_dir = tmp_path / "student"
    build_model(tok, seed=1).save_pretrained(student_dir)
    tok.save_pretrained(student_dir)
    assert len(tok) != len(load_tokenizer(tiny_model_dir))
    before = {k: v.clone() for k, v in load_model(str(student_dir))[0].state_dict().items()}
    sample_keys = [f"sample.{k}" for k in [f"task={task_file}", "data.eval_size=0", "group_size=2", "max_new_tokens=8",
                                           "dtype=float32", "progress=false", *OPEN_FILTERS]]
    cfg = load_config(DistillConfig, None, [f"teacher={tiny_model_dir}", f"student={student_dir}", f"out_dir={tmp_path / 'd'}",
                                            *sample_keys, *QUIET_SFT])
    out = distill.run(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 8 and summary["teacher"] == tiny_model_dir
    student, student_tok = load_model(summary["model"])
    assert len(student_tok) == len(tok) and student_tok.eos_token == "</s>"
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    rows = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    # the student's targets are the teacher's text re-encoded by the student's tokenizer
    text = json.loads((out / "sample" / "samples.jsonl").read_text().splitlines()[0])
    t = sft.tokenize(sft.TextSample(text["completion"], prompt=text["prompt"]), student_tok, cfg.sft)
    assert max(t.prompt_ids + t.completion_ids) < len(tok)


def test_cli_registers_the_stages(capsys):
    from aha.cli import main

    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    for name in ("sft", "sample", "coldstart", "distill"):
        assert f"\n  {name} " in usage
        assert main([name, "--help"]) == 0
    helps = capsys.readouterr().out
    assert "filters.near_duplicate = 0.9" in helps and "mix.ratio = 0.0" in helps and "teacher = " in helps
