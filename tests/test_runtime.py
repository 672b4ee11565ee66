"""Process settings (aha.runtime): a recipe's `runtime:` section and `runtime.*` overrides, apart from the
stage's config, applied once by the command line and the Python API, recorded in a run's config.yaml."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import aha
from aha import cli, runtime
from aha.config import load_config, save_config
from aha.errors import AhaError
from aha.stages import STAGES
from aha.training.config import SFTConfig, TrainConfig


def recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_the_runtime_section_is_read_apart_from_the_stage_config(tmp_path):
    r = recipe(tmp_path, "steps: 3\nruntime:\n  malloc: default\n  threads: 2\n")
    cfg = load_config(TrainConfig, r, ["runtime.threads=1"])
    assert cfg.steps == 3 and not hasattr(cfg, "malloc") and not hasattr(cfg, "threads")
    assert runtime.load(r, ["runtime.threads=1"]) == runtime.RuntimeConfig(threads=1, malloc="default")
    assert runtime.load(None, ["steps=3"]) == runtime.RuntimeConfig()
    assert runtime.load(None, ["runtime={malloc: default}"]).malloc == "default"


def test_bad_runtime_values_are_located(tmp_path):
    r = recipe(tmp_path, "steps: 3\nruntime:\n  malloc: fast\n")
    with pytest.raises(AhaError, match=r"r.yaml:3: runtime.malloc: expected one of \['auto', 'tuned', 'default'\]"):
        runtime.load(r)
    with pytest.raises(AhaError, match=r"command line: runtime.threads: must be >= 0"):
        runtime.load(None, ["runtime.threads=-1"])
    with pytest.raises(AhaError, match=r"command line: runtime.thread: unknown key.*runtime.threads"):
        runtime.load(None, ["runtime.thread=2"])


@pytest.mark.parametrize("cls", [TrainConfig, SFTConfig])
def test_the_old_keys_say_where_the_setting_went(tmp_path, cls):
    r = recipe(tmp_path, "malloc: default\n")
    with pytest.raises(AhaError, match=r"r.yaml:1: malloc: a process setting now: runtime.malloc"):
        load_config(cls, r)
    with pytest.raises(AhaError, match=r"command line: threads: a process setting now: runtime.threads"):
        load_config(cls, None, ["threads=2"])


def test_a_saved_config_carries_its_runtime_and_reads_back(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(TrainConfig(steps=5), path, runtime=runtime.RuntimeConfig(malloc="default"))
    assert yaml.safe_load(path.read_text())["runtime"] == {"threads": 0, "malloc": "default", "head_kernel": "auto",
                                                              "decode_kernel": "auto", "kernel_cache": 128}
    assert load_config(TrainConfig, path).steps == 5
    assert runtime.load(path).malloc == "default"


def test_apply_bounds_onednns_kernel_caches_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "1024")  # set by the user before the process started: kept
    monkeypatch.setattr(runtime, "_applied", runtime.applied())
    runtime.apply(runtime.load(None, ["runtime.kernel_cache=64"]))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    assert os.environ["LRU_CACHE_CAPACITY"] == "1024"
    assert runtime.applied().kernel_cache == 64
    with pytest.raises(AhaError, match=r"runtime.kernel_cache"):
        runtime.load(None, ["runtime.kernel_cache=0"])


@dataclass
class NoopConfig:
    out_dir: str = "out"


def _noop(cfg: NoopConfig) -> Path:
    return Path(cfg.out_dir)


def test_the_command_line_and_the_api_apply_the_settings(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(runtime, "apply", seen.append)
    monkeypatch.setitem(STAGES, "noop", _noop)
    r = recipe(tmp_path, "out_dir: x\nruntime:\n  malloc: default\n")
    assert cli.main(["noop", str(r), "runtime.threads=1"]) == 0
    assert aha.run_stage("noop", str(r)) == Path("x")
    assert aha.run_stage("noop", None, "runtime.threads=2") == Path("out")
    assert seen == [runtime.RuntimeConfig(threads=1, malloc="default"), runtime.RuntimeConfig(malloc="default"),
                    runtime.RuntimeConfig(threads=2)]


def test_apply_sets_torch_threads_and_records_the_settings(monkeypatch):
    import torch

    monkeypatch.setattr(runtime, "_applied", runtime.applied())  # restored after the test
    before = torch.get_num_threads()
    try:
        runtime.apply(runtime.RuntimeConfig(threads=1, malloc="default"))
        assert torch.get_num_threads() == 1
        assert runtime.applied() == runtime.RuntimeConfig(threads=1, malloc="default")
    finally:
        torch.set_num_threads(before)


def test_malloc_auto_settles_by_the_model_size(monkeypatch):
    tuned = []
    monkeypatch.setattr(runtime, "tune_malloc", lambda: tuned.append(True) or True)
    monkeypatch.setattr(runtime, "_applied", runtime.RuntimeConfig())
    assert runtime.applied().malloc == "auto"
    assert runtime.settle_malloc(runtime.AUTO_TUNED_MAX_PARAMS) == "default" and not tuned
    assert runtime.applied().malloc == "default"
    monkeypatch.setattr(runtime, "_applied", runtime.RuntimeConfig())
    assert runtime.settle_malloc(135_000_000) == "tuned" and tuned == [True]
    monkeypatch.setattr(runtime, "_applied", runtime.RuntimeConfig(malloc="default"))
    assert runtime.settle_malloc(1_000) == "default"  # a setting given is kept


def test_release_hands_freed_heap_memory_back(monkeypatch):
    import platform

    import torch

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc_trim")
    monkeypatch.setattr(runtime, "_tuned", False)  # other tests may have tuned this process; trimming still works

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1])

    blocks = [torch.ones(4096, dtype=torch.uint8) * i for i in range(64 * 1024)]  # 256 MiB of small heap blocks
    keep = blocks[-1]
    del blocks
    before = rss()
    runtime.release()
    assert rss() < before - 16 * 1024 and keep.sum() > 0  # at least 64 MiB went back (in 4 KiB pages)
