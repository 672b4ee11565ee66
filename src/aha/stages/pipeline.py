"""`aha pipeline RECIPE`: run named stages in order, each reading earlier stages' outputs by name.

A pipeline recipe maps stage names to stage configs, run in the order written:

    out_dir: runs/r1
    stages:
      rl:   {kind: train, model: smollm2-135m-instruct, task: chain_sum, steps: 40}
      rm:   {kind: rm, data: recipes/data/preferences.jsonl}
      eval: {kind: eval, model: ["@rl"], task: chain_sum}

`kind` picks the stage function (`STAGES`); the other keys are that stage's config (`aha KIND --help`).
**References**: a string `@NAME` is stage NAME's output folder (`OUT_DIR/NAME`), `@NAME/sub/path` a path
inside it, `@@` a literal `@`; only earlier stages can be named. A run folder passed as a model stands
for its newest checkpoint (aha.models.resolve), so `model: "@rl"` is the model stage rl trained. Every
stage writes to `OUT_DIR/NAME`; the pipeline sets each stage's `out_dir`.

**Manifest**: `OUT_DIR/manifest.json` (rewritten atomically at every change) records for each stage its
kind, config (references resolved), inputs, output, status (running or done), timing and fingerprint.
**Re-running** the recipe skips a stage whose fingerprint (a hash of its kind, its config without
`resume`/`progress`, the artifacts of the stages it reads and the contents of the files it names) is
unchanged and done; resumes one that was interrupted (status running, same fingerprint) with
`resume=true` when its config has that key, else reruns it; reruns one whose fingerprint changed, from
an emptied folder. Every completed run of a stage gets a new artifact id, so the stages that read it
rerun too. `from=STAGE` reruns STAGE and every later stage regardless.

**Several processes**: `launcher: {nproc: N}` in a train, sft or rm stage runs that stage under
`torchrun --nproc_per_node=N` (aha.dist), its config handed over as `OUT_DIR/NAME/launch.yaml`; the pipeline
itself stays one process. The launcher is not part of the fingerprint (the stage computes the same update).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aha.config import build_section, load_config, recipe_source, save_config, to_dict
from aha.data.tasks import TaskConfig, is_file_task, split_spec
from aha.errors import AhaError, closest
from aha.io import atomic_write_text, path_signature
from aha.runtime import applied
from aha.stages import STAGES, stage_entry

MANIFEST = "manifest.json"
NOT_HASHED = ("resume", "progress", "log.progress", "optim.share_prompt", "optim.pack_tokens",
              "optim.share_prefix", "optim.merge_groups", "optim.embedding_grad_once", "optim.shared_casts",
              "save_rejected", "sample.save_rejected")
"""Config keys that do not change what a stage produces, only how fast or what else it writes (dotted for
nested ones). Process settings (threads, the allocator) are not in stage configs at all (`aha.runtime`)."""
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_REF = re.compile(r"^@([A-Za-z][A-Za-z0-9_-]*)(/.*)?$")


@dataclass
class PipelineConfig:
    out_dir: str = "runs/pipeline"
    """Pipeline folder: one sub-folder per stage (that stage's out_dir) and manifest.json."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Stage name -> {kind: train|sft|sample|coldstart|distill|rm|eval, ...that stage's config keys}, run in
    the order written. "@NAME" (or "@NAME/sub/path") in a value is earlier stage NAME's output folder."""
    restart_from: str = ""
    """Rerun this stage and every later one even when unchanged (`from=STAGE` on the command line)."""


@dataclass
class Stage:
    name: str
    kind: str
    config: Any
    """The stage's config object: references resolved to paths, out_dir set by the pipeline."""
    needs: list[str]
    """Earlier stages whose outputs this one reads."""
    nproc: int = 1
    """Processes torchrun starts for the stage (`launcher.nproc`); 1: it runs in the pipeline's process."""


DISTRIBUTED_KINDS = ("train", "sft", "rm")
"""Stage kinds that may run under torchrun (`launcher.nproc` > 1)."""


@dataclass
class Pipeline:
    config: PipelineConfig
    stages: list[Stage]
    recipe: str = ""


# ----------------------------------------------------------------------------------------- references


def resolve_refs(value: Any, outputs: dict[str, str], found: list[str]) -> Any:
    """`value` with every "@NAME[/path]" string replaced by outputs[NAME][/path] ("@@" -> "@"); the names
    used are appended to `found`. KeyError(NAME) for a name not in `outputs`."""
    if isinstance(value, dict):
        return {k: resolve_refs(v, outputs, found) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, outputs, found) for v in value]
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    if value.startswith("@@"):
        return value[1:]
    m = _REF.match(value)
    if m is None or m.group(1) not in outputs:
        raise KeyError(m.group(1) if m else value)
    found.append(m.group(1))
    return outputs[m.group(1)] + (m.group(2) or "")


def _first_ref(tree: Any, prefix: str, name: str) -> str:
    """The dotted key of the first value in `tree` that mentions "@name" (for error messages)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            hit = _first_ref(v, f"{prefix}.{k}", name)
            if hit:
                return hit
    elif isinstance(tree, list):
        for v in tree:
            hit = _first_ref(v, prefix, name)
            if hit:
                return hit
    elif isinstance(tree, str) and (tree == f"@{name}" or tree.startswith(f"@{name}/")):
        return prefix
    return ""


def load_pipeline(recipe: str | None, overrides: list[str] | None = None) -> Pipeline:
    """Load and check every stage up front (a typo in the last stage fails before the first one runs).
    `from=STAGE` is accepted for restart_from=STAGE."""
    overrides = [f"restart_from={o[5:]}" if o.startswith("from=") else o for o in overrides or []]
    cfg = load_config(PipelineConfig, recipe, overrides)
    src = recipe_source(recipe, overrides)
    if not cfg.stages:
        raise AhaError(f"{src.where('stages')}: stages: no stages (map stage names to configs with a kind)")
    root = Path(cfg.out_dir)
    outputs: dict[str, str] = {}
    stages = []
    for name, body in cfg.stages.items():
        key = f"stages.{name}"
        if not _NAME.match(name):
            raise AhaError(f"{src.where(key)}: {key}: stage names are letters, digits, _ and - (a letter first)")
        if not isinstance(body, dict) or "kind" not in body:
            raise AhaError(f"{src.where(key)}: {key}: a stage is a mapping with a kind ({', '.join(STAGES)})")
        tree = {k: v for k, v in body.items() if k not in ("kind", "launcher")}
        try:
            cls, _, _ = stage_entry(str(body["kind"]))
        except AhaError as e:
            raise AhaError(f"{src.where(key + '.kind')}: {key}.kind: {e}") from None
        nproc = launcher_nproc(body, key, src)
        if "out_dir" in tree:
            raise AhaError(f"{src.where(key + '.out_dir')}: {key}: the pipeline sets out_dir ({root / name})")
        if "out_dir" not in {f.name for f in dataclasses.fields(cls)}:
            raise AhaError(f"{src.where(key)}: {key}: stage kind '{body['kind']}' has no out_dir to write to")
        found: list[str] = []
        try:
            tree = resolve_refs(tree, outputs, found)
        except KeyError as e:
            ref = e.args[0]
            where = _first_ref(body, key, ref) or key
            later = " (a later stage: only earlier ones can be read)" if ref in cfg.stages else closest(ref, outputs)
            raise AhaError(f"{src.where(where)}: {where}: unknown stage '@{ref}'{later}") from None
        tree["out_dir"] = str(root / name)
        config = build_section(cls, tree, key + ".", src)
        stages.append(Stage(name, str(body["kind"]), config, sorted(set(found)), nproc))
        outputs[name] = str(root / name)
    hold_out_every_eval_split(stages)
    if cfg.restart_from and cfg.restart_from not in cfg.stages:
        raise AhaError(f"from: unknown stage '{cfg.restart_from}'{closest(cfg.restart_from, cfg.stages)}; "
                       f"stages: {', '.join(cfg.stages)}")
    return Pipeline(cfg, stages, str(recipe or ""))


def launcher_nproc(body: dict, key: str, src) -> int:
    """A stage's `launcher.nproc` (1 when there is no launcher), checked: a positive integer, and above 1 only
    for the kinds that share their work among processes."""
    launcher = body.get("launcher", {})
    where = f"{key}.launcher"
    if not isinstance(launcher, dict) or set(launcher) - {"nproc"}:
        raise AhaError(f"{src.where(where)}: {where}: a mapping with one key, nproc (processes for torchrun)")
    nproc = launcher.get("nproc", 1)
    where += ".nproc"
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise AhaError(f"{src.where(where)}: {where}: must be an integer >= 1, got {nproc!r}")
    if nproc > 1 and body["kind"] not in DISTRIBUTED_KINDS:
        raise AhaError(f"{src.where(where)}: {where}: stage kind '{body['kind']}' runs in one process "
                       f"(torchrun runs {', '.join(DISTRIBUTED_KINDS)})")
    return nproc


def run_distributed(kind: str, config: Any, nproc: int) -> Path:
    """`torchrun --nproc_per_node=nproc -m aha KIND OUT_DIR/launch.yaml`: a stage in several processes."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "launch.yaml"
    save_config(config, recipe, runtime=applied())  # the pipeline's process settings, for each process
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "aha",
           kind, str(recipe)]
    code = subprocess.run(cmd).returncode
    if code:
        raise AhaError(f"{out}: the {kind} stage under torchrun ({nproc} processes) exited with {code} "
                       "(its processes' lines are above)")
    return out


def task_sections(config: Any):
    """(task, data section, evaluated split) of every config node, nested ones included, that names a
    `task` with its `data: TaskConfig` (a train stage's held-out split; an eval stage's split; a distill
    stage's sampling task)."""
    if not dataclasses.is_dataclass(config):
        return
    task, data = getattr(config, "task", None), getattr(config, "data", None)
    if isinstance(task, str) and isinstance(data, TaskConfig):
        split = getattr(config, "split", "eval")
        if split == "auto":
            split = "all" if is_file_task(task) else "eval"
        yield task, data, split
    for f in dataclasses.fields(config):
        yield from task_sections(getattr(config, f.name))


def hold_out_every_eval_split(stages: list[Stage]) -> None:
    """Give every stage's task the evaluation splits of all stages (`TaskConfig.holdout`): a stage with
    another seed must not train on the problems that another stage (or the final eval) tests on."""
    specs: list[dict] = []
    for stage in stages:
        for task, data, split in task_sections(stage.config):
            spec = split_spec(task, data, split)
            if (split != "eval" or data.eval_size > 0 or data.eval_file) and spec not in specs:
                specs.append(spec)
    for stage in stages:
        for _, data, _ in task_sections(stage.config):
            data.holdout = [*data.holdout, *(s for s in specs if s not in data.holdout)]


# ----------------------------------------------------------------------------------------- fingerprints


def _drop(tree: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if isinstance(tree.get(head), dict):
            _drop(tree[head], rest)
    else:
        tree.pop(head, None)


def _strings(value: Any):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def input_files(config_dict: dict, root: Path) -> dict[str, str]:
    """Signatures of the existing files and folders a config names, outside the pipeline folder (the
    stages' own outputs are covered by their artifact ids)."""
    out = {}
    for s in _strings(config_dict):
        if not s or len(s) > 4096 or "\n" in s:
            continue
        p = Path(s)
        try:
            if not p.exists() or p.resolve().is_relative_to(root.resolve()):
                continue
        except OSError:
            continue
        out[s] = path_signature(p)
    return out


def fingerprint(kind: str, config_dict: dict, upstream: dict[str, str], files: dict[str, str]) -> str:
    """Hash of what a stage's output depends on: kind, config (without NOT_HASHED keys), the artifact ids
    of the stages it reads, and the signatures of the files it names."""
    tree = json.loads(json.dumps(config_dict, default=str))
    for key in NOT_HASHED:
        _drop(tree, key)
    blob = json.dumps({"kind": kind, "config": tree, "upstream": upstream, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def decide(entry: dict | None, fp: str, forced: bool, resumable: bool) -> str:
    """What to do with a stage: "skip" (done with the same fingerprint), "resume" (interrupted with the same
    fingerprint, and its config has `resume`), or "run" (from an empty folder)."""
    if forced or entry is None or entry.get("fingerprint") != fp:
        return "run"
    if entry.get("status") == "done" and Path(entry.get("output", "")).exists():
        return "skip"
    if entry.get("status") == "running" and resumable:
        return "resume"
    return "run"


# ----------------------------------------------------------------------------------------- running


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        return {"stages": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AhaError(f"{path}:{e.lineno}: malformed manifest ({e.msg}); delete it to rerun every stage") from None
    manifest.setdefault("stages", {})
    return manifest


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_pipeline(p: Pipeline, log: Callable[[str], None] = print) -> Path:
    """Run, resume or skip each stage in order; returns the pipeline folder."""
    root = Path(p.config.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    old = read_manifest(root)["stages"]
    # Earlier records stay until their stage is decided again: an interrupted run must not forget the stages
    # it never reached (those that do not read the interrupted one are still valid).
    manifest: dict[str, Any] = {"recipe": p.recipe, "out_dir": str(root),
                                "stages": {s.name: old[s.name] for s in p.stages if s.name in old}}

    def write() -> None:
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")

    forced = False
    for stage in p.stages:
        forced = forced or stage.name == p.config.restart_from
        cls, fn, _ = stage_entry(stage.kind)
        cfg_dict = to_dict(stage.config)
        upstream = {n: manifest["stages"][n]["artifact"] for n in stage.needs}
        fp = fingerprint(stage.kind, cfg_dict, upstream, input_files(cfg_dict, root))
        resumable = "resume" in {f.name for f in dataclasses.fields(cls)}
        action = decide(old.get(stage.name), fp, forced, resumable)
        if action == "skip":
            manifest["stages"][stage.name] = old[stage.name]
            write()
            log(f"[pipeline] {stage.name} ({stage.kind}): unchanged, skipped")
            continue
        out = Path(stage.config.out_dir)
        config = stage.config
        if action == "run":
            shutil.rmtree(out, ignore_errors=True)
        else:
            config = dataclasses.replace(config, resume=True)
        log(f"[pipeline] {stage.name} ({stage.kind}): {'resuming' if action == 'resume' else 'running'} -> {out}")
        entry = {"kind": stage.kind, "status": "running", "fingerprint": fp, "output": str(out),
                 "inputs": {n: str(root / n) for n in stage.needs}, "config": cfg_dict, "started": _now()}
        manifest["stages"][stage.name] = entry
        write()
        t0 = time.perf_counter()
        try:
            result = run_distributed(stage.kind, config, stage.nproc) if stage.nproc > 1 else fn(config)
        except BaseException:
            log(f"[pipeline] {stage.name} stopped; rerun the same command to resume it (from={stage.name} restarts it)")
            raise
        entry.update(status="done", output=str(result or out), finished=_now(),
                     seconds=round(time.perf_counter() - t0, 3))
        entry["artifact"] = hashlib.sha256(f"{fp}:{entry['finished']}:{time.time_ns()}".encode()).hexdigest()[:16]
        write()
    return root
