"""Writers of tiny datasets in each dataset's genuine on-disk format, laid out
where torchvision looks for them: under `<root>/<name>/` (the project's layout)
or under `<root>` itself (torchvision's own layout, `write(..., layout=...)`).

Each writer takes the dataset folder and a numpy Generator and returns what it
wrote, in plain form, so tests can compute the expected preprocessing
independently: {"train": (images, labels), "val": (images, labels)} with
images uint8 (n, h, w, 3) for RGB sets or (n, h, w) for gray ones, labels
0-based int64. Sets without an official split return {"all": (...)}.
"""

from __future__ import annotations

import bz2
import csv
import pickle
import struct
from pathlib import Path

import numpy as np


def _rgb(rng, n, side):
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _gray(rng, n, side):
    return rng.integers(0, 256, (n, side, side), dtype=np.uint8)


def _labels(rng, n, classes):
    # every class present (stratified splits need >= 2 per class)
    y = np.arange(n) % classes
    rng.shuffle(y)
    return y.astype(np.int64)


def write_cifar10(folder: Path, rng, per_batch=3, n_test=4):
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _rgb(rng, per_batch, 32), _labels(rng, per_batch, 10)
        # rows are 3072 bytes: the red plane, then green, then blue (row-major)
        rows = x.transpose(0, 3, 1, 2).reshape(per_batch, -1)
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i} of 5", "labels": y.tolist(),
                         "data": rows, "filenames": [f"{j}.png" for j in range(per_batch)]}, f)
        xs.append(x)
        ys.append(y)
    xt, yt = _rgb(rng, n_test, 32), _labels(rng, n_test, 10)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"labels": yt.tolist(), "data": xt.transpose(0, 3, 1, 2).reshape(n_test, -1)}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"], "num_vis": 3072}, f)
    return {"train": (np.concatenate(xs), np.concatenate(ys)), "val": (xt, yt)}


def _idx(path: Path, array: np.ndarray):
    """IDX (LeCun) file: magic 0x0000 0x08 (ubyte) ndim, big-endian dims, data."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _write_mnist_like(folder: Path, rng, cls_dir: str, n_train=12, n_test=6):
    raw = folder / cls_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("val", "t10k", n_test)):
        x, y = _gray(rng, n, 28), _labels(rng, n, 10)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y.astype(np.uint8))
        out[split] = (x, y)
    return out


def write_mnist(folder, rng):
    return _write_mnist_like(folder, rng, "MNIST")


def write_fashion_mnist(folder, rng):
    return _write_mnist_like(folder, rng, "FashionMNIST")


def write_svhn(folder: Path, rng, n_train=10, n_test=5):
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, fname, n in (("train", "train_32x32.mat", n_train), ("val", "test_32x32.mat", n_test)):
        x, y = _rgb(rng, n, 32), _labels(rng, n, 10)
        # X is (32, 32, 3, n); y is (n, 1) with digit 0 labelled 10
        savemat(folder / fname, {"X": x.transpose(1, 2, 3, 0),
                                 "y": np.where(y == 0, 10, y).astype(np.uint8)[:, None]})
        out[split] = (x, y)
    return out


def write_stl10(folder: Path, rng, n_train=10, n_test=5):
    base = folder / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("val", "test", n_test)):
        x, y = _rgb(rng, n, 96), _labels(rng, n, 10)
        # each image is stored column-major per channel: (channel, column, row)
        (base / f"{prefix}_X.bin").write_bytes(x.transpose(0, 3, 2, 1).tobytes())
        (base / f"{prefix}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        out[split] = (x, y)
    return out


def write_pcam(folder: Path, rng, sizes=(("train", 6), ("valid", 4), ("test", 5))):
    import h5py

    base = folder / "pcam"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in sizes:
        x, y = _rgb(rng, n, 96), _labels(rng, n, 2)
        with h5py.File(base / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x)
        with h5py.File(base / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y.astype(np.uint8).reshape(n, 1, 1, 1))
        out[split] = (x, y)
    return {"train": tuple(np.concatenate([out["train"][i], out["valid"][i]]) for i in (0, 1)),
            "val": out["test"]}


# USPS values are floats in [-1, 1]; torchvision maps v -> uint8((v + 1) / 2 * 255).
# These levels map exactly (no rounding doubt): 0, 63, 127, 191, 255.
USPS_LEVELS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])


def write_usps(folder: Path, rng, n_train=12, n_test=6):
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, fname, n in (("train", "usps.bz2", n_train), ("val", "usps.t.bz2", n_test)):
        v = USPS_LEVELS[rng.integers(0, len(USPS_LEVELS), (n, 256))]
        y = _labels(rng, n, 10)
        lines = [f"{label + 1} " + " ".join(f"{i + 1}:{val:.6f}" for i, val in enumerate(row))
                 for label, row in zip(y, v)]
        with bz2.open(folder / fname, "wt") as f:
            f.write("\n".join(lines) + "\n")
        pixels = np.floor((v + 1) / 2 * 255).astype(np.uint8).reshape(n, 16, 16)
        out[split] = (pixels, y)
    return out


def write_semeion(folder: Path, rng, n=60):
    folder.mkdir(parents=True, exist_ok=True)
    bits = rng.integers(0, 2, (n, 256))
    y = _labels(rng, n, 10)
    onehot = np.eye(10, dtype=int)[y]
    with open(folder / "semeion.data", "w") as f:
        for b, o in zip(bits, onehot):
            f.write(" ".join(f"{v:.4f}" for v in b) + " " + " ".join(map(str, o)) + " \n")
    return {"all": ((bits * 255).astype(np.uint8).reshape(n, 16, 16), y)}


def write_fer2013(folder: Path, rng, n_train=8, n_public=3, n_private=3):
    base = folder / "fer2013"
    base.mkdir(parents=True, exist_ok=True)
    rows, out = [], {}
    for usage, n in (("Training", n_train), ("PublicTest", n_public), ("PrivateTest", n_private)):
        x, y = _gray(rng, n, 48), _labels(rng, n, 7)
        rows += [(int(label), " ".join(map(str, img.ravel())), usage) for img, label in zip(x, y)]
        out[usage] = (x, y)
    order = rng.permutation(len(rows))  # usages interleaved, as in the real file
    with open(base / "fer2013.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows[i] for i in order)
    # expected order: file order within each usage group
    rows_sorted = [rows[i] for i in order]

    def pick(usages):
        sel = [r for r in rows_sorted if r[2] in usages]
        x = np.array([np.array(r[1].split(), dtype=np.uint8).reshape(48, 48) for r in sel])
        return x, np.array([r[0] for r in sel], dtype=np.int64)
    return {"train": pick({"Training"}), "val": pick({"PublicTest", "PrivateTest"})}


WRITERS = {
    "cifar10": write_cifar10, "pcam": write_pcam, "stl10": write_stl10, "svhn": write_svhn,
    "mnist": write_mnist, "fashion_mnist": write_fashion_mnist, "usps": write_usps,
    "semeion": write_semeion, "fer2013": write_fer2013,
}


def write(name: str, root: Path, seed: int = 0, layout: str = "project"):
    """Write dataset `name` under `root/<name>/` (layout "project") or as
    torchvision's class lays it out under `root` (layout "torchvision");
    returns (written, n_samples)."""
    folder = Path(root) / name if layout == "project" else Path(root)
    written = WRITERS[name](folder, np.random.default_rng(seed))
    n = sum(len(y) for _, y in written.values())
    return written, n


# ---- what the usual torchvision pipeline would give, computed independently ----

def expected_pixels(images: np.ndarray) -> np.ndarray:
    """(n, h, w[, 3]) uint8 -> (n, h*w) float32 via PIL and torchvision transforms
    (PIL convert('L') -> ToTensor -> Normalize(0.5, 0.5) -> flatten)."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    rows = []
    for img in images:
        pil = Image.fromarray(img)
        if img.ndim == 3:
            pil = pil.convert("L")
        t = TF.normalize(TF.to_tensor(pil), [0.5], [0.5])
        rows.append(t.reshape(-1).numpy())
    return np.stack(rows)


def expected_splits(written):
    """{"train"/"val": (pixels float32 (n, D), labels)} from a writer's return."""
    from sklearn.model_selection import train_test_split

    if "all" in written:  # no official split: stratified 80/20, random_state 0
        x, y = written["all"]
        i_tr, i_va = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y,
                                      random_state=0)
        written = {"train": (x[i_tr], y[i_tr]), "val": (x[i_va], y[i_va])}
    return {s: (expected_pixels(x), y) for s, (x, y) in written.items()}
