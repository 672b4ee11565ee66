"""Config parsing: YAML recipes, dotted overrides, located one-line errors."""

from dataclasses import dataclass, field

import pytest

from aha.config import describe, load_config, save_config
from aha.errors import AhaError


@dataclass
class Inner:
    group_size: int = 8
    """G."""
    kl_coef: float = 0.0
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    model: str = "m"
    steps: int = 10
    flag: bool = False
    grpo: Inner = field(default_factory=Inner)
    weights: dict[str, float] = field(default_factory=dict)


def test_defaults_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: x\ngrpo:\n  group_size: 4\n")
    cfg = load_config(Outer, recipe, ["grpo.kl_coef=0.04", "steps=3", "flag=true", "grpo.names=a,b",
                                      "weights.accuracy=1"])
    assert (cfg.model, cfg.steps, cfg.flag) == ("x", 3, True)
    assert cfg.grpo.group_size == 4 and cfg.grpo.kl_coef == 0.04 and cfg.grpo.names == ["a", "b"]
    assert cfg.weights == {"accuracy": 1.0}


def test_unknown_key_in_recipe_names_file_line_and_suggestion(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: x\ngrpo:\n  group_sise: 4\n")
    with pytest.raises(AhaError) as e:
        load_config(Outer, recipe)
    msg = str(e.value)
    assert f"{recipe}:3" in msg and "grpo.group_sise" in msg and "grpo.group_size" in msg
    assert "\n" not in msg


def test_a_renamed_key_names_its_new_name_and_where_it_was_set(tmp_path):
    from aha.stages.evaluate import EvalConfig
    from aha.stages.sample import SampleConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: x\nbatch_size: 8\n")
    for cls in (EvalConfig, SampleConfig):
        with pytest.raises(AhaError, match=rf"^{recipe}:2: batch_size: renamed to max_batch$"):
            load_config(cls, recipe)
        with pytest.raises(AhaError, match=r"batch_size: renamed to max_batch"):
            load_config(cls, None, ["batch_size=8"])
        assert load_config(cls, None, ["max_batch=8"]).max_batch == 8


def test_the_reward_model_shares_the_optim_and_log_sections():
    from aha.stages.rm import RMConfig

    for old, new in (("lr=1e-4", "optim.lr"), ("checkpoint_every=5", "log.checkpoint_every"),
                     ("micro_batch_size=2", "optim.micro_batch_size"), ("progress=false", "log.progress")):
        with pytest.raises(AhaError, match=rf"{old.split('=')[0]}: renamed to {new}$"):
            load_config(RMConfig, None, [old])
    cfg = load_config(RMConfig, None, ["optim.lr=1e-4", "log.checkpoint_every=5"])
    assert cfg.optim.lr == 1e-4 and cfg.log.checkpoint_every == 5


def test_wrong_type_on_command_line():
    with pytest.raises(AhaError, match=r"command line: grpo.group_size: expected an integer"):
        load_config(Outer, None, ["grpo.group_size=four"])
    with pytest.raises(AhaError, match="unknown key.*did you mean 'steps'"):
        load_config(Outer, None, ["stesp=3"])
    with pytest.raises(AhaError, match="not key=value"):
        load_config(Outer, None, ["steps"])


def test_invalid_yaml_and_missing_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(AhaError, match="bad.yaml:.*invalid YAML"):
        load_config(Outer, bad)
    with pytest.raises(AhaError, match="recipe file not found"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Outer, None, ["steps=5"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Outer, tmp_path / "config.yaml") == cfg


def test_describe_lists_docs():
    rows = {k: doc for k, _, doc in describe(Outer)}
    assert rows["grpo.group_size"] == "G."


def test_train_config_keys_users_type():
    from aha.training.config import TrainConfig

    cfg = load_config(TrainConfig, None, ["model=x", "task=chain_sum", "out_dir=o", "steps=2", "seed=1",
                                          "grpo.group_size=4", "grpo.prompts_per_step=2", "grpo.kl_coef=0.04",
                                          "rollout.max_new_tokens=32", "rollout.temperature=0.7", "dtype=float32"])
    assert cfg.grpo.group_size == 4 and cfg.rollout.max_new_tokens == 32
    with pytest.raises(AhaError, match="expected one of"):
        load_config(TrainConfig, None, ["dtype=float8"])


@pytest.mark.parametrize("items,message", [
    (["lora.rank=-1"], "command line: lora.rank: must be >= 0"),
    (["lora.rank=4", "lora.target_modules=[]"], "command line: lora.target_modules: empty"),
    (["optim.logprob_chunk=-3"], "command line: optim.logprob_chunk: must be >= 0"),
])
def test_field_checks_name_the_whole_key_and_where_it_was_set(items, message, tmp_path):
    from aha.training.config import TrainConfig

    with pytest.raises(AhaError, match=message):
        load_config(TrainConfig, "recipes/r1_zero_smollm2.yaml", items)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 2\nlora:\n  rank: -2\n")
    with pytest.raises(AhaError, match=r"r.yaml:3: lora.rank: must be >= 0"):
        load_config(TrainConfig, recipe)


def test_aha_train_without_arguments_is_the_cpu_recipe():
    from aha.training.config import TrainConfig

    assert load_config(TrainConfig, "recipes/r1_zero_smollm2.yaml") == TrainConfig()


def test_every_recipe_loads():
    """A pipeline recipe (a `stages` mapping) loads every stage; any other recipe loads as the config of the
    command its name starts with (eval_, sft_, sample_, coldstart_, distill_), else as `aha train`'s."""
    from pathlib import Path

    import yaml

    from aha.cli import _commands
    from aha.stages.pipeline import load_pipeline
    from aha.training.config import TrainConfig

    cmds = _commands()
    for recipe in sorted(Path("recipes").glob("*.yaml")):
        if "stages" in (yaml.safe_load(recipe.read_text()) or {}):
            load_pipeline(str(recipe))
            continue
        cmd = cmds.get(recipe.name.split("_")[0])
        load_config(cmd.config_cls if cmd and cmd.config_cls else TrainConfig, recipe)


def test_nested_overrides_keep_the_other_defaults(tmp_path):
    from aha.training.config import TrainConfig

    cfg = load_config(TrainConfig, None, ["data.eval_size=0", "rewards.weights.format=0.2", "data.args.max_digits=3"])
    default = TrainConfig()
    assert cfg.data.size == default.data.size and cfg.data.eval_size == 0
    assert cfg.data.args == {**default.data.args, "max_digits": 3}
    assert cfg.rewards.weights == {**default.rewards.weights, "format": 0.2}
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rewards:\n  weights: {accuracy: 1.0}\ndata:\n  eval_size: 5\n")
    cfg = load_config(TrainConfig, recipe)
    assert cfg.rewards.weights == {"accuracy": 1.0}  # a mapping in a recipe says exactly what it means
    assert cfg.data.eval_size == 5 and cfg.data.args == default.data.args


def test_overlong_follows_the_sampling_cut_and_a_contradiction_is_refused(tmp_path):
    """An overlong penalty at 256 tokens while sampling 4,096 gives -1 to every long answer: refused with the
    file, line and key; left unset it follows rollout.max_new_tokens (buffer: a fifth)."""
    from aha.training.config import TrainConfig

    cfg = load_config(TrainConfig, None, ["rollout.max_new_tokens=4096", "rewards.weights={accuracy: 1.0, overlong: 1.0}"])
    assert (cfg.rewards_config.overlong.max_tokens, cfg.rewards_config.overlong.buffer) == (4096, 819)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rollout: {max_new_tokens: 4096}\nrewards:\n  weights: {accuracy: 1.0, overlong: 1.0}\n"
                      "  overlong: {max_tokens: 256}\n")
    with pytest.raises(AhaError, match=r"r\.yaml:4: rewards\.overlong\.max_tokens: 256 is not rollout\.max_new_tokens"):
        load_config(TrainConfig, str(recipe), [])
    # not weighted: no contradiction to refuse
    load_config(TrainConfig, None, ["rollout.max_new_tokens=4096", "rewards.overlong.max_tokens=256"])


def test_a_key_means_one_thing_in_every_command():
    """A key that several commands' configs share (seed, dtype, template, max_new_tokens, max_batch, ...) has one
    type everywhere, so the same value is valid everywhere. The exceptions say why they differ."""
    import collections
    import dataclasses
    import typing

    from aha.plot import PlotConfig
    from aha.rewards.score_cli import ScoreConfig
    from aha.rollout.vllm_server import ServeConfig
    from aha.stages import STAGES, stage_entry
    from aha.stages.pipeline import PipelineConfig

    different = {
        ("dtype", "serve"),  # vLLM's dtype (float16 too), not aha's compute dtype
        ("engine", "train"),  # vllm_server exists for training only
        ("model", "eval"),  # eval takes several models
        ("size", "coldstart"),  # how many cold-start samples to build, not a task's size
    }
    types = collections.defaultdict(dict)

    def walk(cls, prefix, command):
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.", command)
            elif (f.name, command) not in different:
                types[f.name][f"{command}:{prefix}{f.name}"] = str(hints[f.name])

    commands = {kind: stage_entry(kind)[0] for kind in STAGES}
    commands.update(pipeline=PipelineConfig, score=ScoreConfig, plot=PlotConfig, serve=ServeConfig)
    for command, cls in commands.items():
        walk(cls, "", command)
    clashes = {name: uses for name, uses in types.items() if len(set(uses.values())) > 1}
    assert not clashes, clashes
    # the decode batch is max_batch everywhere; batch_size is only the reward model's pairs per step
    assert set(types["batch_size"]) == {"rm:batch_size"}
    assert {k.split(":")[0] for k in types["max_batch"]} >= {"train", "eval", "sample", "coldstart", "distill"}
