"""The loader: image folders, crops and resizes to the student's size, clear errors."""

import pytest
import torch
from torchvision.io import write_png

from arvision.data.loader import build_dataset, build_loader
from arvision.errors import DataError
from arvision.recipe import DataConfig


def image_tree(root, classes=("cat", "dog"), per_class=3, size=20):
    for index, name in enumerate(classes):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for item in range(per_class):
            pixels = torch.full((3, size, size + 4), 40 * (index + 1) + item, dtype=torch.uint8)
            write_png(pixels, str(folder / f"{item}.png"))


def test_image_folder_yields_cropped_float_images(tmp_path):
    image_tree(tmp_path)
    config = DataConfig(source="imagefolder", root=str(tmp_path), crop_scale=(0.2, 1.0), flip=True)
    dataset = build_dataset(config)
    assert len(dataset) == 6
    loader = build_loader(dataset, config, batch_size=3, size=16, seed=0)
    images, labels, seeds = next(iter(loader))
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert set(labels.tolist()) <= {0, 1}
    assert seeds.dtype == torch.int64 and len(set(seeds.tolist())) == 3  # one seed per sample


def test_loader_order_is_seeded(tmp_path):
    image_tree(tmp_path)
    config = DataConfig(source="imagefolder", root=str(tmp_path))
    def order(seed: int) -> list[float]:  # each image has its own constant grey level
        loader = build_loader(build_dataset(config), config, 2, 8, seed)
        return [value for images, _, _ in loader for value in images[:, 0, 0, 0].tolist()]

    assert order(3) == order(3)
    assert sorted(order(3)) == sorted(order(4)) and order(3) != order(4)


@pytest.mark.parametrize(("root", "message"), [
    (None, "data.root: required for source 'imagefolder'"),
    ("missing", "does not exist"),
])
def test_image_folder_errors_name_the_key(tmp_path, root, message):
    config = DataConfig(source="imagefolder", root=None if root is None else str(tmp_path / root))
    with pytest.raises(DataError, match=message):
        build_dataset(config)


def test_empty_image_folder_is_a_data_error(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="train"):
        build_dataset(DataConfig(source="imagefolder", root=str(tmp_path)))
