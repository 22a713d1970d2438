"""The paper's preprocessing, as whole-array operations (no per-sample Python).

Images: RGB -> gray (ITU-R 601-2 luma, exactly as PIL's ``convert('L')``),
pixels scaled to [0, 1], then normalised with mean 0.5 and std 0.5 to [-1, 1],
and flattened. Digits: per-feature z-score fitted on its training split.
"""

from __future__ import annotations

import numpy as np
import torch


def rgb_to_gray_uint8(images: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """uint8 RGB images -> uint8 gray, bit-exact with PIL's ``Image.convert('L')``.

    PIL computes L = R*299/1000 + G*587/1000 + B*114/1000 in 16-bit fixed point
    with rounding (``L24`` in libImaging/Convert.c). We reproduce that rather
    than the float formula of ``torchvision.transforms.functional.rgb_to_grayscale``
    (0.2989, 0.587, 0.114, no rounding) because the usual torchvision pipeline
    (``transforms.Grayscale()`` on a PIL image) goes through PIL.
    """
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    rgb = np.moveaxis(images, channel_axis, -1)
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {images.shape}")
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def normalise_pixels(gray_uint8: torch.Tensor) -> torch.Tensor:
    """(n, h, w) or (n, d) uint8 -> (n, h*w) float32 in [-1, 1]: (p/255 - 0.5)/0.5."""
    x = gray_uint8.reshape(gray_uint8.shape[0], -1).to(torch.float32)
    # p/255*2 - 1 in two fused in-place ops; equal to ToTensor + Normalize(0.5, 0.5)
    # up to float rounding (tests allow 1e-6).
    return x.mul_(2.0 / 255.0).sub_(1.0)


def zscore_fit(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (ddof=0, as sklearn's StandardScaler) of the
    training split. Constant features get std 1: they end up centred at 0."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return mean, std


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int):
    """Indices (train, val) of a stratified split, sklearn's train_test_split
    with stratify=labels and random_state=seed."""
    # scikit-learn loads only where it is used (seconds)
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    idx_train, idx_val = train_test_split(idx, test_size=val_fraction, stratify=labels,
                                          random_state=seed)
    return idx_train, idx_val
