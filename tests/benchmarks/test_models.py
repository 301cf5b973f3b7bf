"""The model registry and recipes: building by name, the errors users see, and the reference settings per dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from baselines import PatchTST, PatchTSTConfig
from benchmarks.errors import SettingError
from benchmarks.models.registry import (
    MODEL_NAMES,
    RECIPES_PATH,
    Recipe,
    build_model,
    model_classes,
    model_config,
    recipe,
    recipe_datasets,
)

CHANNELS = {"weather": 21, "ETTh1": 7, "ETTh2": 7, "ETTm1": 7, "ETTm2": 7, "electricity": 321, "traffic": 862,
            "exchange_rate": 8, "illness": 7}
BASELINES = ("patchtst", "itransformer", "dlinear")


def mixmamba_or_skip() -> None:
    try:
        model_classes("mixmamba")
    except ImportError as error:
        pytest.skip(f"mixmamba is not importable yet: {error}")


def test_model_names_and_classes():
    assert MODEL_NAMES == ("mixmamba", "patchtst", "itransformer", "dlinear")
    assert model_classes("patchtst") == (PatchTSTConfig, PatchTST)


def test_build_model_applies_recipe_overrides():
    model, config = build_model("patchtst", 96, 96, 21, recipe("patchtst", "weather", 96).model)
    assert isinstance(model, PatchTST) and model.config is config
    assert (config.seq_len, config.pred_len, config.enc_in) == (96, 96, 21)
    assert (config.e_layers, config.n_heads, config.factor, config.d_model) == (2, 4, 3, 512)
    assert sum(parameter.numel() for parameter in model.parameters()) == 6_903_904


@pytest.mark.parametrize("name", BASELINES)
def test_built_models_forecast_through_the_common_interface(name):
    model, _ = build_model(name, 48, 24, 5, {"d_model": 16, "n_heads": 2, "d_ff": 16} if name != "dlinear" else {})
    forecast, aux_loss = model(torch.randn(2, 48, 5), torch.randn(2, 48, 4))
    assert forecast.shape == (2, 24, 5) and aux_loss.shape == ()


def test_mixmamba_builds_from_its_weather_recipe():
    mixmamba_or_skip()
    model, config = build_model("mixmamba", 96, 96, 21, recipe("mixmamba", "weather", 96).model)
    assert (config.d_model, config.num_experts, config.top_k, config.variant) == (64, 2, 2, "official")
    forecast, aux_loss = model(torch.randn(2, 96, 21), torch.randn(2, 96, 4))
    assert forecast.shape == (2, 96, 21) and aux_loss.shape == ()


def single_line_input_error(call) -> str:
    with pytest.raises(SettingError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_unknown_model_suggests_the_closest_name():
    message = single_line_input_error(lambda: build_model("PatchTST", 96, 96, 7))
    assert "'patchtst'" in message and "mixmamba, patchtst, itransformer, dlinear" in message
    assert "did you mean 'dlinear'" in single_line_input_error(lambda: recipe("dlinaer", "ETTh1", 96))


def test_unknown_override_lists_the_valid_keys():
    message = single_line_input_error(lambda: build_model("itransformer", 96, 96, 7, {"d_modle": 64}))
    assert "model.d_modle" in message and "did you mean 'd_model'" in message
    assert "d_model, n_heads, e_layers, d_ff, dropout, activation, factor, use_norm" in message


def test_protocol_fields_are_not_overrides():
    message = single_line_input_error(lambda: build_model("dlinear", 96, 96, 7, {"seq_len": 192}))
    assert "seq_len" in message and "data protocol" in message


def test_a_value_the_config_rejects_becomes_an_input_error():
    message = single_line_input_error(lambda: build_model("patchtst", 96, 96, 7, {"d_model": 100, "n_heads": 8}))
    assert "patchtst" in message and "divisible by n_heads" in message


@pytest.mark.parametrize("key, value", [("d_model", "64"), ("d_model", 64.0), ("use_norm", 2), ("dropout", True)])
def test_values_of_the_wrong_type_become_input_errors(key, value):
    message = single_line_input_error(lambda: build_model("itransformer", 96, 96, 7, {key: value}))
    assert key in message


def test_numpy_scalars_from_search_libraries_become_plain_values():
    config = model_config("itransformer", 96, 96, 7, {"d_model": np.int64(64), "dropout": np.float32(0.25),
                                                      "use_norm": np.int64(0), "n_heads": 4})
    assert type(config.d_model) is int and type(config.dropout) is float and config.use_norm is False
    assert config.dropout == pytest.approx(0.25)


def test_weather_recipe_follows_the_tslib_script_per_horizon():
    assert recipe("patchtst", "weather", 96) == Recipe(
        model={"e_layers": 2, "factor": 3, "n_heads": 4},
        train={"epochs": 3, "batch_size": 32, "learning_rate": 0.0001, "patience": 3, "lradj": "type1",
               "loss": "mse", "optimizer": "adam"},
        seq_len=96,
        source="TSLib Weather_script/PatchTST.sh",
    )
    assert recipe("patchtst", "weather", 192).model["n_heads"] == 16
    assert recipe("patchtst", "weather", 720).train["batch_size"] == 128
    # a horizon the script does not run keeps only the settings shared by all its runs
    assert recipe("patchtst", "weather", 48).model == {"e_layers": 2, "factor": 3}


def test_itransformer_and_dlinear_recipes():
    electricity = recipe("itransformer", "electricity", 336)
    assert electricity.model == {"e_layers": 3, "factor": 3, "d_model": 512, "d_ff": 512}
    assert (electricity.train["batch_size"], electricity.train["learning_rate"]) == (16, 0.0005)
    assert recipe("dlinear", "ETTh1", 96).model == {}
    assert recipe("patchtst", "illness", 60) == Recipe(
        model={"e_layers": 4, "factor": 3, "n_heads": 16, "d_model": 2048},
        train=recipe("patchtst", "illness", 60).train,
        seq_len=36,
        source="TSLib ILI_script/PatchTST.sh",
    )


def test_mixmamba_recipes_train_with_mae_and_adamw_as_the_official_code():
    etth1 = recipe("mixmamba", "ETTh1", 192)
    assert etth1.train == {"epochs": 10, "batch_size": 32, "learning_rate": 0.001, "patience": 3, "lradj": "type1",
                           "loss": "mae", "optimizer": "adamw", "weight_decay": 0.01}
    assert etth1.model["d_model"] == 64 and etth1.model["num_experts"] == 2
    exchange = recipe("mixmamba", "exchange_rate", 96)
    assert (exchange.model["top_k"], exchange.train["patience"]) == (5, 10)
    assert recipe("mixmamba", "electricity", 96).model["d_model"] == 32
    assert recipe("mixmamba", "electricity", 720).model["d_model"] == 512


def test_datasets_without_an_official_mixmamba_script_reuse_etth1_and_say_so():
    for dataset in ("weather", "ETTh2", "ETTm1", "ETTm2"):
        borrowed = recipe("mixmamba", dataset, 96)
        assert borrowed.source.startswith("our choice")
        assert (borrowed.model, borrowed.train) == (recipe("mixmamba", "ETTh1", 96).model,
                                                   recipe("mixmamba", "ETTh1", 96).train)


def test_recipes_take_the_registry_spelling_and_unknown_datasets_get_defaults():
    assert recipe("patchtst", "ETTh1", 96).source != recipe("patchtst", "etth1", 96).source
    fallback = recipe("dlinear", "weather", 96)
    assert fallback.model == {} and fallback.train["epochs"] == 10 and "no reference script" in fallback.source


def test_recipes_are_fresh_copies():
    recipe("patchtst", "weather", 96).model["n_heads"] = 99
    assert recipe("patchtst", "weather", 96).model["n_heads"] == 4


def test_bad_pred_len_is_an_input_error():
    assert "pred_len" in single_line_input_error(lambda: recipe("patchtst", "weather", 0))


def test_recipes_yaml_defaults_are_tslib_run_py_defaults():
    data = yaml.safe_load(RECIPES_PATH.read_text())
    assert data["defaults"]["train"] == {"epochs": 10, "batch_size": 32, "learning_rate": 0.0001, "patience": 3,
                                         "lradj": "type1", "loss": "mse", "optimizer": "adam"}
    assert set(recipe_datasets("patchtst")) == set(CHANNELS)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_recipe_resolves_to_a_valid_config(name):
    if name == "mixmamba":
        mixmamba_or_skip()
    for dataset in recipe_datasets(name):
        for pred_len in (24, 36, 48, 60) if dataset == "illness" else (96, 192, 336, 720):
            entry = recipe(name, dataset, pred_len)
            config = model_config(name, entry.seq_len, pred_len, CHANNELS[dataset], entry.model)
            assert all(getattr(config, key) == value for key, value in entry.model.items())
            assert entry.train["loss"] in ("mse", "mae") and entry.train["optimizer"] in ("adam", "adamw")
