"""aha as a library: each stage a function from a recipe, a config object or keys to its output folder."""

from __future__ import annotations

import subprocess
import sys

import pytest

import aha
from aha import runs
from aha.errors import AhaError

SMALL = ["grpo.group_size=2", "grpo.prompts_per_step=2", "rollout.max_new_tokens=6", "dtype=float32",
         "data.eval_size=2", "log.progress=false", "log.tensorboard=false", "selftest=false"]


def test_train_from_keys_and_from_a_config_object(tiny_model_dir, task_file, tmp_path):
    run = aha.train(None, *SMALL, model=tiny_model_dir, task=task_file, out_dir=str(tmp_path / "a"), steps=1)
    assert run == tmp_path / "a" and [s for s, _ in runs.list_checkpoints(run)] == [1]
    cfg = aha.TrainConfig(model=tiny_model_dir, task=task_file, out_dir=str(tmp_path / "b"), steps=1)
    again = aha.train(cfg, *SMALL, steps=2, lora={"rank": 2})  # overrides on top of the object, checked
    assert runs.latest_checkpoint(again)[0] == 2
    saved = (again / "config.yaml").read_text()
    assert "rank: 2" in saved and "steps: 2" in saved


def test_evaluate_returns_its_folder(tiny_model_dir, task_file, tmp_path):
    out = aha.evaluate(model=[tiny_model_dir], task=task_file, split="all", max_new_tokens=4, dtype="float32",
                       progress=False, out_dir=str(tmp_path / "ev"))
    assert (out / "summary.json").exists()


def test_a_bad_key_is_the_command_line_error(tmp_path):
    with pytest.raises(AhaError, match=r"grpo.group_sise: unknown key.*grpo.group_size"):
        aha.train(None, "grpo.group_sise=4")
    with pytest.raises(AhaError, match="config must be a recipe path or a TrainConfig"):
        aha.train(aha.SFTConfig())


def test_importing_aha_loads_no_torch():
    code = "import sys, aha; aha.TrainConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
