"""Typed config: YAML, overrides, clear errors before any model loads."""

import pytest

from diffalign.cli import main
from diffalign.config import ConfigError, DPORunConfig, apply_overrides, from_dict, load_config
from diffalign.paths import asset

REQUIRED = ["model.pretrained=some/model", "data.path=pairs.jsonl"]


@pytest.mark.parametrize("name", ["tiny-dpo", "sd15-dpo-lora", "sdxl-dpo-lora", "sdxl-dpo-full", "shapes-dpo",
                                  "tiny-rank-dpo", "sdxl-rank-dpo-lora"])
def test_shipped_configs_load_and_validate(name):
    config = load_config(asset("configs", f"{name}.yaml"))
    assert isinstance(config, DPORunConfig)
    assert isinstance(config.train.beta, float)


@pytest.mark.parametrize("name", ["tiny-draft", "sd15-draft", "sdxl-draft"])
def test_shipped_reward_configs_load_and_validate(name):
    from diffalign.config import RewardRunConfig

    config = load_config(asset("configs", f"{name}.yaml"), cls=RewardRunConfig)
    assert config.reward.method == "draft-k" and config.sampling.eta == 0.0


@pytest.mark.parametrize("name", ["tiny-d3po", "sd15-d3po", "sdxl-d3po"])
def test_shipped_d3po_configs_load_and_validate(name):
    from diffalign.config import D3PORunConfig

    config = load_config(asset("configs", f"{name}.yaml"), cls=D3PORunConfig)
    assert config.sampling.eta == 1.0 and config.d3po.beta == 0.1


def test_paper_config_derives_accumulation_and_lr():
    config = load_config(asset("configs", "sdxl-dpo-full.yaml"))
    assert config.gradient_accumulation(num_processes=16) == 128
    assert config.gradient_accumulation(num_processes=8) == 256
    assert config.train.learning_rate * config.train.total_batch_size == pytest.approx(2.048e-5)
    assert config.train.optimizer == "adafactor" and not config.lora.enabled


def test_overrides_are_yaml_scalars():
    config = load_config(None, REQUIRED + ["train.beta=2500", "lora.enabled=false", "train.learning_rate=1e-5",
                                           "validation.prompts=[a cat, a dog]"])
    assert config.train.beta == 2500.0 and isinstance(config.train.beta, float)
    assert config.lora.enabled is False
    assert config.train.learning_rate == 1e-5
    assert config.validation.prompts == ["a cat", "a dog"]


def test_unknown_key_names_the_dotted_path_and_suggests():
    with pytest.raises(ConfigError, match=r"Unknown config key 'train.betta'.*Did you mean 'train.beta'"):
        load_config(None, REQUIRED + ["train.betta=1"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.batch_size: expected int, got 'four'"):
        load_config(None, REQUIRED + ["train.batch_size=four"])
    with pytest.raises(ConfigError, match=r"model.gradient_checkpointing: expected true or false"):
        load_config(None, REQUIRED + ["model.gradient_checkpointing=yes please"])
    with pytest.raises(ConfigError, match=r"train.max_steps: expected an integer"):
        from_dict(DPORunConfig, {"train": {"max_steps": True}})


def test_choices_are_checked():
    with pytest.raises(ConfigError, match=r"model.attention: 'flash' is not one of auto, sdpa, xformers"):
        load_config(None, REQUIRED + ["model.attention=flash"])


def test_batch_sizes_that_do_not_divide():
    with pytest.raises(ConfigError, match=r"total_batch_size=10 is not divisible by .* 4 x 1 = 4"):
        load_config(None, REQUIRED + ["train.total_batch_size=10", "train.batch_size=4"])
    with pytest.raises(ConfigError, match="3 x 2 = 6"):
        load_config(None, REQUIRED + ["train.total_batch_size=8", "train.batch_size=3"], num_processes=2)


def test_missing_required_and_bad_ranges():
    with pytest.raises(ConfigError, match="model.pretrained is required"):
        load_config(None, ["data.path=x"])
    with pytest.raises(ConfigError, match="train.beta must be > 0"):
        load_config(None, REQUIRED + ["train.beta=0"])
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_config(None, REQUIRED + ["data.resolution=100"])
    with pytest.raises(ConfigError, match="deterministic preprocessing"):
        load_config(None, REQUIRED + ["cache.enabled=true", "data.random_flip=true"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.beta"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_reports_config_errors_without_loading_models(capsys):
    assert main(["train", "dpo", "--config", str(asset("configs", "tiny-dpo.yaml")), "train.batch_size=x"]) == 2
    assert "train.batch_size: expected int" in capsys.readouterr().err


def test_cli_config_reference_lists_every_option(capsys):
    assert main(["config", "reference"]) == 0
    text = capsys.readouterr().out
    assert "| `train.beta` | float | `5000.0` |" in text
    assert "`cache.enabled`" in text and "`lora.target_modules`" in text


def test_configuration_doc_is_in_sync_with_the_dataclasses():
    from diffalign.cli import reference_text
    from diffalign.paths import ASSETS

    from diffalign.config import D3PORunConfig, RewardRunConfig

    doc = (ASSETS.parent / "docs" / "configuration.md").read_text()
    for cls in (DPORunConfig, RewardRunConfig, D3PORunConfig):
        assert "\n".join(reference_text(cls)) in doc, "regenerate docs/configuration.md with `diffalign config reference`"
