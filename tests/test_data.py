"""bnlib.data: Debian's copy, the MNIST path on IDX files written here, and the errors."""

import gzip
import os
import struct
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from bnlib import data

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian_copy = pytest.mark.skipif(
    not DEBIAN.is_dir() and not os.environ.get("CI"),
    reason="Debian's dataset-fashion-mnist is missing (CI installs it: never skipped there)",
)


def write_idx(raw: Path, images: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    """Write images (N, 28, 28) uint8 and labels (N,) in the IDX format MNIST files use."""
    raw.mkdir(parents=True, exist_ok=True)
    n = len(images)
    (raw / f"{split}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes()
    )
    (raw / f"{split}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.numpy().astype("uint8").tobytes()
    )


@needs_debian_copy
def test_fashion_mnist_from_debian_copy(tmp_path):
    assert data.prepare("fashion-mnist", tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    with gzip.open(DEBIAN / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == f.read()
    X, y = data.load_tensors("fashion-mnist", train=False, root=tmp_path, download=False)
    assert X.shape == (10_000, 1, 28, 28) and X.dtype == torch.float32
    assert y.shape == (10_000,) and set(y.unique().tolist()) == set(range(10))
    X_train, _ = data.load_tensors("fashion-mnist", train=True, root=tmp_path, download=False)
    assert X_train.shape == (60_000, 1, 28, 28)
    # standardised with the training set's statistics
    assert abs(X_train.mean().item()) < 0.01 and abs(X_train.std().item() - 1) < 0.01
    assert not any(raw.glob("*.partial"))


def test_mnist_from_idx_files_written_here(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    g = torch.Generator().manual_seed(0)
    train_images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=g)
    train_labels = torch.tensor([3, 1, 4, 1, 5])
    write_idx(raw, train_images, train_labels, "train")
    write_idx(raw, train_images[:3], train_labels[:3], "t10k")
    X, y = data.load_tensors("mnist", train=True, root=tmp_path, download=False)
    assert X.shape == (5, 1, 28, 28) and y.tolist() == [3, 1, 4, 1, 5]
    info = data.DATASETS["mnist"]
    expected = (train_images.float() / 255 - info.mean) / info.std
    torch.testing.assert_close(X[:, 0], expected)
    X_test, y_test = data.load_tensors("mnist", train=False, root=tmp_path, download=False)
    assert X_test.shape == (3, 1, 28, 28) and y_test.tolist() == [3, 1, 4]
    assert data.load_tensors("mnist", root=tmp_path, limit=2, download=False)[0].shape[0] == 2


def test_nothing_available_says_what_and_how_to_fix(tmp_path):
    empty = tmp_path / "no-debian-copy"
    with pytest.raises(data.DatasetUnavailableError) as caught:
        data.load_dataset("fashion-mnist", root=tmp_path, download=False, debian_dir=empty)
    message = str(caught.value)
    assert "fashion-mnist" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "internet" in message and "download=False" in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(data.DatasetUnavailableError, match="the download failed.*no network"):
        data.load_dataset("mnist", root=tmp_path, download=True)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.load_tensors("cifar")


def test_loader_is_reproducible_and_drops_the_last_batch():
    X, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    first = [b[1].tolist() for b in data.make_loader(X, y, 4, seed=1)]
    again = [b[1].tolist() for b in data.make_loader(X, y, 4, seed=1)]
    assert first == again and len(first) == 2  # 10 // 4, the last 2 dropped


@needs_debian_copy
def test_read_idx_reads_what_torchvision_reads(tmp_path):
    assert data.prepare("fashion-mnist", tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    theirs = torchvision.datasets.FashionMNIST(str(tmp_path), train=False, download=False)
    assert torch.equal(data.read_idx(raw / "t10k-images-idx3-ubyte"), theirs.data)
    assert torch.equal(data.read_idx(raw / "t10k-labels-idx1-ubyte").long(), theirs.targets)


def test_read_idx_refuses_what_is_not_idx(tmp_path):
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="is not an IDX file of unsigned bytes"):
        data.read_idx(tmp_path / "text")
    (tmp_path / "short").write_bytes(struct.pack(">II", 2049, 5) + bytes(3))
    with pytest.raises(ValueError, match=r"announces shape \[5\] but holds 3 values"):
        data.read_idx(tmp_path / "short")


def test_reading_the_data_does_not_import_torchvision():
    """torchvision costs a second or more to import in every kernel and worker process."""
    code = (
        "import sys; from bnlib.data import load_tensors; load_tensors(limit=10); "
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_make_loader_gives_the_batches_of_a_plain_dataloader(shuffle, drop_last):
    """Same batches, same order, same use of the generator, over epochs run to their end and
    epochs left after a few batches (a training loop that stops mid-epoch)."""
    X, y = torch.randn(50, 3), torch.arange(50)
    ours = data.make_loader(X, y, 8, shuffle=shuffle, seed=3, drop_last=drop_last)
    plain = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y),
        batch_size=8,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(3),
        drop_last=drop_last,
    )
    assert len(ours) == len(plain) == (6 if drop_last else 7)
    for stop in (None, 3, None, 6, 7, None):  # whole epochs, and epochs stopped after `stop`
        for i, ((xb, yb), (xp, yp)) in enumerate(zip(ours, plain, strict=True)):
            assert torch.equal(xb, xp) and torch.equal(yb, yp)
            if i + 1 == stop:
                break
    kept = data.make_loader(X, y, 8, drop_last=False)
    assert [len(yb) for _, yb in kept] == [8] * 6 + [2]


def test_make_loader_rejects_what_it_cannot_batch():
    with pytest.raises(ValueError, match="X and y differ in length: 5 images, 4 labels"):
        data.make_loader(torch.randn(5, 3), torch.arange(4), 2)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        data.make_loader(torch.randn(5, 3), torch.arange(5), 0)


def test_load_tensors_reads_the_files_once_and_hands_out_copies(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    write_idx(raw, images, torch.tensor([1, 2, 3, 4]), "train")
    write_idx(raw, images[:2], torch.tensor([1, 2]), "t10k")
    X, y = data.load_tensors("mnist", root=tmp_path, download=False)
    X[:] = 0  # the caller's copy: the next call must not see it
    y[0] = 9
    reads = []
    monkeypatch.setattr(data, "read_idx", lambda path: reads.append(path))
    X_again, y_again = data.load_tensors("mnist", root=tmp_path, download=False)
    assert reads == [] and y_again.tolist() == [1, 2, 3, 4] and X_again.abs().sum() > 0
    monkeypatch.undo()
    write_idx(raw, images.flip(0), torch.tensor([4, 3, 2, 1]), "train")  # rewritten: read again
    os.utime(raw / "train-labels-idx1-ubyte", ns=(1, 1))  # even within the same nanosecond
    assert data.load_tensors("mnist", root=tmp_path, download=False)[1].tolist() == [4, 3, 2, 1]
