"""Fashion-MNIST and MNIST as tensors, offline when Debian's copy is installed.

Where the images come from, in order:

1. ``<root>/<FashionMNIST|MNIST>/raw/``, already decompressed (torchvision's layout);
2. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/*.gz``),
   decompressed into that folder (its gzip files differ byte for byte from the ones torchvision
   checks, so they cannot just be copied);
3. torchvision's download (Colab, or any machine online).

If none works, ``DatasetUnavailableError`` names the dataset, the folder and the remedies.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "DatasetUnavailableError",
    "default_root",
    "prepare",
    "load_dataset",
    "load_tensors",
    "read_idx",
    "Batches",
    "make_loader",
]


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset lives and how its pixels are standardised."""

    folder: str  # torchvision's folder name under the root, and its dataset class
    mean: float  # pixel mean and std of the training set, after scaling to [0, 1]
    std: float
    debian_dir: Path | None  # Debian's copy, if Debian packages one
    debian_package: str | None


DATASETS = {
    "fashion-mnist": DatasetInfo(
        "FashionMNIST",
        0.2860,
        0.3530,
        Path("/usr/share/datasets/fashion-mnist"),
        "dataset-fashion-mnist",
    ),
    "mnist": DatasetInfo("MNIST", 0.1307, 0.3081, None, None),
}

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither on disk, nor in Debian's package, nor downloadable."""


def default_root() -> Path:
    """Where datasets are kept: ``$BNLIB_DATA`` if set; else the book's ``data/`` folder when bnlib
    runs from the book's checkout (so both language twins share one copy); else ``./data``."""
    if os.environ.get("BNLIB_DATA"):
        return Path(os.environ["BNLIB_DATA"])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "_config.yml").is_file():
        return checkout / "data"
    return Path("data")


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def _raw_dir(name: str, root: Path) -> Path:
    return Path(root) / _info(name).folder / "raw"


def _has_raw(raw: Path) -> bool:
    return all((raw / f).is_file() for f in RAW_FILES)


def prepare(name: str = "fashion-mnist", root: Path | str | None = None, debian_dir=None) -> bool:
    """Decompress Debian's copy of ``name`` into ``<root>/<folder>/raw/`` if it is not there yet.

    Args:
        name: "fashion-mnist" or "mnist".
        root: the data folder. Default: ``default_root()``.
        debian_dir: where Debian's ``.gz`` files are. Default: the package's folder.

    Returns:
        True if the raw files are now in place, False if there was nothing to decompress.
    """
    info = _info(name)
    raw = _raw_dir(name, Path(root) if root is not None else default_root())
    if _has_raw(raw):
        return True
    source = Path(debian_dir) if debian_dir is not None else info.debian_dir
    if source is None or not all((source / f"{f}.gz").is_file() for f in RAW_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for f in RAW_FILES:
        partial = raw / f"{f}.partial"
        with gzip.open(source / f"{f}.gz", "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(raw / f)  # atomic: an interrupted run leaves no half file behind
    return True


def _torchvision_class(info: DatasetInfo) -> type:
    # imported only here: torchvision takes a second or more to import, and reading the files
    # already on disk does not need it (every notebook kernel and DDP worker saves that time)
    return getattr(importlib.import_module("torchvision.datasets"), info.folder)


def read_idx(path: Path | str) -> Tensor:
    """An uncompressed IDX file (the MNIST format) as a uint8 tensor of its stated shape.

    Header: two zero bytes, the type code 0x08 (unsigned bytes), the number of dimensions, then
    each dimension as a big-endian int32; the values follow.
    """
    content = Path(path).read_bytes()
    if len(content) < 4 or content[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {content[:4]!r})")
    ndim = content[3]
    shape = [int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = content[4 + 4 * ndim :]
    if len(data) != torch.Size(shape).numel():
        raise ValueError(f"{path} announces shape {shape} but holds {len(data)} values")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(shape)


def load_dataset(
    name: str = "fashion-mnist",
    train: bool = True,
    root: Path | str | None = None,
    download: bool = True,
    debian_dir=None,
):
    """The torchvision dataset ``name`` (images as PIL, labels as ints), found or fetched.

    Raises:
        DatasetUnavailableError: nothing on disk, no Debian copy, and no download possible.
    """
    info = _info(name)
    root = Path(root) if root is not None else default_root()
    prepare(name, root, debian_dir)
    if _has_raw(_raw_dir(name, root)):
        return _torchvision_class(info)(str(root), train=train, download=False)
    problem = "downloading is switched off (download=False)"
    if download:
        try:
            return _torchvision_class(info)(str(root), train=train, download=True)
        except Exception as exc:  # no network: URLError, RuntimeError from every mirror, ...
            problem = f"the download failed ({type(exc).__name__}: {exc})"
    remedies = ["connect to the internet and call again with download=True"]
    if info.debian_package:
        remedies.insert(0, f"install Debian's copy: apt-get install {info.debian_package}")
    remedies.append(f"or put the four decompressed IDX files ({', '.join(RAW_FILES)}) there")
    raise DatasetUnavailableError(
        f"{name} was not found in {_raw_dir(name, root)} and {problem}. Remedies: "
        + "; ".join(remedies)
        + "."
    )


def load_tensors(
    name: str = "fashion-mnist",
    train: bool = True,
    root: Path | str | None = None,
    limit: int | None = None,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Images standardised with the training set's mean and std, and labels, as tensors.

    Args:
        limit: keep only the first ``limit`` examples (the files' own order), for quick runs.

    Returns:
        ``(X, y)``: X float32 of shape (N, 1, 28, 28), y int64 of shape (N,).
    """
    info = _info(name)
    root = Path(root) if root is not None else default_root()
    raw = _raw_dir(name, root)
    if prepare(name, root):  # on disk (or just decompressed): read the IDX files directly
        split = "train" if train else "t10k"
        files = [raw / f"{split}-{kind}-idx{n}-ubyte" for kind, n in (("images", 3), ("labels", 1))]
        stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)  # a rewritten file
        X, labels = _standardised_split(name, tuple(map(str, files)), stamp, limit)
        return X.clone(), labels.clone()  # the caller's own copy: the cached one stays intact
    dataset = load_dataset(name, train=train, root=root, download=download)  # torchvision
    return _standardise(info, dataset.data, dataset.targets, limit)


def _standardise(info: DatasetInfo, images: Tensor, labels: Tensor, limit: int | None):
    """``(X, y)`` of ``load_tensors`` from uint8 images (N, 28, 28) and their labels."""
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    X = (images.float().div(255.0).unsqueeze(1) - info.mean) / info.std  # (N, 1, 28, 28)
    return X, labels.long().clone()


@functools.lru_cache(maxsize=4)
def _standardised_split(name: str, files: tuple[str, str], stamp: tuple, limit: int | None):
    """The IDX files (images, labels) of one split, read and standardised once per process
    (``stamp``, their modification times and sizes, is part of the key: a file rewritten is
    read again). A training run of a small network would otherwise spend as long reading and
    converting them (about 0.4 s) as training."""
    images = read_idx(files[0])  # uint8 (N, 28, 28)
    labels = read_idx(files[1])  # (N,)
    return _standardise(_info(name), images, labels, limit)


class Batches:
    """Mini-batches of (X, y): the batches ``DataLoader(TensorDataset(X, y), batch_size, shuffle,
    generator=torch.Generator().manual_seed(seed), drop_last=drop_last)`` gives, in the same
    order and with the same draws from its generator, epoch after epoch, but each batch taken
    with one tensor index of X and y.

    A DataLoader costs about a millisecond per batch on these CPUs (its sampler, its fetcher,
    indexing with a list of Python ints), more than a training step of the paper's MLP; here a
    batch costs one slice and two indexings. The draws, per epoch, are the DataLoader's: one
    integer (its workers' base seed), one permutation (``RandomSampler``), and, once the epoch
    is exhausted, the sampler's second permutation, of which it keeps nothing.
    """

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        if len(X) != len(y):
            raise ValueError(f"X and y differ in length: {len(X)} images, {len(y)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.X, self.y, self.batch_size = X, y, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        full, rest = divmod(len(self.X), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def indices(self) -> Iterator[Tensor]:
        """The rows of X of each mini-batch of one epoch, drawn as ``__iter__`` draws them
        (``training.stacked_batches`` gathers several loaders' batches at once with them)."""
        n, size, g = len(self.X), self.batch_size, self.generator
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader's base seed
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        full = n // size
        for i in range(full):
            yield order[i * size : (i + 1) * size]
        if self.shuffle:
            # RandomSampler draws its next permutation when its indices run out: before the
            # last, incomplete batch if it is kept, else when a batch after the last is asked.
            torch.randperm(n, generator=g)
        if full * size < n and not self.drop_last:
            yield order[full * size :]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in self.indices():
            yield self.X[index], self.y[index]


def make_loader(
    X: Tensor,
    y: Tensor,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
) -> Batches:
    """Mini-batches of (X, y), shuffled reproducibly from ``seed``: those of a plain
    ``DataLoader`` with this seed, faster (``Batches``).

    ``drop_last=True`` by default: a last batch of one example would make batch norm fail in
    training, and a last small batch has noisier statistics than the others.
    """
    return Batches(X, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)


if __name__ == "__main__":  # python -m bnlib.data: the set-up step
    ready = prepare("fashion-mnist")
    where = _raw_dir("fashion-mnist", default_root())
    print(
        f"Fashion-MNIST ready in {where}"
        if ready
        else f"Fashion-MNIST: no Debian copy; torchvision will download it into {where}"
    )
