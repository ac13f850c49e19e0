"""The lmdb source through the loader (0 and 2 workers, exact resume), and bad images in the
imagefolder and lmdb sources: skipped, counted and named, or fatal with ``data.on_error``."""

import pytest
import torch
from test_data_pack import CLASSES, fake_fashion, image_tree

from arvision.data.loader import build_batches, build_dataset
from arvision.data.pack import PackOptions, pack
from arvision.data.pack_format import key, open_env, reader, verify
from arvision.data.sources import image_spec
from arvision.data.unreadable import BadImageError
from arvision.errors import DataError
from arvision.recipe import DataConfig
from conftest import tiny_recipe


@pytest.fixture
def folder_pack(tmp_path):
    image_tree(tmp_path / "src")
    pack(PackOptions(src=tmp_path / "src", out=tmp_path / "train.lmdb", split="train", short_side=16,
                     workers=1))
    return tmp_path / "train.lmdb"


def take(batches, count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [next(batches) for _ in range(count)]


@pytest.mark.parametrize("workers", [0, 2])
def test_lmdb_source_batches_and_resume(folder_pack, workers):
    config = DataConfig(source="lmdb", root=str(folder_pack.parent / "{split}.lmdb"), num_workers=workers,
                        crop_scale=(0.5, 1.0), flip=True)
    dataset = build_dataset(config)
    assert len(dataset) == 12 and dataset.classes == list(CLASSES)
    first = take(build_batches(dataset, config, 4, 8, seed=3), 5)  # crosses an epoch
    for images, labels, _seeds in first:
        assert images.shape == (4, 3, 8, 8) and images.min() >= 0 and images.max() <= 1
        assert set(labels.tolist()) <= {0, 1, 2}
    reference = take(build_batches(dataset, DataConfig(source="lmdb", root=str(folder_pack),
                                                       crop_scale=(0.5, 1.0), flip=True), 4, 8, 3), 5)
    for (a, la, sa), (b, lb, sb) in zip(first, reference, strict=True):  # workers change nothing
        assert torch.equal(a, b) and torch.equal(la, lb) and torch.equal(sa, sb)
    batches = build_batches(dataset, config, 4, 8, seed=3)
    take(batches, 2)
    state = batches.state_dict()
    resumed = build_batches(build_dataset(config), config, 4, 8, seed=3)
    resumed.load_state_dict(state)
    for (a, la, sa), (b, lb, sb) in zip(take(resumed, 3), first[2:], strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb) and torch.equal(sa, sb)


def test_lmdb_source_errors(tmp_path, folder_pack):
    with pytest.raises(DataError, match="data.root: required for source 'lmdb'"):
        build_dataset(DataConfig(source="lmdb"))
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(DataConfig(source="lmdb", root=str(tmp_path / "none.lmdb")))
    with pytest.raises(DataError, match="holds split 'train'"):
        build_dataset(DataConfig(source="lmdb", root=str(folder_pack)), split="val")


def test_recipe_geometry_comes_from_the_pack(tmp_path):
    fake_fashion(tmp_path)
    out = tmp_path / "fm.lmdb"
    pack(PackOptions(src=tmp_path, out=out, source="fashion_mnist", split="test", workers=1))
    recipe = tiny_recipe(data={"source": "lmdb", "root": str(out), "split": "test"})
    assert image_spec(recipe.data) == (28, 1)
    missing = tiny_recipe(data={"source": "lmdb", "root": str(tmp_path / "not-yet.lmdb")})
    assert image_spec(missing.data) == (None, 3)


BAD = ("truncated.jpg", "empty.jpg", "notes.jpg")


@pytest.mark.parametrize("workers", [0, 2])
def test_image_folder_skips_and_names_bad_files(tmp_path, capfd, workers):
    image_tree(tmp_path / "train", bad=True)
    config = DataConfig(source="imagefolder", root=str(tmp_path), num_workers=workers)
    dataset = build_dataset(config)
    assert len(dataset) == 15
    names = [path.rsplit("/", 1)[-1] for path, _ in dataset.dataset.samples]
    if workers == 0:
        items = [dataset[i] for i in range(len(dataset))]
        for name in BAD:  # a bad item is the next readable one (notes.jpg: the first item)
            index = names.index(name)
            assert torch.equal(items[index][0], items[(index + 1) % len(items)][0])  # wraps
        assert len(dataset.skipped) == 3
    else:
        batches = build_batches(dataset, config, 5, 8, seed=0)
        for images, _, _ in take(batches, 6):  # two epochs: every item, batches stay full
            assert images.shape == (5, 3, 8, 8)
        del batches
    err = capfd.readouterr().err
    for name in BAD:
        lines = [line for line in err.splitlines() if name in line]
        assert lines and all(line.startswith("arvision: warning: skipped unreadable image") for line in lines)
        assert len(lines) <= max(1, workers)  # once per process that meets it


@pytest.mark.parametrize("workers", [0, 2])
def test_on_error_raise_names_the_file(tmp_path, workers):
    image_tree(tmp_path / "train", bad=True)
    config = DataConfig(source="imagefolder", root=str(tmp_path), num_workers=workers, on_error="raise")
    dataset = build_dataset(config)
    batches = build_batches(dataset, config, 15, 8, seed=0)
    with pytest.raises(BadImageError, match=r"(truncated|empty|notes)\.jpg: ") as error:
        next(batches)
    assert "\n" not in str(error.value) and "Traceback" not in str(error.value)


def test_corrupt_record_in_a_pack(folder_pack, capfd):
    env = open_env(folder_pack, write=True)  # spoil record 5's image, keep its key and digest
    try:
        with env.begin(write=True) as txn:
            images = env.open_db(b"images", txn=txn)
            record = txn.get(key(5), db=images)
            txn.put(key(5), record[:-200], db=images)
    finally:
        env.close()
    dataset = build_dataset(DataConfig(source="lmdb", root=str(folder_pack)))  # cheap check passes
    assert torch.equal(dataset[5][0], dataset[6][0])
    assert dataset.skipped == {5}
    assert "record 000000005: dog/1.jpg: Image is incomplete or truncated" in capfd.readouterr().err
    with pytest.raises(DataError, match="record 000000005 does not match its digest"):
        verify(reader(folder_pack)[0], folder_pack)  # what `arvision data info --verify` runs
    with pytest.raises(BadImageError, match="record 000000005: dog/1.jpg: "):
        build_dataset(DataConfig(source="lmdb", root=str(folder_pack), on_error="raise"))[5]
