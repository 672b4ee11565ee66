"""Every bad input is one clean line with exit code 2: commands x bad inputs through `aha.cli.main`.

Each case asserts exit code 2, exactly one line on stderr (`aha: ...`) naming the key or the file, and no
traceback. Numbers are refused where they enter (the config loader), before any model loads; files are
decoded as strict UTF-8; OS errors on output paths and corrupt weights name the path.
"""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from aha.cli import main

SAMPLE = {"prompt": "What is 1 + 2?", "completion": "<think> 1 + 2 = 3 </think> <answer> 3 </answer>", "answer": "3"}
PAIR = {"prompt": "Say hi.", "chosen": "Hi there, how can I help?", "rejected": "no"}


@pytest.fixture(autouse=True)
def quiet_progress_bars(tmp_path, monkeypatch):
    """transformers draws a progress bar on stderr while loading weights; the one line must be the error.
    Run in a temporary folder, so that a case that is no longer refused writes its default out_dir there."""
    from transformers.utils import logging

    monkeypatch.chdir(tmp_path)
    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    yield
    if was:
        logging.enable_progress_bar()


def cli(capsys, *argv) -> tuple[int, str]:
    """(exit code, stderr) of `aha ARGV`, run in this process."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and one error line `aha: ...` on stderr, the last; before it only a command's own status
    lines (`aha eval: 4 problems of ...`), no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("aha: "), err
    assert all(line.startswith("aha ") and ": " in line for line in lines[:-1]), err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.fixture()
def files(tmp_path, tiny_model_dir):
    """The inputs the cases name: a good task/SFT/pairs file each, the same with one bad UTF-8 byte on line
    2, a model folder whose weights are truncated, and a plain file where folders are wanted."""
    good_rows = "".join(json.dumps(SAMPLE) + "\n" for _ in range(6))
    f = {"model": tiny_model_dir, "tmp": tmp_path,
         "samples": write(tmp_path / "samples.jsonl", good_rows),
         "pairs": write(tmp_path / "pairs.jsonl", "".join(json.dumps(PAIR) + "\n" for _ in range(6))),
         "bad_utf8": write(tmp_path / "bad_utf8.jsonl", json.dumps(SAMPLE).encode() + b"\n"
                           + b'{"prompt": "caf\xe9 + 1?", "completion": "x", "answer": "1"}\n'),
         "bad_pairs": write(tmp_path / "bad_pairs.jsonl", json.dumps(PAIR).encode() + b"\n"
                            + b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}\n'),
         "file": write(tmp_path / "a_file", "not a folder\n")}
    corrupt = tmp_path / "corrupt_model"
    shutil.copytree(tiny_model_dir, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    f["corrupt"] = corrupt
    return f


# Settings that keep each command tiny: a 6-row JSONL task, 4 new tokens, one step.
def _train(f, **kw):
    return [f"model={kw.get('model', f['model'])}", f"task={kw.get('task', f['samples'])}", "data.eval_size=0",
            "steps=1", "grpo.group_size=2", "grpo.prompts_per_step=2", "rollout.max_new_tokens=4", "selftest=false",
            "log.progress=false", "log.tensorboard=false", "dtype=float32", f"out_dir={kw.get('out', f['tmp'] / 'train')}"]


def _sft(f, **kw):
    return [f"model={kw.get('model', f['model'])}", f"input={kw.get('input', f['samples'])}", "eval_size=0", "steps=1",
            "samples_per_step=2", "max_length=128", "log.progress=false", "log.tensorboard=false", "dtype=float32",
            f"out_dir={kw.get('out', f['tmp'] / 'sft')}"]


def _sample(f, prefix="", **kw):
    return [f"{prefix}model={kw.get('model', f['model'])}", f"{prefix}task={kw.get('task', f['samples'])}",
            f"{prefix}data.eval_size=0", f"{prefix}group_size=2", f"{prefix}max_new_tokens=4", f"{prefix}dtype=float32",
            f"{prefix}out_dir={kw.get('out', f['tmp'] / 'sample')}"]


def _eval(f, **kw):
    return [f"model={kw.get('model', f['model'])}", f"task={kw.get('task', f['samples'])}", "data.eval_size=2", "samples=1",
            "temperature=0", "max_new_tokens=4", "limit=1", "dtype=float32", "progress=false",
            f"out_dir={kw.get('out', f['tmp'] / 'eval')}"]


def _rm(f, **kw):
    return [f"model={kw.get('model', f['model'])}", f"data={kw.get('data', f['pairs'])}", "eval_size=0", "epochs=1",
            "batch_size=2", "max_length=64", "log.progress=false", f"out_dir={kw.get('out', f['tmp'] / 'rm')}"]


# ------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("argv, needles", [
    (["train", "grpo.group_size=-1"], ["command line: grpo.group_size: must be >= 1, got -1"]),
    (["train", "rollout.temperature=nan"], ["command line: rollout.temperature: expected a finite number"]),
    (["train", "rollout.top_p=0"], ["rollout.top_p: must be in (0, 1]"]),
    (["train", "rewards.timeout_s=nan"], ["rewards.timeout_s: expected a finite number"]),
    (["train", "rewards.weights.accuracy=inf"], ["rewards.weights.accuracy: expected a finite number"]),
    (["train", "optim.beta2=1"], ["optim.beta2: must be in [0, 1)"]),
    (["sft", "optim.lr=nan"], ["command line: optim.lr: expected a finite number, got 'nan'"]),
    (["sft", "optim.lr=-1e-5"], ["optim.lr: must be > 0"]),
    (["rm", "optim.lr=nan"], ["command line: optim.lr: expected a finite number"]),
    (["rm", "batch_size=0"], ["batch_size: must be >= 1, got 0"]),
    (["score", "timeout_s=nan"], ["timeout_s: expected a finite number"]),
    (["sample", "temperature=-1"], ["command line: temperature: must be >= 0, got -1.0"]),
    (["sample", "group_size=0"], ["group_size: must be >= 1, got 0"]),
    (["sample", "filters.near_duplicate=0"], ["filters.near_duplicate: must be in (0, 1]"]),
    (["coldstart", "sample.max_new_tokens=0"], ["sample.max_new_tokens: must be >= 1, got 0"]),
    (["coldstart", "size=-3"], ["size: must be >= 1"]),
    (["distill", "sample.top_p=1.5"], ["sample.top_p: must be in (0, 1], got 1.5"]),
    (["distill", "sft.optim.lr=nan"], ["sft.optim.lr: expected a finite number"]),
    (["eval", "samples=0"], ["command line: samples: must be >= 1, got 0"]),
    (["eval", "top_p=2"], ["top_p: must be in (0, 1], got 2.0"]),
    (["eval", "temperature=-1"], ["temperature: must be >= 0, got -1.0"]),
    (["eval", "data.eval_size=-1"], ["data.eval_size: must be >= 0, got -1"]),
    (["train", "data.size=-5"], ["data.size: must be >= 0, got -5"]),
    (["score", "max_parse_failure=2"], ["max_parse_failure: must be in [0, 1], got 2.0"]),
    (["sample", "code_isolation=none"], ["command line: code_isolation: expected one of"]),
])
def test_a_bad_number_fails_where_it_was_set(capsys, argv, needles):
    assert_one_line(*cli(capsys, *argv), *needles)


def test_a_bad_number_in_a_recipe_names_its_file_and_line(capsys, tmp_path):
    recipe = write(tmp_path / "r.yaml", "steps: 2\ngrpo:\n  group_size: -1\n")
    assert_one_line(*cli(capsys, "train", recipe), f"{recipe}:3: grpo.group_size: must be >= 1, got -1")
    recipe = write(tmp_path / "s.yaml", "optim:\n  lr: .nan\n")
    assert_one_line(*cli(capsys, "sft", recipe), f"{recipe}:2: optim.lr: expected a finite number")


def test_a_bad_number_in_a_pipeline_stage_names_the_stage_key(capsys, tmp_path):
    recipe = write(tmp_path / "pipe.yaml", "stages:\n  rl:\n    kind: train\n    grpo:\n      group_size: -1\n")
    assert_one_line(*cli(capsys, "pipeline", recipe), f"{recipe}:5: stages.rl.grpo.group_size: must be >= 1")
    recipe = write(tmp_path / "pipe2.yaml", "stages:\n  rl:\n    kind: train\n    rollout:\n      temperature: .nan\n")
    assert_one_line(*cli(capsys, "pipeline", recipe), "stages.rl.rollout.temperature: expected a finite number")


# ------------------------------------------------------------------------------------- input files


@pytest.mark.parametrize("command", ["train", "sft", "sample", "eval", "score", "coldstart", "distill", "rm"])
def test_invalid_utf8_in_an_input_file_names_file_and_line(capsys, files, command):
    bad = files["bad_utf8"]
    argv = {"train": _train(files, task=bad), "sft": _sft(files, input=bad), "sample": _sample(files, task=bad),
            "eval": _eval(files, task=bad), "score": [f"input={bad}"],
            "coldstart": ["source=file", f"input={bad}", f"out_dir={files['tmp'] / 'cs'}"],
            "distill": _sample(files, "sample.", task=bad)[:-1] + [f"out_dir={files['tmp'] / 'distill'}"],
            "rm": _rm(files, data=files["bad_pairs"])}[command]
    bad = files["bad_pairs"] if command == "rm" else bad
    assert_one_line(*cli(capsys, command, *argv), f"{bad}:2: invalid UTF-8")


def test_invalid_utf8_in_a_recipe_names_file_and_line(capsys, tmp_path):
    recipe = write(tmp_path / "r.yaml", b"steps: 2\nsystem_prompt: caf\xe9\n")
    assert_one_line(*cli(capsys, "train", recipe), f"{recipe}:2: invalid UTF-8")


# ------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("command", ["train", "sft", "sample", "eval", "rm", "distill"])
def test_corrupt_weights_name_the_file(capsys, files, command):
    bad = files["corrupt"]
    argv = {"train": _train(files, model=bad), "sft": _sft(files, model=bad), "sample": _sample(files, model=bad),
            "eval": _eval(files, model=bad), "rm": _rm(files, model=bad),
            "distill": [f"teacher={bad}", *_sample(files, "sample.")[1:-1], f"out_dir={files['tmp'] / 'd'}"]}[command]
    assert_one_line(*cli(capsys, command, *argv), f"{bad / 'model.safetensors'}: corrupt weights file")


# ------------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("under", [False, True], ids=["out_dir_is_a_file", "out_dir_under_a_file"])
@pytest.mark.parametrize("command", ["train", "sft", "sample", "eval", "rm", "coldstart", "pipeline", "plot"])
def test_an_output_path_that_cannot_be_a_folder_is_named(capsys, files, tmp_path, command, under):
    out = files["file"] / "run" if under else files["file"]
    if command == "plot":
        run = tmp_path / "run"
        run.mkdir()
        write(run / "metrics.jsonl", '{"step": 1, "reward": 0.5, "accuracy": 0.5, "length_mean": 9}\n')
        argv = [run, f"out={out}"]
    elif command == "pipeline":
        argv = [write(tmp_path / "p.yaml", f"out_dir: {out}\nstages:\n  s:\n    kind: sft\n    input: {files['samples']}\n")]
    elif command == "coldstart":
        argv = ["source=file", f"input={files['samples']}", f"out_dir={out}", "filters.format=strict"]
    elif command == "sample":
        argv = _sample(files, out=out)
    else:
        argv = {"train": _train, "sft": _sft, "eval": _eval, "rm": _rm}[command](files, out=out)
    assert_one_line(*cli(capsys, command, *argv), f"{files['file']} is a file")


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_data(capsys, files, monkeypatch):
    from aha.training import checkpoint

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    out = files["tmp"] / "sft"
    assert_one_line(*cli(capsys, "sft", *_sft(files, out=out)), f"cannot write {out / 'checkpoints' / 'step_000001'}",
                    "No space left on device")
    assert (out / "metrics.jsonl").is_file() and (out / "config.yaml").is_file()
    assert not list((out / "checkpoints").iterdir())  # the half-written checkpoint is removed


@pytest.mark.parametrize("writer", ["atomic_write_text", "append_jsonl"])
def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch, writer):
    import builtins
    import os

    from aha import io
    from aha.errors import AhaError

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    if writer == "append_jsonl":
        real_open = builtins.open
        monkeypatch.setattr(builtins, "open", lambda p, *a, **k: full_disk() if str(p).endswith(".jsonl") else real_open(p, *a, **k))
    target = tmp_path / "out.jsonl"
    with pytest.raises(AhaError, match=f"cannot write {target}: No space left on device"):
        getattr(io, writer)(target, {"a": 1}) if writer == "append_jsonl" else io.atomic_write_text(target, "x")
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind


# ------------------------------------------------------------------------------------- aha plot


@pytest.mark.parametrize("content, needle", [
    (None, "metrics.jsonl: is a folder, not a JSONL file"),
    (b'{"step": 1, "reward": 0.5}\n{"step": 2,\n', "metrics.jsonl:2: malformed JSON"),
    (b'{"step": 1, "reward": 0.5}\n{"step": 2, "note": "\xff"}\n', "metrics.jsonl:2: invalid UTF-8"),
    (b'{"step": 1, "reward": 0.5}\n{"reward": 0.5}\n', "metrics.jsonl:2: missing field 'step'"),
    (b'{"step": "one", "reward": 0.5}\n', "metrics.jsonl:1: field 'step' must be a number"),
], ids=["folder", "bad_json", "bad_utf8", "no_step", "step_not_a_number"])
def test_plot_names_the_bad_metrics_line(capsys, tmp_path, content, needle):
    run = tmp_path / "run"
    run.mkdir()
    if content is None:
        (run / "metrics.jsonl").mkdir()
    else:
        write(run / "metrics.jsonl", content)
    assert_one_line(*cli(capsys, "plot", run), f"{run}/{needle}")


def test_debug_still_shows_the_traceback(files):
    write(files["tmp"] / "metrics.jsonl", '{"step": 1, "reward": 0.5}\n')
    with pytest.raises(FileExistsError):
        main(["plot", str(files["tmp"]), f"out={files['file']}", "--debug"])
