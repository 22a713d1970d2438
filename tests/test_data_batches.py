"""Device-resident batches and the preprocessing primitives."""

import numpy as np
import pytest
import torch
from PIL import Image

from sal_ray.data import DeviceBatches, epoch_batches
from sal_ray.data.preprocess import normalise_pixels, rgb_to_gray_uint8


def test_an_epoch_visits_every_sample_once():
    x = torch.arange(103, dtype=torch.float32)[:, None].repeat(1, 4)
    y = torch.arange(103)
    batches = list(epoch_batches(x, y, 16, epoch_seed=7))
    assert [len(b[1]) for b in batches] == [16] * 6 + [7]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(103))
    for xb, yb in batches:  # rows stay paired with their labels
        assert torch.equal(xb[:, 0].long(), yb)
    assert not torch.equal(seen, y)  # shuffled


def test_epoch_order_is_a_function_of_the_seed():
    x, y = torch.randn(50, 3), torch.arange(50)
    order = lambda seed: torch.cat([b for _, b in epoch_batches(x, y, 8, seed)])  # noqa: E731
    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(order(3), torch.randperm(50, generator=g))


def test_drop_last_and_device_batches():
    x, y = torch.randn(50, 3), torch.arange(50)
    assert [len(b) for _, b in epoch_batches(x, y, 16, 0, drop_last=True)] == [16, 16, 16]
    db = DeviceBatches(x, y, 16)
    assert len(db) == 4 and len(DeviceBatches(x, y, 16, drop_last=True)) == 3
    assert sum(len(b) for _, b in db.batches(1)) == 50
    first_x, _ = next(db.in_order())
    assert first_x.data_ptr() == db.x.data_ptr()  # a view, no copy
    with pytest.raises(ValueError):
        next(epoch_batches(x, y[:3], 4, 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batches_stay_on_the_device():
    db = DeviceBatches(torch.randn(40, 3), torch.arange(40), 16, device="cuda")
    xb, yb = next(db.batches(0))
    assert xb.device.type == "cuda" and yb.device.type == "cuda"
    cpu = torch.cat([b for _, b in epoch_batches(torch.randn(40, 3), torch.arange(40), 16, 0)])
    assert torch.equal(torch.cat([b for _, b in db.batches(0)]).cpu(), cpu)


def test_gray_matches_pil_convert_L_exactly():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (64, 17, 13, 3), dtype=np.uint8)
    imgs[0, 0, :6] = [[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]]
    want = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in imgs])
    np.testing.assert_array_equal(rgb_to_gray_uint8(imgs), want)
    np.testing.assert_array_equal(rgb_to_gray_uint8(imgs.transpose(0, 3, 1, 2), channel_axis=1), want)


def test_normalise_pixels_maps_0_255_to_minus1_1():
    p = torch.arange(256, dtype=torch.uint8).reshape(16, 4, 4)
    x = normalise_pixels(p)
    assert x.shape == (16, 16) and x.dtype == torch.float32
    want = (torch.arange(256, dtype=torch.float64) / 255 - 0.5) / 0.5
    assert torch.allclose(x.reshape(-1).double(), want, atol=1e-6, rtol=0)
    assert x[0, 0] == -1 and x[-1, -1] == 1
