"""The pipeline: references, located recipe errors, skip / resume / restart decisions with fake stages,
the manifest, and a tiny end-to-end run (rm, train, eval on a tiny random model) plus its plot."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from aha.errors import AhaError
from aha.stages import pipeline as pl


@dataclass
class FakeConfig:
    out_dir: str = ""
    """Output folder (set by the pipeline)."""
    source: str = ""
    """An input: a file, or an earlier stage's output via @NAME."""
    value: int = 0
    """Anything that changes the output."""
    resume: bool = False
    """Continue an interrupted run."""


CALLS: list[tuple[str, bool]] = []
FAIL_ONCE: set[str] = set()


def fake_run(cfg: FakeConfig) -> Path:
    """Appends to out_dir/log.txt (so a resume keeps earlier work) and writes result.txt."""
    name = Path(cfg.out_dir).name
    CALLS.append((name, cfg.resume))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a") as f:
        f.write(f"started resume={cfg.resume}\n")
    if name in FAIL_ONCE:
        FAIL_ONCE.discard(name)
        raise KeyboardInterrupt  # interrupted midway
    source = Path(cfg.source)
    upstream = (source / "result.txt").read_text() if source.is_dir() else source.read_text()
    (out / "result.txt").write_text(f"{upstream}+{name}{cfg.value}")
    return out


@pytest.fixture(autouse=True)
def fake_stage(monkeypatch):
    monkeypatch.setitem(pl.STAGES, "fake", fake_run)
    CALLS.clear()
    FAIL_ONCE.clear()


def write_recipe(tmp_path, body: str) -> str:
    """The recipe file: line 1 sets out_dir, `body` starts on line 2."""
    path = tmp_path / "pipe.yaml"
    path.write_text(f"out_dir: {tmp_path / 'out'}\n" + body)
    return str(path)


THREE = """stages:
  a: {kind: fake, source: DATA, value: 1}
  b: {kind: fake, source: "@a", value: 2}
  c: {kind: fake, source: "@b", value: 3}
"""


def three(tmp_path) -> str:
    """Stages a -> b -> c, each reading the previous one's output; a reads data.txt."""
    data = tmp_path / "data.txt"
    if not data.exists():
        data.write_text("seed")
    return write_recipe(tmp_path, THREE.replace("DATA", str(data)))


def run(recipe, *overrides):
    return pl.run_pipeline(pl.load_pipeline(recipe, list(overrides)), log=lambda _: None)


def names():
    return [n for n, _ in CALLS]


# ----------------------------------------------------------------------------------------- pure parts


def test_resolve_refs():
    outputs = {"rl": "runs/p/rl", "sample": "runs/p/sample"}
    found: list[str] = []
    tree = {"model": "@rl", "data": {"file": "@sample/samples.jsonl"}, "models": ["@rl", "base"], "note": "@@home"}
    assert pl.resolve_refs(tree, outputs, found) == {
        "model": "runs/p/rl", "data": {"file": "runs/p/sample/samples.jsonl"}, "models": ["runs/p/rl", "base"],
        "note": "@home"}
    assert found == ["rl", "sample", "rl"]
    with pytest.raises(KeyError, match="eval"):
        pl.resolve_refs({"model": "@eval"}, outputs, [])


@pytest.mark.parametrize("entry, forced, resumable, expected", [
    (None, False, True, "run"),
    ({"fingerprint": "f", "status": "done", "output": "."}, False, True, "skip"),
    ({"fingerprint": "f", "status": "done", "output": "/no/such/folder"}, False, True, "run"),
    ({"fingerprint": "f", "status": "done", "output": "."}, True, True, "run"),
    ({"fingerprint": "old", "status": "done", "output": "."}, False, True, "run"),
    ({"fingerprint": "f", "status": "running", "output": "."}, False, True, "resume"),
    ({"fingerprint": "f", "status": "running", "output": "."}, False, False, "run"),
    ({"fingerprint": "old", "status": "running", "output": "."}, False, True, "run"),
])
def test_decide(entry, forced, resumable, expected):
    assert pl.decide(entry, "f", forced, resumable) == expected


def test_fingerprint_ignores_resume_and_progress():
    base = {"model": "m", "resume": False, "log": {"progress": True, "every": 3}}
    same = {"model": "m", "resume": True, "log": {"progress": False, "every": 3}}
    other = {"model": "m", "resume": False, "log": {"progress": True, "every": 4}}
    fp = pl.fingerprint("train", base, {}, {})
    assert fp == pl.fingerprint("train", same, {}, {}) != pl.fingerprint("train", other, {}, {})
    assert fp != pl.fingerprint("train", base, {"rl": "artifact"}, {})
    assert fp != pl.fingerprint("train", base, {}, {"data.jsonl": "sha256:0"})


# ----------------------------------------------------------------------------------------- recipe errors


@pytest.mark.parametrize("body, message", [
    ("stages:\n  a: {kind: fak}\n", r"pipe.yaml:3: stages.a.kind: unknown stage kind 'fak' \(did you mean 'fake'"),
    ("stages:\n  a:\n    kind: fake\n    valu: 3\n", r"pipe.yaml:5: stages.a.valu: unknown key \(did you mean 'stages.a.value'"),
    ("stages:\n  a:\n    kind: fake\n    value: many\n", r"pipe.yaml:5: stages.a.value: expected an integer"),
    ("stages:\n  a: {kind: fake, source: \"@b\"}\n  b: {kind: fake}\n",
     r"pipe.yaml:3: stages.a.source: unknown stage '@b' \(a later stage"),
    ("stages:\n  a: {kind: fake}\n  b:\n    kind: fake\n    source: \"@aa\"\n",
     r"pipe.yaml:6: stages.b.source: unknown stage '@aa' \(did you mean 'a'"),
    ("stages:\n  a: {kind: fake, out_dir: x}\n", r"pipe.yaml:3: stages.a: the pipeline sets out_dir"),
    ("stages:\n  a: {value: 1}\n", r"pipe.yaml:3: stages.a: a stage is a mapping with a kind"),
    ("stages: {}\n", r"stages: no stages"),
])
def test_recipe_errors_name_file_line_and_key(tmp_path, body, message):
    with pytest.raises(AhaError, match=message) as e:
        pl.load_pipeline(write_recipe(tmp_path, body))
    assert "\n" not in str(e.value)


def test_unknown_from_stage_and_command_line_errors(tmp_path):
    recipe = three(tmp_path)
    with pytest.raises(AhaError, match=r"from: unknown stage 'bb' \(did you mean 'b'"):
        pl.load_pipeline(recipe, ["from=bb"])
    with pytest.raises(AhaError, match=r"command line: stages.b.value: expected an integer"):
        pl.load_pipeline(recipe, ["stages.b.value=lots"])


def test_a_missing_stage_module_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(pl.STAGES, "later", "aha.stages.not_written_yet:run")
    with pytest.raises(AhaError, match=r"pipe.yaml:3: stages.a.kind: stage kind 'later' needs "
                                       r"aha.stages.not_written_yet.run, which is not available"):
        pl.load_pipeline(write_recipe(tmp_path, "stages:\n  a: {kind: later}\n"))


# ----------------------------------------------------------------------------------------- skip / resume / restart


def test_rerun_skips_unchanged_stages(tmp_path):
    recipe = three(tmp_path)
    root = run(recipe)
    assert names() == ["a", "b", "c"]
    assert (root / "c" / "result.txt").read_text() == "seed+a1+b2+c3"
    manifest = json.loads((root / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["a", "b", "c"]
    entry = manifest["stages"]["b"]
    assert entry["status"] == "done" and entry["kind"] == "fake" and entry["config"]["value"] == 2
    assert entry["inputs"] == {"a": str(root / "a")} and entry["config"]["source"] == str(root / "a")
    CALLS.clear()
    run(recipe)
    assert names() == []
    assert json.loads((root / "manifest.json").read_text()) == manifest


def test_a_changed_stage_reruns_with_everything_that_reads_it(tmp_path):
    recipe = three(tmp_path)
    root = run(recipe)
    CALLS.clear()
    run(recipe, "stages.b.value=7")
    assert names() == ["b", "c"]
    assert (root / "c" / "result.txt").read_text() == "seed+a1+b7+c3"
    assert (root / "b" / "log.txt").read_text().count("started") == 1  # rerun from an emptied folder


def test_a_changed_input_file_reruns_the_stage_that_names_it(tmp_path):
    recipe = three(tmp_path)
    run(recipe)
    CALLS.clear()
    (tmp_path / "data.txt").write_text("new data")
    root = run(recipe)
    assert names() == ["a", "b", "c"]
    assert (root / "c" / "result.txt").read_text() == "new data+a1+b2+c3"


def test_an_interrupted_stage_resumes_and_the_rest_follow(tmp_path):
    recipe = three(tmp_path)
    FAIL_ONCE.add("b")
    with pytest.raises(KeyboardInterrupt):
        run(recipe)
    root = tmp_path / "out"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["stages"]["a"]["status"] == "done" and manifest["stages"]["b"]["status"] == "running"
    assert "c" not in manifest["stages"]
    CALLS.clear()
    run(recipe)
    assert CALLS == [("b", True), ("c", False)]
    assert (root / "b" / "log.txt").read_text() == "started resume=False\nstarted resume=True\n"
    assert json.loads((root / "manifest.json").read_text())["stages"]["b"]["status"] == "done"


def test_an_interrupted_rerun_keeps_the_records_of_stages_it_never_reached(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("seed")
    recipe = write_recipe(tmp_path, THREE.replace("DATA", str(data)) + f"  d: {{kind: fake, source: {data}, value: 4}}\n")
    run(recipe)
    FAIL_ONCE.add("b")
    with pytest.raises(KeyboardInterrupt):
        run(recipe, "from=b")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["a", "b", "c", "d"] and manifest["stages"]["d"]["status"] == "done"
    CALLS.clear()
    run(recipe)
    assert CALLS == [("b", True), ("c", False)]  # d reads only data.txt: still valid, skipped


def test_speed_settings_do_not_change_the_fingerprint():
    base = {"model": "m", "optim": {"share_prompt": True, "pack_tokens": 4096, "lr": 1.0}}
    fast = {"model": "m", "optim": {"share_prompt": False, "pack_tokens": 1024, "lr": 1.0}}
    assert pl.fingerprint("train", base, {}, {}) == pl.fingerprint("train", fast, {}, {})


def test_from_restarts_a_stage_and_every_later_one(tmp_path):
    recipe = three(tmp_path)
    root = run(recipe)
    CALLS.clear()
    run(recipe, "from=b")
    assert CALLS == [("b", False), ("c", False)]
    assert (root / "b" / "log.txt").read_text() == "started resume=False\n"
    CALLS.clear()
    run(recipe)
    assert names() == []


# ----------------------------------------------------------------------------------------- end to end


def test_tiny_end_to_end_pipeline_and_plot(tiny_model_dir, tmp_path):
    from aha.plot import plot_run, stage_curves

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{i} + 1?", "chosen": f"<answer> {i + 1} </answer>",
                                         "rejected": "no idea"}) + "\n" for i in range(8)))
    sums = tmp_path / "sums.jsonl"
    sums.write_text("".join(json.dumps({"prompt": f"What is {i} + 2?", "answer": str(i + 2), "task": "number"}) + "\n"
                            for i in range(10)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"prompt": f"Say something kind about {i}.", "kind": "general"}) + "\n"
                            for i in range(6)))
    recipe = write_recipe(tmp_path, f"""
stages:
  rm:
    kind: rm
    model: {tiny_model_dir}
    data: {pairs}
    eval_size: 2
    epochs: 1
    batch_size: 3
    device: cpu
    log: {{progress: false}}
  rl:
    kind: train
    model: {tiny_model_dir}
    task: {sums}
    extra_tasks: [{chat}]
    data: {{eval_size: 2}}
    steps: 2
    dtype: float32
    device: cpu
    selftest: false
    grpo: {{group_size: 2, prompts_per_step: 3}}
    rollout: {{max_new_tokens: 6}}
    log: {{progress: false, tensorboard: false, eval_every: 1}}
    rewards:
      weights: {{accuracy: 1.0, format_partial: 0.5}}
      by_kind: {{general: {{helpful: 1.0}}}}
      reward_models:
        helpful: {{model: "@rm", segment: summary, device: cpu}}
  eval:
    kind: eval
    model: ["@rl"]
    task: {sums}
    data: {{eval_size: 2}}
    split: eval
    samples: 1
    temperature: 0
    max_new_tokens: 6
    dtype: float32
    device: cpu
    progress: false
""")
    root = run(recipe)
    manifest = json.loads((root / "manifest.json").read_text())
    assert [(n, e["status"]) for n, e in manifest["stages"].items()] == [("rm", "done"), ("rl", "done"), ("eval", "done")]
    assert manifest["stages"]["rl"]["config"]["rewards"]["reward_models"]["helpful"]["model"] == str(root / "rm")
    rows = [json.loads(line) for line in (root / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert any("kind/general/helpful" in r for r in rows) and "eval/kind/general/helpful" in rows[-1]
    summaries = json.loads((root / "eval" / "summary.json").read_text())
    assert [Path(s["model"]).name for s in summaries][-1] == "step_000002"
    [png] = plot_run(str(root))
    assert png.name == "pipeline.png" and png.stat().st_size > 0
    curves = {c.name: c for c in stage_curves(root)}
    assert curves["rm"].accuracy and curves["rl"].start == curves["rm"].end and curves["eval"].accuracy
    CALLS.clear()
    mtime = (root / "rl" / "metrics.jsonl").stat().st_mtime_ns
    run(recipe)
    assert (root / "rl" / "metrics.jsonl").stat().st_mtime_ns == mtime  # nothing reran


@pytest.mark.parametrize("recipe", ["recipes/r1_zero.yaml", "recipes/r1.yaml", "recipes/r1_gpu.yaml"])
def test_shipped_recipes_load(recipe):
    p = pl.load_pipeline(recipe)
    assert p.stages[-1].kind == "eval" and all(s.config.out_dir.endswith(s.name) for s in p.stages)


def test_shipped_data_files_parse():
    from aha.data.tasks import load_jsonl_task
    from aha.stages.rm import load_pairs

    assert {e.kind for e in load_jsonl_task("recipes/data/general_prompts.jsonl")} == {"general"}
    assert len(load_pairs("recipes/data/preferences_helpful.jsonl")) >= 20
    assert len(load_pairs("recipes/data/preferences_harmless.jsonl")) >= 20


def test_cli_runs_a_pipeline_and_reports_bad_input_in_one_line(tmp_path, capsys):
    from aha.cli import main

    recipe = three(tmp_path)
    assert main(["pipeline", recipe]) == 0 and names() == ["a", "b", "c"]
    CALLS.clear()
    assert main(["pipeline", recipe, "from=c"]) == 0 and names() == ["c"]
    assert "pipeline folder:" in capsys.readouterr().out
    assert main(["pipeline", recipe, "stages.b.valu=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aha: command line: stages.b.valu: unknown key") and "\n" not in err


def test_no_stage_trains_on_any_split_the_pipeline_evaluates_on():
    """recipes/r1.yaml: stages with other seeds used to hold out only their own eval split (rl_scratch
    trained on 3 of the final eval's 50 problems, reasoning_rl on 1); every held-out set has distinct prompts."""
    from aha.data.tasks import load_task
    from aha.stages.pipeline import task_sections

    p = pl.load_pipeline("recipes/r1.yaml")
    by_name = {s.name: s for s in p.stages}
    evaluated = set()
    for stage in p.stages:
        for task, data, split in task_sections(stage.config):
            if data.eval_size:
                held = load_task(task, dataclasses.replace(data, holdout=[]), split)
                assert len({e.prompt for e in held}) == len(held), stage.name
                evaluated |= {e.prompt for e in held}
    assert len(evaluated) > 50  # reasoning-gym draws item i from seed + i: nearby seeds give shifted copies
    for name in ("rl_scratch", "reasoning_rl", "zero"):
        ((task, data, _),) = task_sections(by_name[name].config)
        train = {e.prompt for e in load_task(task, data, "train")}
        assert train and not train & evaluated, name
