"""`load(name)` -> `Splits`: the one entry point the trainer uses.

Flow: resolve the data root -> find the raw files (the project's layout, then
torchvision's: `layouts`) -> use the verified on-disk cache if there is one ->
otherwise read the raw files through torchvision, preprocess, check the sample
count against the spec, write the cache atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache, layouts, sources
from .preprocess import normalise_pixels, stratified_split, zscore_fit
from .registry import DATASETS_INFO, SPLIT_SEED, VAL_FRACTION, DatasetInfo

ENV_ROOT = "SAL_RAY_DATA"
DEFAULT_ROOT = "~/.cache/sal_ray/data"


class DataError(ValueError):
    """Data missing, corrupt or inconsistent; the message says what to do."""


@dataclass
class Splits:
    name: str
    x_train: torch.Tensor   # (n_train, input_dim) float32, CPU, preprocessed & flattened
    y_train: torch.Tensor   # (n_train,) int64 in [0, n_classes)
    x_val: torch.Tensor     # (n_val, input_dim)
    y_val: torch.Tensor     # (n_val,)
    n_classes: int
    input_dim: int

    @property
    def n_samples(self) -> int:
        return len(self.y_train) + len(self.y_val)

    def head(self, n: int | None) -> Splits:
        """The first `n` samples of each split (all of them if None): views, no copy."""
        if n is None:
            return self
        return Splits(self.name, self.x_train[:n], self.y_train[:n], self.x_val[:n],
                      self.y_val[:n], self.n_classes, self.input_dim)

    def to(self, device: torch.device | str) -> Splits:
        """The same splits on `device` (one copy per tensor, before training)."""
        return Splits(self.name, self.x_train.to(device), self.y_train.to(device),
                      self.x_val.to(device), self.y_val.to(device),
                      self.n_classes, self.input_dim)


def info(name: str) -> DatasetInfo:
    try:
        return DATASETS_INFO[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS_INFO)}") from None


def data_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else $SAL_RAY_DATA, else ~/.cache/sal_ray/data; always absolute
    (Ray workers change directory, so a relative root would move)."""
    chosen = root if root is not None else os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def dataset_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """`<root>/<name>/`: where the project layout keeps `name`'s files (the root
    given to torchvision), where downloads go, and where the cache lives,
    whichever layout the raw files were found in."""
    return data_root(root) / info(name).folder


def raw_files(name: str, root: str | os.PathLike | None = None) -> layouts.FileSet | None:
    """The complete set of raw files `load` would read (first in the search
    order of `layouts`), or None; no file is read."""
    return layouts.locate(info(name), data_root(root))


def load(name: str, root: str | None = None, download: bool = False, *,
         expected_samples: int | None = None, verify_md5: bool = True) -> Splits:
    """The dataset's train and validation splits, preprocessed, on the CPU.

    Uses the on-disk cache when it is valid; otherwise reads the raw files
    (fetching them first if `download`), preprocesses, checks the sample count
    and writes the cache. `expected_samples` replaces the spec's count (tests,
    custom subsets); `verify_md5` compares files against torchvision's recorded
    MD5 of the official release when building the cache.
    """
    meta = info(name)
    if name == "digits":
        splits = _load_digits()
        _check_count(meta, splits.n_samples, expected_samples)
        return splits
    arrays = _cached_or_built(meta, data_root(root), download, expected_samples, verify_md5)
    (x_tr, y_tr), (x_va, y_va) = arrays["train"], arrays["val"]
    return Splits(name, normalise_pixels(x_tr), y_tr, normalise_pixels(x_va), y_va,
                  n_classes=meta.n_classes, input_dim=meta.input_dim)


# What this process loaded, while the files on disk stay as they were: a sweep's
# worker runs trial after trial on one dataset, and reading it again (Digits from
# scikit-learn's CSV ~25 ms, MNIST from its cache ~0.3 s) costs more than a tiny
# trial's epoch. At most SHARED_MAX datasets are kept.
SHARED_MAX = 2
_SHARED: dict[tuple[str, str], tuple[Any, Splits]] = {}


def load_shared(name: str, root: str | None = None, download: bool = False) -> Splits:
    """`load(name, root, download)`, read once per process while its raw and cache
    files keep their size and mtime (checked at every call). The tensors are
    shared by every caller: none may modify them in place (the trainer never does)."""
    meta, base = info(name), data_root(root)
    key = (name, str(base))
    hit = _SHARED.get(key)
    if hit is not None and hit[0] == _disk_state(meta, base):
        return hit[1]
    splits = load(name, root, download)
    _SHARED.pop(key, None)
    while len(_SHARED) >= SHARED_MAX:
        _SHARED.pop(next(iter(_SHARED)))
    _SHARED[key] = (_disk_state(meta, base), splits)  # after the load: it may write a cache
    return splits


def _disk_state(meta: DatasetInfo, root: Path) -> Any:
    """What `load_shared` compares: the raw files' and the cache files' (size,
    mtime); Digits is bundled with scikit-learn and never changes."""
    if meta.name == "digits":
        return None
    home = root / meta.folder
    cached = [cache.cache_path(home, split) for split in cache.SPLITS]
    return (_fingerprint(home, layouts.locate(meta, root)),
            [cache.fingerprint(p.parent, (p.name,)) for p in cached])


def _cached_or_built(meta: DatasetInfo, root: Path, download: bool,
                     expected: int | None, verify_md5: bool):
    home = root / meta.folder  # the cache's folder, whichever layout the files are in
    found = layouts.locate(meta, root)
    cached = cache.read(meta, home, _fingerprint(home, found))
    if cached is not None:
        _check_count(meta, sum(len(y) for _, y in cached.values()), expected,
                     where=f"the cache in {home / cache.CACHE_DIR}")
        return cached
    if found is None:
        if download and meta.downloadable:
            _download(meta, root)
            found = layouts.locate(meta, root)
        if found is None:
            raise missing_error(meta, root, download)
    folder, files = found.folder, found.files
    if verify_md5:
        _verify_md5(meta, folder, files)
    try:
        arrays = sources.READERS[meta.name](folder)
        sources.check_arrays(meta, arrays)
    except (DataError, MemoryError):
        raise
    except Exception as exc:
        raise DataError(
            f"dataset {meta.name!r}: could not read {', '.join(files)} in {folder}: "
            f"{type(exc).__name__}: {exc}. A file is corrupt, truncated or not in the "
            f"expected format; replace it (source: {meta.url})") from exc
    _check_count(meta, sum(len(y) for _, y in arrays.values()), expected,
                 where=f"the files in {folder}")
    cache.write(meta, home, arrays, _fingerprint(home, found))
    return {s: (torch.from_numpy(x), torch.from_numpy(y)) for s, (x, y) in arrays.items()}


def _fingerprint(home: Path, found: layouts.FileSet | None) -> dict[str, list[int]] | None:
    """The raw files' fingerprint, keyed by their path relative to the cache's
    folder `home`: `MNIST/raw/...` in the project layout (the keys caches have
    always had), `../MNIST/raw/...` in torchvision's. A cache built from one
    layout therefore never passes for the other's files."""
    if found is None:
        return None
    rel = Path(os.path.relpath(found.folder, home))  # "." or ".."
    # stat through found.folder: `home/..` does not resolve before home exists
    return {str(rel / f): v for f, v in cache.fingerprint(found.folder, found.files).items()}


def missing_error(meta: DatasetInfo, root: Path, download: bool,
                  reason: str | None = None) -> DataError:
    """Lists the files of the layout closest to complete (the project's when
    none has any), with `[missing]` beside those absent, and names both
    folders searched."""
    near = layouts.closest(meta, root)
    folder = near.folder

    def listing(files):
        return "\n".join(f"  {f}{'' if (folder / f).is_file() else '   [missing]'}" for f in files)

    files_text = "\nor this one:\n".join(listing(fs) for fs in meta.file_sets)
    if reason:
        why = f"download failed ({reason})"
    elif download and not meta.downloadable:
        why = "it cannot be downloaded automatically"
    else:
        why = "download is off"
    how = (f"or fetch them with `sal-ray data prepare {meta.name} --download` "
           "(or load(..., download=True))" if meta.downloadable else
           "they must be fetched by hand")
    project = layouts.layout_folder(meta, root, layouts.PROJECT)
    return DataError(
        f"dataset {meta.name!r} ({meta.title}) is not on disk and {why}.\n"
        f"Put these files in the directory {folder}:\n{files_text}\n"
        f"Searched: {project} (this project's layout), then {root} (torchvision's, "
        f"as {meta.source}(root={root}) leaves it). "
        f"Source: {meta.url}; {how}. "
        f"The data root is the `root` argument, else ${ENV_ROOT}, else {DEFAULT_ROOT}.")


def _download(meta: DatasetInfo, root: Path) -> None:
    """Fetch into the project layout, `<root>/<name>/`."""
    try:
        sources.download(meta, root / meta.folder)
    except Exception as exc:  # no network, gdown missing, bad MD5, ...
        raise missing_error(meta, root, True, f"{type(exc).__name__}: {exc}") from exc


def _verify_md5(meta: DatasetInfo, folder: Path, files: tuple[str, ...]) -> None:
    # torchvision.datasets loads only for the datasets that need it (seconds)
    from torchvision.datasets.utils import calculate_md5

    official = sources.official_md5(meta.name)
    for rel in files:
        want = official.get(rel)
        if want is None:
            continue
        got = calculate_md5(str(folder / rel))
        if got != want:
            raise DataError(
                f"dataset {meta.name!r}: {folder / rel} has MD5 {got}, but the official file "
                f"has {want} (recorded by torchvision). The file is corrupt, truncated or "
                f"from another release: replace it (source: {meta.url}), or pass "
                "verify_md5=False / --no-verify-md5 if you trust it (the sample count is "
                "still checked).")


def check_available(name: str, root: str | None = None, download: bool = False) -> None:
    """Raise DataError now, before any training, if `load` could not find the
    data. With `download`, fetches missing files (so failures show up here)."""
    meta = info(name)
    if name == "digits":
        return
    base = data_root(root)
    if cache.present(base / meta.folder) or layouts.locate(meta, base) is not None:
        return
    if download and meta.downloadable:
        _download(meta, base)
        if layouts.locate(meta, base) is not None:
            return
    raise missing_error(meta, base, download)


def status(name: str, root: str | None = None) -> str:
    """What `data list` shows (no file is read): 'bundled', 'cached',
    'raw files', 'raw files (torchvision layout)', 'partial: missing F, G'
    (some of a file set present, naming the absent ones; '(torchvision
    layout)' after 'partial' when that is where they are) or 'missing'."""
    meta = info(name)
    if not meta.needs_files:
        return "bundled"
    base = data_root(root)
    if cache.present(base / meta.folder):
        return "cached"
    where = {layouts.PROJECT: "", layouts.TORCHVISION: " (torchvision layout)"}
    found = layouts.locate(meta, base)
    if found is not None:
        return "raw files" + where[found.layout]
    near = layouts.closest(meta, base)
    if near.present:
        return f"partial{where[near.layout]}: missing {', '.join(near.missing)}"
    return "missing"


def describe_source(name: str, root: str | None = None) -> str:
    """Where `load` takes `name` from, for a one-line report: the folder of
    its raw files (and their layout), else its cache, else scikit-learn."""
    meta = info(name)
    if not meta.needs_files:
        return "scikit-learn"
    found = raw_files(name, root)
    if found is None:
        return str(dataset_folder(name, root) / cache.CACHE_DIR)
    return str(found.folder) + ("" if found.layout == layouts.PROJECT else
                                " (torchvision layout)")


def _check_count(meta: DatasetInfo, got: int, expected: int | None,
                 where: str = "scikit-learn") -> None:
    want = meta.n_samples if expected is None else expected
    if got != want:
        origin = "the spec's Table 1" if expected is None else "expected_samples"
        raise DataError(
            f"dataset {meta.name!r}: {where} hold {got:,} samples, but {origin} says "
            f"{want:,}. The files are incomplete, truncated or a different version "
            f"(source: {meta.url}).")


def _load_digits() -> Splits:
    """scikit-learn's bundled 8x8 digits: nothing on disk, nothing cached.
    Stratified 80/20 split, then z-score per feature with train statistics."""
    # scikit-learn loads only where it is used (seconds)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    idx_train, idx_val = stratified_split(y, VAL_FRACTION, SPLIT_SEED)
    mean, std = zscore_fit(x[idx_train])

    def prep(idx):
        return torch.from_numpy(((x[idx] - mean) / std).astype(np.float32))

    return Splits("digits", prep(idx_train), torch.from_numpy(y[idx_train]),
                  prep(idx_val), torch.from_numpy(y[idx_val]),
                  n_classes=10, input_dim=64)
