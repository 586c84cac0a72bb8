"""Recipes and command-line overrides: parsing, types, typos, Ascend-only keys."""
import glob

import pytest

from mindswin.config import ConfigError, load_config, parse_args

from conftest import ROOT


def test_cli_overrides_parse_lists_booleans_and_numbers(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: swinv2_tiny_window16_256\nlr: 1e-3\nbatch_size: 16\n")
    config = parse_args(["--config", str(recipe), "--pretrained_window_sizes", "[12,12,12,6]", "--ema", "True",
                         "--batch_size", "8", "--warmup_epochs", "0.5", "--img_size", "192"])
    assert config.model == "swinv2_tiny_window16_256"
    assert config.lr == 1e-3 and isinstance(config.lr, float)
    assert config.pretrained_window_sizes == [12, 12, 12, 6]
    assert config.ema is True and config.batch_size == 8 and config.warmup_epochs == 0.5
    assert config.image_resize == 192
    assert {"model", "lr", "batch_size", "ema", "image_resize"} <= config.explicit
    assert "seed" not in config.explicit


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "1e-3"], "unknown option --learning_rate"),
    (["--batch_sise", "8"], "Did you mean 'batch_size'"),
    (["--batch_size", "eight"], "'batch_size' must be an integer"),
    (["--ema", "3"], "'ema' must be true/false"),
    (["--amp_level", "O3"], "'amp_level' must be one of O0, O2"),
    (["--enable_parallel_optimizer", "True"], "Ascend only"),
])
def test_bad_options_are_clear_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_typo_in_recipe_names_the_file_and_suggests(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("modle: swinv2_tiny_window8_256\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'modle'. Did you mean 'model'\?"):
        load_config(str(recipe))


def test_every_shipped_recipe_loads():
    recipes = sorted(glob.glob(str(ROOT / "configs" / "**" / "*.yaml"), recursive=True))
    assert len(recipes) >= 1
    for path in recipes:
        load_config(path)
