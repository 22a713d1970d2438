"""The ten benchmark datasets of the paper (docs/spec.md section 4, Table 1).

One `DatasetInfo` per dataset says everything the rest of the package needs:
the sizes from the spec's table, which torchvision class (or scikit-learn
function) reads the files, where those files live under its root, and
how the data is split. Nothing here touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bump when preprocessing changes: cache files carry it in their name, so an
# old cache is never read by new code.
PREPROC_VERSION = 1

SPLIT_SEED = 0          # [choice] random_state of the stratified 80/20 split
VAL_FRACTION = 0.2      # [choice] validation share where no official split exists


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    n_classes: int
    n_samples: int            # spec Table 1: all samples, train + validation
    resolution: int           # images are resolution x resolution
    channels: int             # source channels; 3 means converted to gray
    has_official_split: bool  # False: stratified 80/20 split (SPLIT_SEED)
    source: str               # the class or function that parses the files
    folder: str               # project layout: the torchvision root under the data root
    files: tuple[str, ...]    # relative to the torchvision root (layouts.py)
    downloadable: bool        # torchvision can fetch the files itself
    url: str = ""             # where the files come from
    split_counts: tuple[int, int] | None = None  # official (train, val) sizes
    alt_files: tuple[tuple[str, ...], ...] = ()  # other complete file sets accepted
    note: str = ""

    @property
    def input_dim(self) -> int:
        """Flattened input size: gray images, so resolution squared."""
        return self.resolution * self.resolution

    @property
    def normalisation(self) -> str:
        return "zscore" if self.name == "digits" else "mean 0.5, std 0.5"

    @property
    def needs_files(self) -> bool:
        return bool(self.files)

    @property
    def file_sets(self) -> tuple[tuple[str, ...], ...]:
        """Each complete set of files the loader accepts, preferred first."""
        return (self.files,) + self.alt_files


def _info(**kw) -> DatasetInfo:
    kw.setdefault("folder", kw["name"])
    return DatasetInfo(**kw)


# Each dataset gets its own folder `<root>/<name>/`, which is the `root` handed
# to its torchvision class (the project layout; layouts.py also searches
# torchvision's own, `<root>` itself); `files` are relative to that root and
# are exactly the paths the torchvision class opens.
DATASETS_INFO: dict[str, DatasetInfo] = {i.name: i for i in (
    _info(name="cifar10",
          url="https://www.cs.toronto.edu/~kriz/cifar.html",
          title="CIFAR-10", n_classes=10, n_samples=60_000,
          resolution=32, channels=3, has_official_split=True,
          source="torchvision.datasets.CIFAR10",
          files=tuple(f"cifar-10-batches-py/{f}" for f in (
              "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
              "data_batch_5", "test_batch", "batches.meta")),
          downloadable=True, split_counts=(50_000, 10_000)),
    _info(name="pcam",
          url="https://github.com/basveeling/pcam",
          title="PCAM", n_classes=2, n_samples=327_680,
          resolution=96, channels=3, has_official_split=True,
          source="torchvision.datasets.PCAM",
          files=tuple(f"pcam/camelyonpatch_level_2_split_{s}_{k}.h5"
                      for s in ("train", "valid", "test") for k in ("x", "y")),
          downloadable=True, split_counts=(294_912, 32_768),
          note="train = official train + valid; validation = official test"),
    _info(name="stl10",
          url="https://cs.stanford.edu/~acoates/stl10/",
          title="STL-10 (labelled)", n_classes=10, n_samples=13_000,
          resolution=96, channels=3, has_official_split=True,
          source="torchvision.datasets.STL10",
          files=tuple(f"stl10_binary/{f}" for f in (
              "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")),
          downloadable=True, split_counts=(5_000, 8_000),
          note="labelled train/test splits only; the unlabelled set is not used"),
    _info(name="svhn",
          url="http://ufldl.stanford.edu/housenumbers/",
          title="SVHN (train+test)", n_classes=10, n_samples=99_289,
          resolution=32, channels=3, has_official_split=True,
          source="torchvision.datasets.SVHN",
          files=("train_32x32.mat", "test_32x32.mat"),
          downloadable=True, split_counts=(73_257, 26_032),
          note="the 'extra' split is not used"),
    _info(name="mnist",
          url="https://ossci-datasets.s3.amazonaws.com/mnist/ (gunzip the four .gz files)",
          title="MNIST", n_classes=10, n_samples=70_000,
          resolution=28, channels=1, has_official_split=True,
          source="torchvision.datasets.MNIST",
          files=tuple(f"MNIST/raw/{f}" for f in (
              "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
          downloadable=True, split_counts=(60_000, 10_000)),
    _info(name="fashion_mnist",
          url="https://github.com/zalandoresearch/fashion-mnist (gunzip the four .gz files)",
          title="Fashion-MNIST", n_classes=10, n_samples=70_000,
          resolution=28, channels=1, has_official_split=True,
          source="torchvision.datasets.FashionMNIST",
          files=tuple(f"FashionMNIST/raw/{f}" for f in (
              "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
          downloadable=True, split_counts=(60_000, 10_000)),
    _info(name="digits",
          url="bundled with scikit-learn",
          title="Digits (scikit-learn)", n_classes=10, n_samples=1_797,
          resolution=8, channels=1, has_official_split=False,
          source="sklearn.datasets.load_digits", folder="", files=(),
          downloadable=False,
          note="ships with scikit-learn; per-feature z-score fitted on train"),
    _info(name="usps",
          url="https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps",
          title="USPS", n_classes=10, n_samples=9_298,
          resolution=16, channels=1, has_official_split=True,
          source="torchvision.datasets.USPS",
          files=("usps.bz2", "usps.t.bz2"),
          downloadable=True, split_counts=(7_291, 2_007)),
    _info(name="semeion",
          url="https://archive.ics.uci.edu/dataset/178/semeion+handwritten+digit",
          title="Semeion", n_classes=10, n_samples=1_593,
          resolution=16, channels=1, has_official_split=False,
          source="torchvision.datasets.SEMEION",
          files=("semeion.data",), downloadable=True),
    _info(name="fer2013",
          url="https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge",
          title="FER2013", n_classes=7, n_samples=35_887,
          resolution=48, channels=1, has_official_split=True,
          source="torchvision.datasets.FER2013",
          files=("fer2013/fer2013.csv",), alt_files=(("fer2013/icml_face_data.csv",),),
          downloadable=False,
          split_counts=(28_709, 7_178),
          note="Kaggle file with labels for all rows; train = Training, "
               "validation = PublicTest + PrivateTest"),
)}
