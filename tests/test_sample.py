"""`aha sample` (rejection sampling): every filter on hand-made completions, the stage end to end with a
scripted engine and with the tiny random model, resume after a kill, and bad input."""

import json

import pytest

from aha.config import load_config
from aha.errors import AhaError
from aha.rollout.base import Completion
from aha.rollout.fake import ScriptedEngine
from aha.stages import sample
from aha.stages.sample import FilterConfig, SampleConfig

GOOD = "<think> 2 + 3 = 5, the sum is five </think><answer>5</answer>"


def c(text, finished=True, tokens=None):
    return Completion(text=text, completion_ids=tuple(range(tokens or len(text.split()))), finished=finished)


def reject(text, accuracy=1.0, language=1.0, finished=True, tokens=None, **filters):
    return sample.rejection(c(text, finished, tokens), accuracy, language, FilterConfig(**filters))


def test_a_good_completion_passes_every_filter():
    assert reject(GOOD, no_code=True) is None


@pytest.mark.parametrize("kwargs, expected", [
    (dict(finished=False), "truncated"),
    (dict(tokens=50, max_tokens=40), "overlong"),
    (dict(text="the answer is 5"), "format"),
    (dict(text="<think> a </think> trailing <answer>5</answer>"), "format"),  # strict: nothing between blocks
    (dict(accuracy=0.0), "correct"),
    (dict(language=0.5), "language"),
    (dict(text="<think> " + "one two three four " * 10 + "</think><answer>5</answer>", repeat_ngram=4), "repetition"),
    (dict(text="<think> ```python\nprint(5)\n``` </think><answer>5</answer>", no_code=True), "code"),
])
def test_each_filter_rejects_its_case(kwargs, expected):
    kwargs.setdefault("text", GOOD)
    assert reject(**kwargs) == expected


@pytest.mark.parametrize("kwargs", [
    dict(finished=False, truncated=False), dict(tokens=50, max_tokens=0), dict(text="5", format="none"),
    dict(accuracy=0.0, correct=False), dict(language=0.0, min_language=0.0),
    dict(text="<think> " + "a b c d " * 10 + "</think><answer>5</answer>", repeat_ngram=4, max_repeats=0),
    dict(text="<think> ```x``` </think><answer>5</answer>", no_code=False),
])
def test_each_filter_can_be_turned_off(kwargs):
    kwargs.setdefault("text", GOOD)
    assert reject(**kwargs) is None


def test_r1_form_wants_reasoning_summary_answer():
    assert sample.r1_form("<think> 2+3=5 </think>\nAdding gives 5.\n<answer>5</answer>")
    assert not sample.r1_form(GOOD)  # no summary
    assert not sample.r1_form("<think></think> summary <answer>5</answer>")  # empty reasoning
    assert not sample.r1_form("<think> a </think> s <answer>5</answer> more")
    assert reject("<think> a </think> s <answer>5</answer>", format="r1") is None


def test_reasoning_without_words_passes_the_language_filter():
    assert reject("<think> 2 + 3 = 5 </think><answer>5</answer>", language=0.0) is None
    assert reject("<think> 二加三 </think><answer>5</answer>", language=0.0) == "language"


def test_repetition_and_language_scores():
    assert sample.max_ngram_count("a b a b a b", 2) == 3 and sample.max_ngram_count("a b", 3) == 0
    from aha.rewards.language import language_reward

    assert language_reward("<think> 二加三等于五 </think><answer>5</answer>") == 0.0


def test_duplicates_and_per_prompt_cap():
    near = GOOD.replace("five", "5")  # one word differs
    group = [c(GOOD), c("  " + GOOD.replace(" ", "  ")), c(near), c("<think> other way: 3 + 2 is 5 </think><answer>5</answer>"),
             c("<think> 1 + 4 also gives five </think><answer>5</answer>"), c("wrong")]
    ones = [1.0] * len(group)
    kept, dropped = sample.select(group, ones, ones, FilterConfig(near_duplicate=0.5, max_per_prompt=2))
    assert kept == [0, 3]
    assert dropped == {"duplicate": 2, "per_prompt": 1, "format": 1}
    kept, dropped = sample.select(group, ones, ones, FilterConfig(near_duplicate=1.0, max_per_prompt=10))
    assert kept == [0, 2, 3, 4] and dropped == {"duplicate": 1, "format": 1}  # exact duplicates only


# ----------------------------------------------------------------------------------------- the stage


@pytest.fixture()
def task_file(tmp_path):
    rows = [{"prompt": f"What is {a} + 2?", "answer": str(a + 2), "task": "number"} for a in range(6)]
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_cfg(tiny_model_dir, task_file, out_dir, *extra):
    return load_config(SampleConfig, None, [
        f"model={tiny_model_dir}", f"task={task_file}", f"out_dir={out_dir}", "data.eval_size=0", "group_size=3",
        "max_batch=6", "max_new_tokens=24", "dtype=float32", "progress=false", "prefill=<think>", *extra])


def test_stage_with_scripted_completions(tiny_model_dir, task_file, tmp_path):
    from aha.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    # completions follow the prefilled <think>; the answers of prompts 0..5 are 2..7
    texts = [" 0 + 2 = 2 </think><answer>2</answer>", " no idea </think><answer>9</answer>", " hmm"]
    out = sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "s", "filters.max_repeats=0"),
                     engine=ScriptedEngine(tok, texts), tokenizer=tok)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["completion"] == "<think>" + texts[0] and rows[0]["accuracy"] == 1.0
    assert {"prompt", "completion", "answer", "task", "source_model", "accuracy", "format", "language"} <= rows[0].keys()
    assert rows[0]["prompt"] == "What is 0 + 2?" and rows[0]["source_model"] == tiny_model_dir
    report = json.loads((out / "report.json").read_text())
    assert report["generated"] == 18 and report["kept"] == 1 and report["prompts_with_kept"] == 1
    assert report["dropped"]["correct"] == 6 + 5 and report["dropped"]["format"] == 6
    assert report["generated"] == report["kept"] + sum(report["dropped"].values())
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 17 and {r["rejected_by"] for r in rejected} == {"correct", "format"}
    assert sum(r["rejected_by"] == "format" for r in rejected) == 6
    assert all(r["completion"] == "<think>" + texts[2] for r in rejected if r["rejected_by"] == "format")


def test_empty_result_is_a_one_line_error_and_report_is_written(tiny_model_dir, task_file, tmp_path):
    from aha.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(AhaError) as e:
        sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "s"), engine=ScriptedEngine(tok, [" nothing"]), tokenizer=tok)
    assert "no completion passed the filters (18 generated; dropped by format 18)" in str(e.value)
    assert "\n" not in str(e.value) and (tmp_path / "s" / "report.json").exists()


def open_filters():
    return ["filters.correct=false", "filters.format=none", "filters.min_language=0", "filters.truncated=false",
            "filters.max_repeats=0", "filters.near_duplicate=1.0", "filters.max_per_prompt=3"]


def test_resume_after_kill_equals_uninterrupted(tiny_model_dir, task_file, tmp_path, monkeypatch):
    """Real sampling from the tiny model. The run dies after batch 1 was recorded and batch 2's rows were
    appended but not recorded (with a torn line after them); the restart drops those rows, redoes batch 2
    only, and writes exactly what an uninterrupted run writes."""
    full = sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "full", *open_filters()))

    class Killed(BaseException):
        pass

    real_append = sample.append_rows
    calls = {"done": 0, "generate": 0}

    def dying_append(path, rows):
        if path.name == "done.jsonl":
            calls["done"] += 1
            if calls["done"] == 2:
                with open(path.parent / "samples.jsonl", "a") as f:
                    f.write('{"id": "torn')
                raise Killed
        real_append(path, rows)

    monkeypatch.setattr(sample, "append_rows", dying_append)
    with pytest.raises(Killed):
        sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "cut", *open_filters()))
    monkeypatch.setattr(sample, "append_rows", real_append)
    from aha.rollout import hf

    real_generate = hf.HFEngine.generate

    def counting(self, prompts, n, sampling):
        calls["generate"] += 1
        return real_generate(self, prompts, n, sampling)

    monkeypatch.setattr(hf.HFEngine, "generate", counting)
    cut = sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "cut", *open_filters()))
    assert calls["generate"] == 2  # batches 2 and 3 of 3; batch 1 was done
    assert (cut / "samples.jsonl").read_text() == (full / "samples.jsonl").read_text()
    a, b = json.loads((full / "report.json").read_text()), json.loads((cut / "report.json").read_text())
    assert a == b and a["generated"] == 18 and a["kept"] == 18


def test_a_time_budget_stops_after_a_batch_and_resume_continues(tiny_model_dir, task_file, tmp_path, capsys):
    """max_minutes: the batch that passes the budget is the last one (kept and recorded); resume=true samples
    the rest, and the two parts write what one uninterrupted run writes."""
    full = sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "full", *open_filters()))
    part = sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "cut", *open_filters(), "max_minutes=1e-9"))
    report = json.loads((part / "report.json").read_text())
    assert report["prompts"] == 2 and report["prompts_asked"] == 6 and report["generated"] == 6
    assert "stopped after max_minutes=1e-09 at 2 of 6 prompts" in capsys.readouterr().err
    rest = sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "cut", *open_filters()))
    assert (rest / "samples.jsonl").read_text() == (full / "samples.jsonl").read_text()
    assert json.loads((rest / "report.json").read_text()) == json.loads((full / "report.json").read_text())


def test_resume_refuses_a_changed_config(tiny_model_dir, task_file, tmp_path):
    sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "s", *open_filters(), "limit=2"))
    with pytest.raises(AhaError, match=r"config.yaml: group_size: differs"):
        sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "s", *open_filters(), "limit=2", "group_size=2"))
    with pytest.raises(AhaError, match=r"config.yaml: filters.format: differs"):
        sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "s", *open_filters(), "limit=2", "filters.format=r1"))
    with pytest.raises(AhaError, match="resume=true continues it"):
        sample.run(make_cfg(tiny_model_dir, task_file, tmp_path / "s", *open_filters(), "limit=2", "resume=false"))


def test_resume_refuses_a_retrained_model_at_the_same_path(tiny_model_dir, task_file, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    sample.run(make_cfg(str(model), task_file, tmp_path / "s", *open_filters(), "limit=2"))
    (model / "config.json").write_text((model / "config.json").read_text() + " ")  # "retrained" in place
    with pytest.raises(AhaError, match=r"source.json: the model at .* changed since this run sampled from it"):
        sample.run(make_cfg(str(model), task_file, tmp_path / "s", *open_filters(), "limit=2"))


def test_cli_sample_end_to_end_and_bad_task(tiny_model_dir, task_file, tmp_path, capsys):
    from aha.cli import main

    out = tmp_path / "cli"
    assert main(["sample", f"model={tiny_model_dir}", f"task={task_file}", f"out_dir={out}", "data.eval_size=0",
                 "group_size=2", "max_new_tokens=8", "dtype=float32", "progress=false", *open_filters()]) == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 12
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    capsys.readouterr()
    assert main(["sample", f"model={tiny_model_dir}", f"task={bad}", f"out_dir={tmp_path / 'x'}"]) == 2
    assert capsys.readouterr().err.strip() == f"aha: {bad}:1: missing field 'answer'"


def test_demos_become_earlier_turns(tiny_model_dir, tmp_path):
    from aha.models import load_tokenizer
    from aha.stages.sft import TextSample

    tok = load_tokenizer(tiny_model_dir)
    cfg = SampleConfig(template="r1", prefill="<think>")
    text = sample.prompt_text("What is 1 + 1?", tok, cfg, [TextSample("<think> long </think> s <answer>4</answer>", prompt="2+2?")])
    assert text.index("2+2?") < text.index("<think> long") < text.index("What is 1 + 1?")
    assert text.endswith("<|im_start|>assistant\n<think>") and "readable summary" in text
