"""Config checking: overrides, unknown and mistyped keys, unknown components, CLI errors."""
import os

import pytest
import yaml

from kplm.config import apply_overrides, check_arguments, load_yaml
from kplm.errors import ConfigError
from kplm.training.pretrain import PretrainSpec
from kplm.training.trainer_config import TrainerConfig

from conftest import ROOT, run_kplm


def test_overrides_nested_and_typed():
    config = {"trainer": {"steps": 10}}
    apply_overrides(config, ["trainer.steps=20", "trainer.learning_rate=1e-3",
                             "objective.whole_word=false", "data.train.paths=[a.txt, b.txt]"])
    trainer = check_arguments(TrainerConfig, config["trainer"], "trainer")
    assert (trainer["steps"], trainer["learning_rate"]) == (20, 1e-3)
    assert config["objective"] == {"whole_word": False}
    assert config["data"]["train"]["paths"] == ["a.txt", "b.txt"]


def test_override_without_equals_refused():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["trainer.steps"])


def test_unknown_key_has_path_and_suggestion(tiny_config):
    tiny_config["trainer"]["learning_rat"] = 0.1
    with pytest.raises(ConfigError) as e:
        PretrainSpec(tiny_config)
    assert "'trainer.learning_rat'" in str(e.value)
    assert "Did you mean 'learning_rate'?" in str(e.value)


def test_component_option_checked_against_constructor(tiny_config):
    tiny_config["backbone"]["num_layer"] = 3
    with pytest.raises(ConfigError, match=r"'backbone.num_layer'.*Did you mean 'num_layers'"):
        PretrainSpec(tiny_config)


def test_wrong_type_names_key_and_expected_type(tiny_config):
    tiny_config["backbone"]["hidden_dim"] = "big"
    with pytest.raises(ConfigError, match=r"'backbone.hidden_dim': expected int, got 'big'"):
        PretrainSpec(tiny_config)


def test_literal_choices(tiny_config):
    tiny_config["trainer"]["decay"] = "cosin"
    with pytest.raises(ConfigError, match=r"'trainer.decay'.*Did you mean 'cosine'"):
        PretrainSpec(tiny_config)


def test_unknown_component_name(tiny_config):
    tiny_config["objective"]["name"] = "maskd_lm"
    with pytest.raises(ConfigError, match=r"objective.name.*Did you mean 'masked_lm'"):
        PretrainSpec(tiny_config)


def test_vocabulary_size_is_set_by_kplm(tiny_config):
    tiny_config["backbone"]["vocabulary_size"] = 100
    with pytest.raises(ConfigError, match="set by kplm itself"):
        PretrainSpec(tiny_config)


def test_defaults_filled_in(tiny_config):
    resolved = PretrainSpec(tiny_config).resolved()
    assert resolved["trainer"]["weight_decay"] == 0.01
    assert resolved["objective"]["mask_rate"] == 0.15
    assert resolved["backbone"]["activation"] == "gelu"


def test_trainer_config_validates_itself():
    with pytest.raises(ConfigError, match="multiple of 'trainer.eval_every'"):
        TrainerConfig(steps=100, eval_every=30)
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        TrainerConfig(batch_size=0)
    assert check_arguments(TrainerConfig, {"learning_rate": "5e-4"}, "trainer")["learning_rate"] == 5e-4


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  steps: 10\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: invalid YAML"):
        load_yaml(str(path))


def test_every_shipped_config_is_valid(pretrained_run, tmp_path):
    from kplm.testing import write_tiny_hf_checkpoint
    from kplm.training.finetune import FinetuneSpec
    checkpoint = str(tmp_path / "hf")  # stands in for the checkpoints configs name
    write_tiny_hf_checkpoint(checkpoint, "bert")
    configs = os.path.join(ROOT, "configs")
    for name in sorted(os.listdir(configs)):
        raw = load_yaml(os.path.join(configs, name))
        if raw.get("backbone", {}).get("name") == "hf":
            raw["backbone"]["path"] = checkpoint
        if "head" in raw:
            if raw.get("init_from"):
                raw["init_from"] = pretrained_run["run_dir"]
            FinetuneSpec(raw)
        else:
            PretrainSpec(raw)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.stepz=3"], "unknown config key 'trainer.stepz'. Did you mean 'steps'?"),
    (["backbone.num_layers=two"], "'backbone.num_layers': expected int"),
    (["data.train.paths=[/nonexistent/*.txt]"], "no file matches '/nonexistent/*.txt'"),
    (["objective.name=causal"], "unknown objective 'causal'"),
    (["data.train=null"], "config key 'data.train' is required"),
])
def test_cli_bad_input_is_one_line_without_traceback(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    args = ["pretrain", os.path.join(ROOT, "configs", "bert_tiny_mlm.yaml"),
            "--set", f"run_dir={run_dir}"]
    for o in overrides:
        args += ["--set", o]
    result = run_kplm(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not run_dir.exists()  # nothing half-written


def test_debug_flag_shows_traceback(tmp_path):
    result = run_kplm("--debug", "pretrain", os.path.join(ROOT, "configs", "bert_tiny_mlm.yaml"),
                      "--set", "trainer.stepz=3", "--set", f"run_dir={tmp_path / 'r'}")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_resolved_config_is_plain_yaml(tiny_config):
    text = yaml.safe_dump(PretrainSpec(tiny_config).resolved())
    assert yaml.safe_load(text)["backbone"]["num_layers"] == 1


def test_a_mapping_argument_checks_its_keys_and_values():
    """A plugin's ``dict[str, int]`` argument: every value as annotated (a dict was taken
    whole, whatever it held)."""
    from kplm.config import check_value
    from kplm.errors import ConfigError
    assert check_value({"a": 2, "b": 3.0}, dict[str, int], "objective.weights") == {"a": 2, "b": 3}
    assert check_value({1: 0.5}, dict[str, float], "objective.weights") == {"1": 0.5}  # `1:`
    with pytest.raises(ConfigError, match=r"config key 'objective\.weights\.b'"):
        check_value({"a": 2, "b": "many"}, dict[str, int], "objective.weights")
