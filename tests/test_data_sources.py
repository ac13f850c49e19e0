"""Data sources: Fashion-MNIST IDX reading and validation, and the synthetic grating images."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from arvision.data import FashionMNIST, SyntheticImages
from arvision.errors import DataError

REAL_ROOT = Path("/usr/share/datasets/fashion-mnist")
needs_real = pytest.mark.skipif(
    not (REAL_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed at {REAL_ROOT}",
)


def write_idx(
    root: Path, prefix: str, images: torch.Tensor, labels: torch.Tensor, gz: bool
) -> None:
    """Write uint8 images (N, H, W) and labels (N,) as IDX files named like Fashion-MNIST's."""
    n, h, w = images.shape
    image_bytes = struct.pack(">4I", 0x803, n, h, w) + images.to(torch.uint8).numpy().tobytes()
    label_bytes = (
        struct.pack(">2I", 0x801, labels.shape[0]) + labels.to(torch.uint8).numpy().tobytes()
    )
    for name, data in (("images-idx3", image_bytes), ("labels-idx1", label_bytes)):
        path = root / f"{prefix}-{name}-ubyte"
        if gz:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)


@pytest.fixture
def tiny_root(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A fake Fashion-MNIST test split of 6 images with known contents (gzip files)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 28, 28), generator=gen, dtype=torch.uint8)
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    write_idx(tmp_path, "t10k", images, labels, gz=True)
    return tmp_path, images, labels


@pytest.fixture(scope="module")
def real_test_split() -> FashionMNIST:
    return FashionMNIST(REAL_ROOT, split="test")


@needs_real
def test_real_test_split_shapes_range_and_labels(real_test_split: FashionMNIST) -> None:
    ds = real_test_split
    assert len(ds) == 10000
    assert ds.num_classes == len(ds.classes) == 10
    assert (ds.image_size, ds.channels) == (28, 1)
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert isinstance(label, int)
    batch = torch.stack([ds[i][0] for i in range(64)])  # (64, 1, 28, 28)
    assert batch.min() >= 0.0 and batch.max() <= 1.0 and batch.max() > 0.9
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (10000,)
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), 1000))


@needs_real
def test_real_limit_keeps_the_first_examples(real_test_split: FashionMNIST) -> None:
    small = FashionMNIST(REAL_ROOT, split="test", limit=5)
    assert len(small) == 5
    assert torch.equal(small.labels, real_test_split.labels[:5])
    for i in range(5):
        assert torch.equal(small[i][0], real_test_split[i][0])
    assert len(FashionMNIST(REAL_ROOT, split="train", limit=7)) == 7


def test_reads_known_values_from_gzip_files(tiny_root) -> None:
    root, images, labels = tiny_root
    ds = FashionMNIST(root, split="test")
    assert len(ds) == 6 and torch.equal(ds.labels, labels)
    image, label = ds[2]
    assert label == 4
    assert torch.allclose(image[0], images[2].float() / 255)
    assert len(FashionMNIST(root, split="test", limit=100)) == 6


def test_reads_uncompressed_files_when_gz_is_absent(tmp_path: Path) -> None:
    images = torch.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    write_idx(tmp_path, "train", images, torch.tensor([7, 2]), gz=False)
    ds = FashionMNIST(tmp_path)
    assert ds[1][1] == 2 and torch.allclose(ds[1][0][0], images[1].float() / 255)


def test_missing_root_is_one_line_with_install_hint(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        FashionMNIST(missing)
    message = str(info.value)
    assert "\n" not in message
    assert str(missing / "train-images-idx3-ubyte.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_missing_label_file_is_named(tiny_root) -> None:
    root, _, _ = tiny_root
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz is missing"):
        FashionMNIST(root, split="test")


def test_truncated_gzip_names_the_file(tiny_root) -> None:
    root, _, _ = tiny_root
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError) as info:
        FashionMNIST(root, split="test")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_short_payload_is_reported_as_truncated(tmp_path: Path) -> None:
    images = torch.zeros(3, 28, 28)
    write_idx(tmp_path, "t10k", images, torch.tensor([0, 1, 2]), gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(DataError, match="truncated data"):
        FashionMNIST(tmp_path, split="test")


def test_bad_magic_and_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path, "t10k", torch.zeros(3, 28, 28), torch.tensor([0, 1]), gz=True)
    with pytest.raises(DataError, match=r"3 images but .* 2 labels"):
        FashionMNIST(tmp_path, split="test")
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">2I", 0x803, 3) + bytes(3)))
    with pytest.raises(DataError, match="magic number"):
        FashionMNIST(tmp_path, split="test")


def test_unknown_split_names_it_and_the_choices(tiny_root) -> None:
    with pytest.raises(DataError, match=r"'val'.*'train', 'test'"):
        FashionMNIST(tiny_root[0], split="val")


def test_synthetic_is_deterministic_per_index() -> None:
    a, b = SyntheticImages(num_images=16, seed=3), SyntheticImages(num_images=64, seed=3)
    for i in (0, 5, 15):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    assert not torch.equal(a[0][0], SyntheticImages(num_images=16, seed=4)[0][0])
    assert not torch.equal(a[0][0], a[a.num_classes][0])  # same class, different image


def test_synthetic_shapes_range_and_labels() -> None:
    ds = SyntheticImages(num_images=10, image_size=12, channels=2, num_classes=5)
    assert len(ds) == 10 and (ds.image_size, ds.channels, ds.num_classes) == (12, 2, 5)
    assert len(ds.classes) == 5
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([img for img, _ in items])  # (N, C, H, W)
    assert images.shape == (10, 2, 12, 12) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0.1
    assert ds.labels.tolist() == [label for _, label in items]
    assert ds.labels.dtype == torch.int64 and set(ds.labels.tolist()) == set(range(5))
    with pytest.raises(IndexError):
        ds[10]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_images": 0}, "num_images"),
        ({"image_size": -1}, "image_size"),
        ({"channels": 1.5}, "channels"),
        ({"num_classes": True}, "num_classes"),
    ],
)
def test_synthetic_rejects_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SyntheticImages(**kwargs)


def test_synthetic_classes_are_separable_and_pixels_predictable() -> None:
    ds = SyntheticImages(num_images=400, image_size=16, channels=3, num_classes=4, seed=1)
    images = torch.stack([ds[i][0] for i in range(len(ds))])  # (N, C, H, W)
    labels = ds.labels
    train, test = slice(0, 200), slice(200, 400)
    means = torch.stack(
        [images[train][labels[train] == k].mean(0) for k in range(ds.num_classes)]
    )  # (K, C, H, W)
    predicted = torch.cdist(images[test].flatten(1), means.flatten(1)).argmin(1)  # (200,)
    assert (predicted == labels[test]).float().mean() > 0.9
    left, right = images[..., :-1].flatten(), images[..., 1:].flatten()
    assert torch.corrcoef(torch.stack([left, right]))[0, 1] > 0.7
