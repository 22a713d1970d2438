import math
import pytest

import torch

from sal_ray import Callback, Config, ConfigError, fit
from sal_ray.trainer import load_checkpoint, build

TINY = dict(width=32, epochs=2, batch_size=32)


class Record(Callback):
    def __init__(self):
        self.started, self.epochs, self.ended = 0, [], None

    def on_start(self, run):
        self.started += 1

    def on_epoch(self, metrics):
        self.epochs.append(metrics)

    def on_end(self, result):
        self.ended = result


def test_same_seed_runs_are_bit_identical():
    cfg = Config().replace(n_areas=4, **TINY)
    a, b = fit(cfg), fit(cfg)
    for (k, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(x, y), k
    strip = lambda h: [{k: v for k, v in m.items() if "time" not in k and "per_s" not in k}
                       for m in h]
    assert strip(a.history) == strip(b.history)
    c = fit(cfg.replace(seed=1))
    assert not torch.equal(c.net.layers[0].areas.weight, a.net.layers[0].areas.weight)


def test_reports_every_epoch_with_usage():
    rec = Record()
    result = fit(Config().replace(n_areas=4, **TINY), [rec])
    assert rec.started == 1 and rec.ended is result and result.status == "completed"
    assert [m["epoch"] for m in rec.epochs] == [1, 2]
    m = rec.epochs[-1]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "samples_per_s",
                "epoch_time_s", "wall_time_s", "areas_used.l0"):
        assert math.isfinite(m[key]), key
    shares = [m[f"area_share.l0.a{k}"] for k in range(4)]
    assert abs(sum(shares) - 1) < 1e-9
    assert m["areas_used.l0"] == sum(s > 0 for s in shares)
    assert result.config["params_total"] > result.config["params_active"]


def test_divergence_ends_with_a_status_not_nan_metrics():
    # SAL's error is bounded, so its weights grow only linearly: at lr 10 its loss
    # explodes (about 1e3) yet stays finite, where the old test saw a run
    # "complete"; BP at lr 1e3 overflows outright. Both are diverged, alike.
    for cfg, words in ((Config().replace(lr=10.0, **TINY), "exploded past 100 (diverge_loss)"),
                       (Config().replace(method="bp", lr=1e3, **TINY), "non-finite")):
        rec = Record()
        result = fit(cfg, [rec])
        assert result.status == "diverged" and words in result.message, result.message
        for m in rec.epochs:
            assert all(math.isfinite(v) for v in m.values())


def test_the_divergence_threshold_is_an_option_recorded_with_the_run():
    result = fit(Config().replace(lr=10.0, diverge_loss=1e30, **TINY))
    assert result.status == "completed" and result.final["train_loss"] > 100
    assert result.config["diverge_loss"] == 1e30


def test_a_checkpoint_past_the_epochs_asked_for_is_refused(tmp_path):
    fit(Config().replace(**TINY), checkpoint_dir=str(tmp_path))  # 2 epochs done
    with pytest.raises(ConfigError) as info:
        fit(Config().replace(**{**TINY, "epochs": 1}), checkpoint_dir=str(tmp_path))
    assert info.value.option == "epochs"
    assert "has 2 epochs done, more than the 1 asked for" in str(info.value)


def test_checkpoint_resume_continues_exactly(tmp_path):
    cfg = Config().replace(method="moe", n_areas=4, width=32, epochs=3, batch_size=32)
    whole = fit(cfg)
    first = fit(cfg.replace(epochs=1), checkpoint_dir=str(tmp_path))
    assert len(first.history) == 1
    rest = fit(cfg, checkpoint_dir=str(tmp_path))
    assert [m["epoch"] for m in rest.history] == [1, 2, 3]
    for (k, x), (_, y) in zip(whole.net.state_dict().items(), rest.net.state_dict().items()):
        assert torch.equal(x, y), k
    assert rest.history[-1]["val_loss"] == whole.history[-1]["val_loss"]


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    fit(Config().replace(n_areas=2, **TINY), checkpoint_dir=str(tmp_path))
    run = build(Config().replace(n_areas=4, **TINY))
    try:
        load_checkpoint(run, str(tmp_path))
    except ValueError as e:
        assert "n_areas" in str(e)
    else:
        raise AssertionError("loaded a checkpoint of another configuration")


def test_all_methods_learn_digits_a_little():
    for method, n in [("bp", 1), ("sal", 4), ("moe", 4)]:
        r = fit(Config().replace(method=method, n_areas=n, lr=0.05, width=64, epochs=2))
        assert r.final["val_acc"] > 0.5, (method, r.final["val_acc"])


def test_an_unusable_checkpoint_folder_is_refused_before_training(tmp_path):
    from sal_ray import ConfigError, train
    blocker = tmp_path / "file"
    blocker.write_text("")
    epochs = []

    class Count(Callback):
        def on_epoch(self, m):
            epochs.append(m["epoch"])
    with pytest.raises(ConfigError) as info:
        train(epochs=1, checkpoint_dir=str(blocker / "ckpt"), callbacks=[Count()], verbose=False)
    assert info.value.option == "checkpoint_dir" and epochs == []
