"""Bad input is refused with one message naming the option, before any training."""

import sys

import pytest

import sal_ray.trainer as train_mod
from sal_ray.config import DEFAULTS, Config, ConfigError, validate
from sal_ray.models import LayerSpec


def test_flat_round_trip_with_strings():
    cfg = Config().replace(method="moe", n_areas=8, lr=3e-3, d_f=None)
    flat = {k: str(v) for k, v in cfg.to_flat().items()}
    assert Config.from_flat(flat) == cfg
    assert set(DEFAULTS) == set(cfg.to_flat())


@pytest.mark.parametrize("options,option", [
    ({"method": "sgd"}, "method"),
    ({"dataset": "imagenet"}, "dataset"),
    ({"n_areas": 0}, "n_areas"),
    ({"depth": 1}, "depth"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"lr_sel": 0.0}, "lr_sel"),
    ({"batch_size": 0}, "batch_size"),
    ({"epochs": 0}, "epochs"),
    ({"width": -4}, "width"),
    ({"method": "bp", "n_areas": 4}, "n_areas"),
    ({"arch": "cnn"}, "arch"),
    ({"routed": "some"}, "routed"),
    ({"dtype": "float16"}, "dtype"),
    ({"device": "tpu"}, "device"),
    ({"kernel": "magic"}, "kernel"),
    ({"feedback_scale": 0}, "feedback_scale"),
    ({"area_grad_scale": "sample"}, "area_grad_scale"),
    ({"area_init": "zeros"}, "area_init"),
    ({"lambda_local": -1}, "lambda_local"),
    ({"moe_balance": -0.1}, "moe_balance"),
])
def test_bad_options_name_the_option(options, option):
    with pytest.raises(ConfigError) as err:
        validate(Config.from_flat(options))
    assert err.value.option == option
    assert f"'{option}'" in str(err.value)


@pytest.mark.parametrize("options,option", [
    ({"n_areas": "four"}, "n_areas"), ({"lr": "fast"}, "lr"), ({"download": "maybe"}, "download"),
    ({"n_areaz": 4}, "n_areaz"), ({"n_areas": 2.5}, "n_areas"),
])
def test_bad_types_and_unknown_names(options, option):
    with pytest.raises(ConfigError) as err:
        Config.from_flat(options)
    assert err.value.option == option


def test_unknown_option_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean n_areas"):
        Config.from_flat({"n_area": 4})


def test_wrong_type_set_directly_is_caught():
    cfg = Config()
    cfg.model.n_areas = "4"
    with pytest.raises(ConfigError, match="'n_areas'"):
        validate(cfg)


def test_residual_layer_with_different_sizes():
    with pytest.raises(ConfigError, match="residual"):
        LayerSpec(8, 16, "tanh", residual=True)


def test_d_f_below_classes_fails_before_training(monkeypatch):
    started = []
    monkeypatch.setattr(train_mod, "train_epoch", lambda *a: started.append(1))
    with pytest.raises(ConfigError, match="'d_f'.*10 classes"):
        train_mod.fit(Config().replace(n_areas=4, d_f=5))
    assert not started


def test_cuda_on_a_machine_without_one(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="'device'"):
        train_mod.build(Config().replace(device="cuda"))
