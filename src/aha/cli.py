"""`aha <command> [RECIPE] [key=value ...]`: parse, load the config, call one function.

Bad input (a config typo, a malformed file, an unknown task or model) prints one line
`aha: <what and where>` and exits 2; so does an OS error on a path (an out_dir that is a file, a
read-only folder, a full disk). `--debug` shows the traceback instead.

Under torchrun (`torchrun --nproc_per_node=N -m aha train ...`) each process's line names its rank, and any
other failure there (an error in one process, a peer's closed connection, a collective past AHA_DIST_TIMEOUT)
prints one line and exits 1 instead of a traceback per process.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aha import __version__, dist, runtime
from aha.config import describe, load_config
from aha.data.tasks import list_tasks
from aha.errors import AhaError, closest
from aha.models import aha_home, list_models
from aha.plot import PlotConfig, plot_run
from aha.rewards.score_cli import ScoreConfig, run_score_config
from aha.rollout.vllm_server import ServeConfig, serve
from aha.stages import STAGES, stage_entry
from aha.stages.evaluate import evaluate
from aha.stages.pipeline import PipelineConfig, load_pipeline, run_pipeline
from aha.stages.rm import run as train_reward_model
from aha.training.grpo_loop import train

USAGE = """usage: aha <command> [RECIPE.yaml] [key=value ...] [--debug]

Train a reasoning model the DeepSeek-R1 way.

commands:
  train     GRPO with rule rewards (R1-Zero on SmolLM2-135M-Instruct on CPU by default)
  eval      pass@1 over k samples, cons@k, pass@k, lengths (the R1 paper's protocol)
  score     score a JSONL of completions offline; selftest=true checks the verifier on gold answers
  plot      draw a run's R1-Zero figures as PNG; a pipeline folder: every stage's accuracy and length
  models    list the model registry and what is cached
  tasks     list the available tasks
  sft       supervised fine-tuning on {prompt, completion} or chat JSONL (packed, loss on completions)
  sample    rejection sampling: k completions per prompt, verified and filtered, to JSONL
  coldstart build readable long-CoT samples in R1's form (from R1-Zero rollouts, few-shot or a file), then SFT
  distill   teacher -> sample -> sft on a student, in one command
  rm        train a reward model on preference pairs {prompt, chosen, rejected} (Bradley-Terry)
  pipeline  run a recipe's named stages in order (skip unchanged, resume interrupted; from=STAGE)
  vllm-serve  a vLLM generation server on GPUs of its own, for rollout.engine=vllm_server

`aha <command> --help` lists every key with its default and meaning.
"""


@dataclass
class Command:
    config_cls: Callable | None
    run: Callable
    help: str


def _train(cfg):
    run_dir = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"run folder: {run_dir}  (plot it: aha plot {run_dir})")


def _eval(cfg):
    evaluate(cfg)


def _score(cfg):
    run_score_config(cfg)


def _rm(cfg):
    run_dir = train_reward_model(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"reward model run folder: {run_dir}  (use it as rewards.reward_models.NAME.model)")


def _pipeline(pipeline):
    root = run_pipeline(pipeline)
    print(f"pipeline folder: {root}  (manifest: {root}/manifest.json; plot it: aha plot {root})")


def _plot(cfg):
    for path in plot_run(cfg.run, cfg.out):
        print(path)


def _models(_cfg):
    print(f"{'name':28} {'kind':13} {'installed':9} {'cached':6}  install")
    for r in list_models():
        print(f"{r['name']:28} {r['kind']:13} {str(r['installed']):9} {str(r['cached']):6}  {r['install']}")
    print(f"cache: {aha_home()} (set AHA_HOME to move it)")


def _tasks(_cfg):
    for name, note in list_tasks():
        print(f"{name:32} {note}")


def _stage(fn: Callable) -> Callable:
    """The command of a stage with no printing of its own: run it and name its output folder."""

    def run(cfg):
        print(f"output folder: {fn(cfg)}")

    return run


OWN_OUTPUT = {"train": _train, "rm": _rm, "eval": _eval}
"""Stages whose command reports what it made in its own words; every other stage prints its output folder."""


def _commands() -> dict[str, Command]:
    cmds = {}
    for kind in STAGES:  # the pipeline's stage table: a stage registered there is a command too
        cls, fn, help_text = stage_entry(kind)
        cmds[kind] = Command(cls, OWN_OUTPUT.get(kind) or _stage(fn), help_text)
    cmds["pipeline"] = Command(PipelineConfig, _pipeline, "named stages in order, each reading earlier "
                               "outputs as @NAME; from=STAGE reruns from there")
    cmds["score"] = Command(ScoreConfig, _score, "offline scoring and verifier self-test")
    cmds["plot"] = Command(PlotConfig, _plot, "R1-Zero figures of a run")
    cmds["vllm-serve"] = Command(ServeConfig, serve, "generation server for rollout.engine=vllm_server (GPU, vLLM)")
    cmds["models"] = Command(None, _models, "model registry")
    cmds["tasks"] = Command(None, _tasks, "available tasks")
    return cmds


def _print_help(name: str, cmd: Command) -> None:
    print(f"usage: aha {name} [RECIPE.yaml] [key=value ...]\n\n{cmd.help}\n")
    if cmd.config_cls is None:
        return
    for key, default, doc in [*describe(cmd.config_cls), *describe(runtime.RuntimeConfig, "runtime.")]:
        print(f"  {key} = {default}")
        if doc:
            print(f"      {doc}")


ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
"""OS errors that name no file yet need no traceback: the machine, not aha, is at fault."""


def os_error_line(e: OSError) -> str | None:
    """The one-line message for an OS error on a path (None: a bug, whose traceback should show)."""
    if e.filename is None:
        return e.strerror if e.errno in ENVIRONMENT_ERRNOS else None
    path = Path(e.filename)
    if e.errno in (errno.EEXIST, errno.ENOTDIR):  # a folder was wanted where a file is
        blocker = next((p for p in (path, *path.parents) if p.is_file()), None)
        if blocker is not None:
            return f"cannot create folder {path}: {blocker} is a file"
    return f"{path}: {e.strerror or e}"


def parse_args(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """(recipe, overrides, debug) from the words after the command."""
    debug = "--debug" in argv
    words = [a for a in argv if a != "--debug"]
    recipe = None
    if words and "=" not in words[0]:
        recipe = words.pop(0)
    for w in words:
        if "=" not in w:
            raise AhaError(f"command line: '{w}' is not key=value (a recipe comes first)")
    return recipe, words, debug


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        print(f"aha {__version__}")
        return 0
    try:
        cmds = _commands()
        name = argv.pop(0)
        if name not in cmds:
            raise AhaError(f"unknown command '{name}'{closest(name, cmds)}; see `aha --help`")
        cmd = cmds[name]
        if "-h" in argv or "--help" in argv:
            _print_help(name, cmd)
            return 0
        recipe, overrides, debug = parse_args(argv)
        if _rank() and name not in DISTRIBUTED:  # every process would do the whole job and write the same files
            raise AhaError(f"aha {name} runs in one process; under torchrun run {', '.join(DISTRIBUTED)}")
        cfg = None
        if cmd.config_cls is not None:
            if name == "plot" and recipe and not recipe.endswith((".yaml", ".yml")):
                overrides.insert(0, f"run={recipe}")  # `aha plot RUN_DIR`
                recipe = None
            if name in ("train", "sft") and recipe and not recipe.endswith((".yaml", ".yml")):
                if (Path(recipe) / "config.yaml").exists():  # `aha train|sft RUN_DIR resume=true`
                    recipe = str(Path(recipe) / "config.yaml")
            if name == "pipeline":
                cfg = load_pipeline(recipe, overrides)  # every stage checked before the first runs
            else:
                cfg = load_config(cmd.config_cls, recipe, overrides)
            runtime.apply(runtime.load(recipe if recipe and recipe.endswith((".yaml", ".yml")) else None, overrides))
        cmd.run(cfg)
        _leave_process_group()
        return 0
    except AhaError as e:
        if debug:
            raise
        print(f"aha: {_rank()}{e}", file=sys.stderr)
        return 2
    except OSError as e:
        line = os_error_line(e)
        if debug or (line is None and not _rank()):
            raise
        print(f"aha: {_rank()}{line or _stopped(e)}", file=sys.stderr)
        return 2 if line else 1
    except KeyboardInterrupt:
        print(f"aha: {_rank()}interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug or not _rank():
            raise
        print(f"aha: {_rank()}{_stopped(e)}", file=sys.stderr)
        return 1


DISTRIBUTED = ("train", "sft", "rm")
"""The commands that share their work among the processes torchrun starts (aha.dist)."""


def _rank() -> str:
    """'rank R: ' in a process torchrun started with more than one process, else ''."""
    return f"rank {os.environ.get('RANK', '?')}: " if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1") else ""


PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Timeout")
"""How gloo and NCCL word a peer that died or stopped answering within the collective timeout."""


def _stopped(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if any(p in first for p in PEER_LOST):
        first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[source.cc:553] " prefix
        return f"stopped: another process failed or stopped answering ({first[:160]})"
    return f"{type(e).__name__}: {first} (--debug shows the traceback)"


def _leave_process_group() -> None:
    """Leave the process group a distributed command joined (nothing when none was joined)."""
    dist.close()


if __name__ == "__main__":
    sys.exit(main())
