"""The preprocessed-split cache: `<root>/<name>/sal_ray_cache/<split>-v<V>.pt`.

A cache file holds one split as uint8 gray pixels (n, input_dim) and int64
labels, with the counts, a CRC32 of both tensors and a fingerprint of the raw
files it came from. Pixels are stored before the affine [-1, 1] normalisation:
lossless, and 4x smaller than float32 (PCAM: 3 GB instead of 12 GB); the
normalisation is one vectorised pass at load time.

Writes go to a temp file in the same directory, are fsync'ed and then
`os.replace`d over the final name, so a killed writer leaves at most an unused
`.<split>-v<V>.pt.*.tmp` file, never a readable bad cache. Every read checks
version, shapes, dtypes, label range and the CRC; anything wrong means "no
cache" and the caller rebuilds from the raw files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from .registry import PREPROC_VERSION, DatasetInfo

CACHE_DIR = "sal_ray_cache"
FORMAT = "sal_ray.data.cache"
SPLITS = ("train", "val")


def cache_path(folder: Path, split: str, version: int | None = None) -> Path:
    return folder / CACHE_DIR / f"{split}-v{PREPROC_VERSION if version is None else version}.pt"


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().numpy().data.cast("B"))


def fingerprint(folder: Path, files: tuple[str, ...]) -> dict[str, list[int]]:
    """(size, mtime_ns) of each raw file present: a changed file means a stale cache."""
    out = {}
    for rel in files:
        p = folder / rel
        if p.is_file():
            st = p.stat()
            out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write(meta: DatasetInfo, folder: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]],
          source: dict[str, list[int]]) -> bool:
    """Cache both splits; False (with a warning) if the folder is not writable:
    a read-only shared data root still works, just without a cache."""
    try:
        for split in SPLITS:
            x = torch.from_numpy(np.ascontiguousarray(arrays[split][0]))
            y = torch.from_numpy(np.ascontiguousarray(arrays[split][1], dtype=np.int64))
            atomic_save({"format": FORMAT, "version": PREPROC_VERSION, "name": meta.name,
                         "split": split, "n": len(y), "input_dim": meta.input_dim,
                         "x": x, "y": y, "crc_x": _crc(x), "crc_y": _crc(y),
                         "source": source}, cache_path(folder, split))
        return True
    except OSError as exc:
        warnings.warn(f"sal_ray.data: could not write the {meta.name} cache in "
                      f"{folder / CACHE_DIR}: {exc}; continuing without it", stacklevel=3)
        return False


def read(meta: DatasetInfo, folder: Path, source: dict[str, list[int]] | None
         ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """Both cached splits, or None if either is missing, bad or stale.
    `source`: the raw files' fingerprint now (None or {} when they are absent,
    in which case the cache is trusted on its own checks)."""
    out = {}
    for split in SPLITS:
        path = cache_path(folder, split)
        if not path.is_file():
            return None
        problem = None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            problem = _problem(blob, meta, split, source)
        except Exception as exc:  # truncated zip, unpickling error, ...
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        if problem:
            warnings.warn(f"sal_ray.data: ignoring cache {path}: {problem}; rebuilding",
                          stacklevel=3)
            return None
        out[split] = (blob["x"], blob["y"])
    return out


def _problem(blob, meta: DatasetInfo, split: str, source) -> str | None:
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        return "not a sal_ray cache file"
    if (blob.get("version"), blob.get("name"), blob.get("split")) != (PREPROC_VERSION, meta.name, split):
        return "made for another dataset, split or preprocessing version"
    x, y, n = blob.get("x"), blob.get("y"), blob.get("n")
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        return "tensors missing"
    if x.dtype != torch.uint8 or tuple(x.shape) != (n, meta.input_dim):
        return f"images are {x.dtype} {tuple(x.shape)}, expected uint8 ({n}, {meta.input_dim})"
    if y.dtype != torch.int64 or tuple(y.shape) != (n,):
        return f"labels are {y.dtype} {tuple(y.shape)}, expected int64 ({n},)"
    if _crc(x) != blob.get("crc_x") or _crc(y) != blob.get("crc_y"):
        return "checksum mismatch"
    if n and (int(y.min()) < 0 or int(y.max()) >= meta.n_classes):
        return "labels out of range"
    if source and blob.get("source") != source:
        old = sorted(blob.get("source") or ())
        if old != sorted(source):
            # e.g. built from the project layout's files, now torchvision's are found
            return (f"it was built from other raw files ({', '.join(old) or 'none recorded'}) "
                    f"than those found now ({', '.join(sorted(source))})")
        return "the raw files changed since it was written"
    return None


def present(folder: Path) -> bool:
    return all(cache_path(folder, s).is_file() for s in SPLITS)
