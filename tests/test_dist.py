"""Data parallelism: 2 CPU processes under torchrun (gloo, FSDP2) on the tiny random model, against one process.

The processes run aha's command line (tests/dist_worker.py) with a rollout engine that picks completions by
prompt, so the rollouts are the same whichever process samples a group; the weights after the steps must then
equal one process's within fp32 rounding (GRPO, with LoRA too, SFT, the reward model). Also: resume after kill -9,
checkpoints resumed on another number of processes, and a failing or hanging process ending the job with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from aha.cli import main
from aha.training import checkpoint as ckpt
from aha.training import grpo_loop

pytestmark = pytest.mark.dist
TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from dist_worker import PromptEngine  # noqa: E402


def torchrun(*args: str, fail: str = "", timeout_s: float = 60, limit: float = 240) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 tests/dist_worker.py ARGS` with one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")]), "AHA_DIST_TIMEOUT": str(timeout_s), "AHA_TEST_FAIL": fail}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "dist_worker.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from conftest import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("dist")
    tok = build_tokenizer()
    build_model(tok).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    sums = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b), "task": "number"} for a in range(6) for b in range(4)]
    (root / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sums))
    sft = [{"prompt": f"What is {a} + {b}?", "completion": f"<think> {a} + {b} = {a + b} </think> <answer> {a + b} </answer>"}
           for a in range(5) for b in range(4)]
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    pairs = [{"prompt": f"What is {i} + 7?", "chosen": f"<think> {i} + 7 </think> <answer> {i + 7} </answer>",
              "rejected": "wait wait wait"} for i in range(12)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return root


def grpo_args(files: Path, out: Path, *extra: str) -> list[str]:
    # 3 groups over 2 processes: one process has more micro-batches than the other; KL, mu=2 and the
    # token-mean loss need the reference pass, the old-policy pass and the whole step's token count; with
    # accuracy alone many groups are flat, so DAPO's dynamic sampling resamples (and keeps groups of both
    # processes).
    return ["train", f"model={files / 'model'}", f"task={files / 'sums.jsonl'}", f"out_dir={out}", "steps=2", "seed=0",
            "grpo.group_size=4", "grpo.prompts_per_step=3", "rollout.max_new_tokens=12", "optim.lr=1e-3",
            "optim.warmup_steps=0", "optim.micro_batch_size=3", "dtype=float32", "data.eval_size=4",
            "log.progress=false", "log.tensorboard=false", "log.checkpoint_every=1", "log.rollouts_every=1",
            "rewards.weights.accuracy=1.0", "rewards.weights.format_partial=0", "selftest=false", "grpo.kl_coef=0.05", "grpo.mu=2",
            "grpo.loss_agg=token_mean", "grpo.dynamic_sampling=true", *extra]


def sft_args(files: Path, out: Path, *extra: str) -> list[str]:
    return ["sft", f"model={files / 'model'}", f"input={files / 'samples.jsonl'}", f"out_dir={out}", "steps=2",
            "samples_per_step=5", "eval_size=3", "max_length=128", "dtype=float32", "optim.lr=1e-3",
            "optim.warmup_steps=0", "optim.micro_batch_size=1", "log.progress=false", "log.tensorboard=false",
            "log.checkpoint_every=1", "log.eval_every=1", *extra]


def rm_args(files: Path, out: Path) -> list[str]:
    # 8 training pairs in batches of 3 (3, 3, 2), one pair a pass: the processes' pass counts differ
    return ["rm", f"model={files / 'model'}", f"data={files / 'pairs.jsonl'}", f"out_dir={out}", "eval_size=4",
            "epochs=1", "batch_size=3", "optim.micro_batch_size=1", "optim.lr=5e-3", "log.progress=false", "device=cpu",
            "dtype=float32", "log.checkpoint_every=1", "log.keep_checkpoints=3"]


def one_process(args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(grpo_loop, "make_engine", lambda name, model, tokenizer, **kw: PromptEngine(tokenizer))
    assert main(args) == 0


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(a: list[dict], b: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in keys:
            if k in ra or k in rb:
                assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), (ra["step"], k)


@pytest.fixture(scope="module")
def grpo_two(files):
    """The uninterrupted 2-process GRPO run."""
    out = files / "grpo2"
    t0 = time.time()
    done = torchrun(*grpo_args(files, out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.time() - t0 < 120
    return out


@pytest.fixture(scope="module")
def grpo_killed(files):
    """A 2-process GRPO run whose rank 0 was killed with SIGKILL as step 2 began (step 1's checkpoint written)."""
    out = files / "grpo_killed"
    done = torchrun(*grpo_args(files, out), fail="0:2:kill")
    assert done.returncode != 0
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [1]
    return out


GRPO_KEYS = ("loss", "grad_norm", "kl", "reward", "accuracy", "entropy", "length_mean", "clip_low", "eval/accuracy",
             "eval/length_mean", "groups_sampled", "resample_rounds")
"""Not train_tokens: one process runs the prompt prefix all groups share once (optim.share_prefix), several don't."""


def test_grpo_two_processes_take_the_steps_of_one(grpo_two, files, tmp_path, monkeypatch):
    one = tmp_path / "grpo1"
    one_process(grpo_args(files, one), monkeypatch)
    base = load_file(str(files / "model" / "model.safetensors"))
    for step in (1, 2):
        w1, w2 = weights(one, step), weights(grpo_two, step)
        assert any(not torch.allclose(w2[k], base[k], atol=1e-4) for k in w2), "the 2-process run did not train"
        assert_same_weights(w2, w1)
    assert_same_metrics(metrics(grpo_two), metrics(one), GRPO_KEYS)
    assert any(r.get("resample_rounds", 0) > 0 for r in metrics(one))  # dynamic sampling did resample
    # the rollouts dumped once, by rank 0, in one process's order
    for step in (1, 2):
        name = f"rollouts/step_{step:06d}.jsonl"
        assert (grpo_two / name).read_text() == (one / name).read_text()
    assert (ckpt.latest_checkpoint(grpo_two)[1] / ckpt.OPTIMIZER_DIR).is_dir()  # sharded optimizer state


def test_grpo_resume_after_kill_9_equals_the_uninterrupted_run(grpo_two, grpo_killed, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(grpo_killed, run)
    done = torchrun(*grpo_args(run.parent, run, "resume=true")[:1], *grpo_args(grpo_two.parent, run, "resume=true")[1:])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(weights(run, 2), weights(grpo_two, 2), atol=1e-7)
    assert_same_metrics(metrics(run), metrics(grpo_two), GRPO_KEYS)


def test_a_two_process_checkpoint_resumes_on_one_process(grpo_two, grpo_killed, files, tmp_path, monkeypatch):
    run = tmp_path / "on_one"
    shutil.copytree(grpo_killed, run)
    one_process(grpo_args(files, run, "resume=true"), monkeypatch)
    assert_same_weights(weights(run, 2), weights(grpo_two, 2))
    assert_same_metrics(metrics(run), metrics(grpo_two), GRPO_KEYS)


def test_a_one_process_checkpoint_resumes_on_two_processes(grpo_two, files, tmp_path, monkeypatch):
    run = tmp_path / "one_then_two"
    one_process(grpo_args(files, run, "steps=1"), monkeypatch)
    done = torchrun(*grpo_args(files, run, "resume=true"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(weights(run, 2), weights(grpo_two, 2))
    assert_same_metrics(metrics(run)[-1:], metrics(grpo_two)[-1:], GRPO_KEYS)  # step 1 had its own final eval


def test_lora_two_processes_take_the_steps_of_one_and_resume_on_one(files, tmp_path, monkeypatch):
    """LoRA under FSDP2: the reference is the sharded policy with its adapters off, rollouts come from the merged
    weights gathered whole, and a checkpoint holds the merged model and the adapter."""
    two, one, resumed = tmp_path / "lora2", tmp_path / "lora1", tmp_path / "lora_resumed"
    lora = ("lora.rank=4", "optim.lr=2e-2")
    done = torchrun(*grpo_args(files, two, *lora))
    assert done.returncode == 0, done.stderr[-3000:]
    one_process(grpo_args(files, one, *lora), monkeypatch)
    for step in (1, 2):
        assert_same_weights(weights(two, step), weights(one, step), atol=1e-5)
        adapter = f"checkpoints/step_{step:06d}/adapter/adapter_model.safetensors"
        assert_same_weights(load_file(str(two / adapter)), load_file(str(one / adapter)), atol=1e-5)
    assert_same_metrics(metrics(two), metrics(one), GRPO_KEYS)
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000002")
    one_process(grpo_args(files, resumed, *lora, "resume=true"), monkeypatch)
    assert_same_weights(weights(resumed, 2), weights(two, 2), atol=1e-5)


def test_sft_two_processes_take_the_steps_of_one(files, tmp_path, monkeypatch):
    """The 2 processes run as a pipeline stage with `launcher.nproc: 2` (the pipeline itself is one process)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    stage = {"kind": "sft", "launcher": {"nproc": 2}}
    for arg in sft_args(files, tmp_path)[1:]:  # the same keys, nested
        key, value = arg.split("=", 1)
        *parents, name = key.split(".")
        node = stage
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = yaml.safe_load(value)
    del stage["out_dir"]
    recipe = tmp_path / "pipe.yaml"
    recipe.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "pipe"), "stages": {"tune": stage}}))
    assert main(["pipeline", str(recipe)]) == 0
    assert json.loads((tmp_path / "pipe" / "manifest.json").read_text())["stages"]["tune"]["status"] == "done"
    two, one = tmp_path / "pipe" / "tune", tmp_path / "sft1"
    assert (ckpt.latest_checkpoint(two)[1] / ckpt.OPTIMIZER_DIR).is_dir()  # sharded: it ran in 2 processes
    one_process(sft_args(files, one), monkeypatch)
    base = load_file(str(files / "model" / "model.safetensors"))
    for step in (1, 2):
        w1, w2 = weights(one, step), weights(two, step)
        assert any(not torch.allclose(w2[k], base[k], atol=1e-4) for k in w2)
        assert_same_weights(w2, w1)
    assert_same_metrics(metrics(two), metrics(one), ("loss", "grad_norm", "tokens", "rows", "eval/loss"))


def failure_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("aha: ")]


def seconds_since_failure(stderr: str) -> float:
    """Seconds from the injected failure (the worker prints when) to now."""
    at = [float(line.split()[-1]) for line in stderr.splitlines() if line.startswith("dist_worker: failing at")]
    assert len(at) == 1, stderr[-3000:]
    return time.time() - at[0]


def test_a_failing_process_ends_the_job_with_one_line_and_keeps_the_checkpoint(files, tmp_path):
    out = tmp_path / "fails"
    done = torchrun(*grpo_args(files, out, "steps=3"), fail="1:2:raise", timeout_s=120)
    assert done.returncode != 0 and seconds_since_failure(done.stderr) < 60  # not the timeout: torchrun ends them
    lines = failure_lines(done.stderr)
    assert lines[0] == "aha: rank 1: RuntimeError: injected failure at step 2 (--debug shows the traceback)"
    # rank 0, unless torchrun ended it first, says why it stopped
    assert all(line.startswith("aha: rank 0: stopped: another process failed") for line in lines[1:]), lines
    assert done.stderr.count("Traceback") == 1 and "ChildFailedError" in done.stderr  # torchrun's own report only
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [1]
    assert not list((out / "checkpoints").glob(".tmp_*"))
    assert load_file(str(ckpt.latest_checkpoint(out)[1] / "model.safetensors"))


def test_a_hanging_process_ends_the_job_at_the_collective_timeout(files, tmp_path):
    out = tmp_path / "hangs"
    done = torchrun(*grpo_args(files, out), fail="1:2:hang", timeout_s=10)
    elapsed = seconds_since_failure(done.stderr)
    assert done.returncode != 0 and elapsed < 10 + 45, elapsed
    lines = failure_lines(done.stderr)
    assert lines == [lines[0]] and lines[0].startswith("aha: rank 0: stopped: another process failed or stopped "
                                                       "answering ("), done.stderr[-3000:]
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [1]


def test_rm_two_processes_take_the_steps_of_one(files, tmp_path, monkeypatch):
    two, one = tmp_path / "rm2", tmp_path / "rm1"
    done = torchrun(*rm_args(files, two))
    assert done.returncode == 0, done.stderr[-3000:]
    one_process(rm_args(files, one), monkeypatch)
    for step in (1, 2, 3):
        assert_same_weights(weights(two, step), weights(one, step))
    assert_same_metrics(metrics(two), metrics(one), ("loss", "accuracy", "margin", "grad_norm",
                                                      "eval/pairwise_accuracy", "eval/margin"))


def test_commands_that_do_not_share_their_work_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["eval", "model=x"]) == 2
    assert capsys.readouterr().err.strip() == "aha: rank 1: aha eval runs in one process; under torchrun run train, sft, rm"


@pytest.mark.parametrize("launcher, message", [
    ("{nproc: 2}", "stages.ev.launcher.nproc: stage kind 'eval' runs in one process (torchrun runs train, sft, rm)"),
    ("{nproc: 0}", "stages.ev.launcher.nproc: must be an integer >= 1, got 0"),
    ("{procs: 2}", "stages.ev.launcher: a mapping with one key, nproc (processes for torchrun)"),
])
def test_a_bad_launcher_is_one_line(tmp_path, capsys, launcher, message):
    recipe = tmp_path / "pipe.yaml"
    recipe.write_text(f"out_dir: {tmp_path / 'out'}\nstages:\n  ev: {{kind: eval, model: x, launcher: {launcher}}}\n")
    assert main(["pipeline", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aha: ") and err.endswith(message) and "\n" not in err
