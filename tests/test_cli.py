"""The CLI as a user meets it: help, listings, and one-line errors with exit code 2 and no traceback."""

import json
import subprocess
import sys

import pytest


def aha(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "aha", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_help_lists_commands():
    r = aha("--help")
    assert r.returncode == 0
    for cmd in ("train", "eval", "score", "plot", "models", "tasks"):
        assert cmd in r.stdout


def test_train_help_lists_documented_keys():
    r = aha("train", "--help")
    assert r.returncode == 0 and "grpo.group_size = 8" in r.stdout and "Completions sampled per prompt" in r.stdout


def test_models_and_tasks(tmp_path):
    import os

    env = {**os.environ, "AHA_HOME": str(tmp_path)}
    r = aha("models", env=env)
    assert r.returncode == 0 and "smollm2-135m-instruct" in r.stdout and "gemma3-270m" in r.stdout
    r = aha("tasks")
    assert r.returncode == 0 and "chain_sum" in r.stdout and "refused" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["trian"], "unknown command 'trian' (did you mean 'train'?)"),
    (["train", "grpo.group_sise=4"], "grpo.group_sise: unknown key (did you mean 'grpo.group_size'?)"),
    (["train", "steps=many"], "steps: expected an integer"),
    (["train", "task=chain_sun", "model=nope-model"], "did you mean"),
    (["train", "missing_recipe.yaml"], "missing_recipe.yaml: recipe file not found"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    r = aha(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_recipe_typo_names_file_and_line(tmp_path):
    recipe = tmp_path / "x.yaml"
    recipe.write_text("steps: 3\nrollout:\n  max_new_tokes: 5\n")
    r = aha("train", str(recipe))
    assert r.returncode == 2 and f"{recipe}:3: rollout.max_new_tokes: unknown key" in r.stderr


def test_debug_shows_traceback():
    r = aha("train", "stesp=3", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_unknown_model_in_train_is_one_line(tmp_path):
    r = aha("train", "model=smollm3", f"out_dir={tmp_path}/run")
    assert r.returncode == 2 and "unknown model 'smollm3'" in r.stderr and "Traceback" not in r.stderr


def test_plot_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 0, "eval/accuracy": 0.1, "eval/length_mean": 20}] + [
        {"step": s, "reward": 0.1 * s, "accuracy": 0.05 * s, "length_mean": 30 + s, "reflection_per_1k_tokens": s}
        for s in range(1, 13)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = aha("plot", str(run))
    assert r.returncode == 0, r.stderr
    for name in ("accuracy.png", "response_length.png", "reflection.png", "r1_zero.png"):
        assert (run / name).stat().st_size > 1000
    r = aha("plot", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr
