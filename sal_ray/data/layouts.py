"""Where a dataset's raw files may sit under the data root, and which are there.

Two layouts are searched, in this order:

1. **project**: `<root>/<name>/` is the root handed to the torchvision class,
   so MNIST's files are in `<root>/mnist/MNIST/raw/`. `sal-ray data prepare
   --download` writes this layout, and the cache always lives here.
2. **torchvision**: `<root>` itself is the torchvision root, as
   `torchvision.datasets.MNIST(root)` leaves it: `<root>/MNIST/raw/`,
   `<root>/cifar-10-batches-py/`, `<root>/usps.bz2`, ...

Each dataset's `files` are relative to the torchvision root, so both layouts
hold the same relative paths under a different folder. The project layout comes
first because it is the one this project writes and documents: when both are
complete, the files a user put in `<root>/<name>/` on purpose win. Nothing here
reads a file's contents; it only looks at which files exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .registry import DatasetInfo

PROJECT, TORCHVISION = "project", "torchvision"
LAYOUTS = (PROJECT, TORCHVISION)


@dataclass(frozen=True)
class FileSet:
    """One complete set of a dataset's files, looked for in one layout's folder."""
    layout: str                 # PROJECT or TORCHVISION
    folder: Path                # the root handed to the torchvision class
    files: tuple[str, ...]      # relative to `folder`
    present: tuple[str, ...]    # those of `files` that exist

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(f for f in self.files if f not in self.present)

    @property
    def complete(self) -> bool:
        return len(self.present) == len(self.files)


def layout_folder(meta: DatasetInfo, root: Path, layout: str) -> Path:
    """The torchvision root of `meta` under the data root `root` in `layout`."""
    return root / meta.folder if layout == PROJECT else root


def candidates(meta: DatasetInfo, root: Path) -> list[FileSet]:
    """Every (layout, file set) pair in search order: layouts first, then the
    dataset's file sets, preferred first."""
    out = []
    for layout in LAYOUTS:
        folder = layout_folder(meta, root, layout)
        for files in meta.file_sets:
            out.append(FileSet(layout, folder, files,
                               tuple(f for f in files if (folder / f).is_file())))
    return out


def locate(meta: DatasetInfo, root: Path) -> FileSet | None:
    """The first complete file set in search order, or None."""
    return next((c for c in candidates(meta, root) if c.complete), None)


def closest(meta: DatasetInfo, root: Path) -> FileSet:
    """The file set with the most files present (the first in search order on a
    tie): what a message about missing files should list."""
    cands = candidates(meta, root)
    return max(cands, key=lambda c: (len(c.present), -cands.index(c)))
