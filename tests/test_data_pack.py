"""`arvision data pack` and `data info`: round trips, resume after interruption, bad files, and
packs whose manifest does not match their content."""

import json
from pathlib import Path

import attrs
import pytest
import torch
from test_data_sources import write_idx
from torchvision.io import encode_jpeg, write_jpeg, write_png

from arvision.data.image_folder import read_image
from arvision.data.images import resize_short_side
from arvision.data.lmdb_dataset import LmdbImages
from arvision.data.pack import PackOptions, pack
from arvision.data.pack_format import key, open_env, reader
from arvision.errors import DataError
from conftest import run_cli

CLASSES = ("cat", "dog", "fox")
#: (height, width) of the images of each class: smaller and larger than a short side of 16.
SIZES = ((12, 20), (30, 18), (40, 40), (17, 33))


def image_tree(root: Path, bad: bool = False) -> dict[str, torch.Tensor]:
    """12 images under ``root/<class>/``, PNG and JPEG of different sizes; with ``bad``, also a
    truncated JPEG, a zero-byte file and a text file named .jpg. Returns uint8 images by name."""
    images = {}
    gen = torch.Generator().manual_seed(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for item, (height, width) in enumerate(SIZES):
            ramp = torch.linspace(0, 200, width).expand(3, height, width)
            pixels = (ramp + torch.randint(0, 8, (3, height, width), generator=gen)).to(torch.uint8)
            pixels[label] = 255 - pixels[label]
            rel = f"{name}/{item}.{'png' if item % 2 == 0 else 'jpg'}"
            (write_png if rel.endswith("png") else write_jpeg)(pixels, str(root / rel))
            images[rel] = read_image(str(root / rel))  # what the packer decodes
    if bad:
        jpeg = encode_jpeg(torch.zeros(3, 32, 32, dtype=torch.uint8)).numpy().tobytes()
        (root / "cat" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
        (root / "dog" / "empty.jpg").write_bytes(b"")
        (root / "fox" / "notes.jpg").write_text("not an image\n")
    return images


def as_uint8(image: torch.Tensor) -> torch.Tensor:
    return image.mul(255).round().to(torch.uint8)




def records(path: Path) -> dict[bytes, bytes]:
    env, images = reader(path)
    with env.begin() as txn:
        return dict(txn.cursor(db=images))


def manifest_of(path: Path) -> dict:
    env, _ = reader(path)
    with env.begin() as txn:
        return json.loads(txn.get(b"manifest"))


def without_time(manifest: dict) -> dict:
    """The manifest less what depends on when and how it was written (a resumed pack's file may
    be laid out differently; its content hash is the same)."""
    return {k: v for k, v in manifest.items()
            if k not in ("created", "limit", "disk_bytes", "bytes_per_image")}


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_image_folder_round_trip(tmp_path, capsys, image_format):
    originals = image_tree(tmp_path / "src")
    out = tmp_path / "pack.lmdb"
    code, out_text, _ = run_cli(capsys, "data", "pack", tmp_path / "src", out, "--short-side", 16,
                                "--format", image_format, "--workers", 2)
    assert code == 0 and "12 images, 0 skipped" in out_text
    dataset = LmdbImages(out)
    assert len(dataset) == 12 and dataset.classes == list(CLASSES) and dataset.channels == 3
    names = sorted(originals)  # ImageFolder order: classes, then file names
    for index, name in enumerate(names):
        image, label = dataset[index]
        assert label == CLASSES.index(name.split("/")[0])
        expected = resize_short_side(originals[name], 16)
        assert image.shape == expected.shape and min(image.shape[1:]) == min(16, *originals[name].shape[1:])
        diff = (as_uint8(image).float() - expected.float()).abs()
        if image_format == "png":
            assert diff.max() == 0
        else:
            assert diff.mean() < 3
    manifest = dataset.manifest
    assert manifest["count"] == 12 and manifest["class_counts"] == [4, 4, 4]
    assert (manifest["short_side"], manifest["quality"], manifest["image_format"]) == (16, 95, image_format)


def test_split_folder_is_used_when_present(tmp_path, capsys):
    image_tree(tmp_path / "src" / "train")
    code, _, _ = run_cli(capsys, "data", "pack", tmp_path / "src", tmp_path / "a.lmdb", "--split", "train",
                         "--short-side", 16, "--workers", 1)
    assert code == 0
    manifest = manifest_of(tmp_path / "a.lmdb")
    assert manifest["split"] == "train" and manifest["src"].endswith("src/train")
    assert manifest["classes"] == list(CLASSES)


def fake_fashion(root: Path, count: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (count, 28, 28), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    labels = torch.arange(count) % 10
    write_idx(root, "t10k", images, labels, gz=True)
    return images, labels


def test_fashion_mnist_pack_is_lossless(tmp_path, capsys):
    images, labels = fake_fashion(tmp_path)
    out = tmp_path / "fm.lmdb"
    code, _, _ = run_cli(capsys, "data", "pack", tmp_path, out, "--source", "fashion_mnist", "--split",
                         "test", "--limit", 20, "--workers", 2)
    assert code == 0
    dataset = LmdbImages(out, split="test")
    assert len(dataset) == 20 and dataset.image_size == 28 and dataset.channels == 1
    assert dataset.manifest["image_format"] == "png" and dataset.manifest["listed"] == 30
    for index in range(20):
        image, label = dataset[index]
        assert label == labels[index] and torch.equal(as_uint8(image)[0], images[index])
    with pytest.raises(DataError, match="split 'test'"):
        LmdbImages(out, split="train")


def test_interrupted_pack_resumes_to_the_clean_pack(tmp_path, monkeypatch):
    image_tree(tmp_path / "src")
    options = PackOptions(src=tmp_path / "src", out=tmp_path / "clean.lmdb", short_side=16, workers=1,
                          commit_every=4)
    clean = pack(options)

    import arvision.data.pack as pack_module

    real_work = pack_module._work

    def dies_at_nine(task, **kwargs):
        if task[0] == 9:
            raise KeyboardInterrupt
        return real_work(task, **kwargs)

    monkeypatch.setattr(pack_module, "_work", dies_at_nine)
    broken = attrs.evolve(options, out=tmp_path / "resumed.lmdb")
    with pytest.raises(KeyboardInterrupt):
        pack(broken)
    assert sorted(records(broken.out)) == [key(i) for i in range(8)]  # two batches of 4 committed
    with pytest.raises(DataError, match="incomplete pack .no manifest."):
        LmdbImages(broken.out)
    packed = []  # the indices the resumed run reads

    def counted(task, **kwargs):
        packed.append(task[0])
        return real_work(task, **kwargs)

    monkeypatch.setattr(pack_module, "_work", counted)
    resumed = pack(broken)
    assert packed == [8, 9, 10, 11]  # only what the interrupted run had not committed
    assert without_time(resumed) == without_time(clean)
    assert records(broken.out) == records(options.out)


def test_limited_pack_extends_to_the_full_pack(tmp_path, capsys, monkeypatch):
    import arvision.data.pack as pack_module

    image_tree(tmp_path / "src")
    args = ["data", "pack", tmp_path / "src", tmp_path / "p.lmdb", "--short-side", 16, "--workers", 1]
    assert run_cli(capsys, *args, "--limit", 5)[0] == 0
    assert manifest_of(tmp_path / "p.lmdb")["count"] == 5
    packed, real_work = [], pack_module._work  # the indices the extending run reads

    def counted(task, **kwargs):
        packed.append(task[0])
        return real_work(task, **kwargs)

    monkeypatch.setattr(pack_module, "_work", counted)
    assert run_cli(capsys, *args)[0] == 0
    assert packed == list(range(5, 12))  # the first 5 records are kept, not packed again
    monkeypatch.undo()
    clean = ["data", "pack", tmp_path / "src", tmp_path / "clean.lmdb", "--short-side", 16]
    assert run_cli(capsys, *clean)[0] == 0
    clean_manifest = manifest_of(tmp_path / "clean.lmdb")
    assert without_time(manifest_of(tmp_path / "p.lmdb")) == without_time(clean_manifest)
    code, _, err = run_cli(capsys, *args, "--quality", 80)
    assert code == 2 and "quality" in err and len(err.strip().splitlines()) == 1


def test_bad_files_are_skipped_counted_and_named(tmp_path, capsys):
    image_tree(tmp_path / "src", bad=True)
    out = tmp_path / "p.lmdb"
    code, out_text, err = run_cli(capsys, "data", "pack", tmp_path / "src", out, "--short-side", 16)
    assert code == 0 and "12 images, 3 skipped" in out_text
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 3
    for name in ("truncated.jpg", "empty.jpg", "notes.jpg"):
        assert sum(name in line for line in warnings) == 1
    manifest = manifest_of(out)
    assert sorted(item["name"] for item in manifest["skipped"]) == [
        "cat/truncated.jpg", "dog/empty.jpg", "fox/notes.jpg"]
    dataset = LmdbImages(out)  # records step over the gaps the bad files left
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert labels == [0] * 4 + [1] * 4 + [2] * 4
    code, _, err = run_cli(capsys, "data", "pack", tmp_path / "src", tmp_path / "q.lmdb",
                           "--on-error", "raise")
    assert code == 2 and "truncated.jpg" in err and len(err.strip().splitlines()) == 1


def test_info_prints_the_manifest(tmp_path, capsys):
    image_tree(tmp_path / "src")
    out = tmp_path / "p.lmdb"
    run_cli(capsys, "data", "pack", tmp_path / "src", out, "--short-side", 16, "--workers", 1)
    code, text, _ = run_cli(capsys, "data", "info", out, "--verify")
    assert code == 0 and "12 (0 skipped)" in text and "cat, dog, fox" in text and "verified" in text
    code, text, _ = run_cli(capsys, "data", "info", out, "--json")
    assert code == 0 and json.loads(text) == manifest_of(out)


def _edit(path: Path, change) -> None:
    env = open_env(path, write=True)
    try:
        with env.begin(write=True) as txn:
            change(env, txn)
    finally:
        env.close()


def _delete_record(env, txn):
    txn.delete(key(5), db=env.open_db(b"images", txn=txn))


def _edit_count(env, txn):
    manifest = json.loads(txn.get(b"manifest"))
    txn.put(b"manifest", json.dumps({**manifest, "count": 13}).encode())


def _swap_last(env, txn):
    images = env.open_db(b"images", txn=txn)
    txn.put(key(11), txn.get(key(10), db=images), db=images)


@pytest.mark.parametrize(("change", "message"), [
    (_delete_record, "manifest says 12 images but the pack holds 11 records"),
    (_edit_count, "manifest says 13 images but the pack holds 12"),
    (_swap_last, "record 000000011 does not match its digest"),
])
def test_pack_that_does_not_match_its_manifest(tmp_path, capsys, change, message):
    image_tree(tmp_path / "src")
    out = tmp_path / "p.lmdb"
    run_cli(capsys, "data", "pack", tmp_path / "src", out, "--short-side", 16, "--workers", 1)
    _edit(out, change)
    with pytest.raises(DataError, match=message) as error:
        LmdbImages(out)
    assert "\n" not in str(error.value)
    code, _, err = run_cli(capsys, "data", "info", out)
    assert code == 2 and message.split(" ")[0] in err and len(err.strip().splitlines()) == 1


def test_missing_and_empty_packs(tmp_path, capsys):
    with pytest.raises(DataError, match="does not exist"):
        LmdbImages(tmp_path / "missing.lmdb")
    (tmp_path / "src" / "cat").mkdir(parents=True)
    (tmp_path / "src" / "cat" / "empty.jpg").write_bytes(b"")
    code, out_text, _ = run_cli(capsys, "data", "pack", tmp_path / "src", tmp_path / "e.lmdb")
    assert code == 0 and "0 images, 1 skipped" in out_text
    with pytest.raises(DataError, match="empty pack"):
        LmdbImages(tmp_path / "e.lmdb")
