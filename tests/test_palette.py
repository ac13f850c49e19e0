"""The iGPT colour palette plugin: k-means, quantization, pixel sampling and palette files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arvision.data import SyntheticImages
from arvision.errors import CheckpointError
from arvision_plugins import colour_palette as palette


def clustered(
    centres: torch.Tensor, per_cluster: int, spread: float, seed: int = 0
) -> torch.Tensor:
    """Pixels ``(K * per_cluster, C)`` scattered around ``centres`` ``(K, C)``, shuffled."""
    gen = torch.Generator().manual_seed(seed)
    points = centres.repeat_interleave(per_cluster, 0)  # (K * P, C)
    points = points + spread * torch.randn(points.shape, generator=gen)
    return points[torch.randperm(points.shape[0], generator=gen)]


TRUE_CENTRES = torch.tensor(
    [[-0.8, -0.8, 0.5], [-0.2, 0.7, -0.6], [0.4, -0.5, -0.3], [0.7, 0.6, 0.8], [0.0, 0.0, 0.0]]
)


def test_fit_recovers_separated_centres_sorted() -> None:
    pixels = clustered(TRUE_CENTRES, per_cluster=400, spread=0.03)
    centres = palette.fit_palette(pixels, num_colors=5, seed=0)
    expected = TRUE_CENTRES[torch.argsort(TRUE_CENTRES[:, 0])]
    assert centres.shape == (5, 3)
    assert torch.allclose(centres, expected, atol=0.01)


def test_fit_sorts_by_first_channel_then_the_rest() -> None:
    truth = torch.tensor([[0.5, 0.5], [0.5, -0.5], [-0.5, 0.75], [-0.5, -0.75]])
    pixels = clustered(truth, 8, spread=0.0)  # exact repeats: ties in the first channel
    centres = palette.fit_palette(pixels, num_colors=4, seed=2)
    expected = torch.tensor([[-0.5, -0.75], [-0.5, 0.75], [0.5, -0.5], [0.5, 0.5]])
    assert torch.equal(centres, expected)


def test_fit_is_deterministic_for_a_seed() -> None:
    pixels = torch.rand(3000, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1
    a = palette.fit_palette(pixels, 16, iterations=5, seed=7)
    b = palette.fit_palette(pixels, 16, iterations=5, seed=7)
    c = palette.fit_palette(pixels, 16, iterations=5, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_fit_survives_fewer_distinct_colours_than_centres() -> None:
    pixels = torch.tensor([[-0.5, 0.1], [0.6, 0.2]]).repeat(10, 1)  # (20, 2), two colours
    centres = palette.fit_palette(pixels, 4, seed=0)
    assert centres.shape == (4, 2) and torch.isfinite(centres).all()
    nearest = torch.cdist(centres, pixels[:2]).min(1).values  # (4,) distance to a real colour
    assert nearest.max() < 1e-5
    assert torch.cdist(pixels[:2], centres).min(1).values.max() < 1e-5  # both colours kept


def test_fit_needs_at_least_k_pixels() -> None:
    with pytest.raises(ValueError, match="num_colors=8"):
        palette.fit_palette(torch.zeros(5, 3), 8)


def test_quantize_picks_the_nearest_centre_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(1)
    centres = torch.rand(9, 3, generator=gen) * 2 - 1  # (K, C)
    pixels = torch.rand(4, 5, 7, 3, generator=gen) * 2 - 1  # (..., C)
    monkeypatch.setattr(palette, "_CHUNK_ELEMENTS", 20)  # forces many chunks
    ids = palette.quantize(pixels, centres)
    brute = ((pixels.unsqueeze(-2) - centres).square().sum(-1)).argmin(-1)  # (4, 5, 7)
    assert ids.shape == (4, 5, 7) and ids.dtype == torch.int64
    assert torch.equal(ids, brute)
    assert torch.equal(palette.quantize(centres, centres), torch.arange(9))


def test_quantize_rejects_channel_mismatch() -> None:
    with pytest.raises(ValueError, match="disagree"):
        palette.quantize(torch.zeros(4, 2), torch.zeros(3, 3))


class CountingDataset(torch.utils.data.Dataset):
    """Wraps a dataset and records which items were read."""

    def __init__(self, inner: torch.utils.data.Dataset) -> None:
        self.inner, self.read = inner, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        self.read.append(index)
        return self.inner[index]


def test_sample_pixels_shape_range_and_reads_only_some_images() -> None:
    data = CountingDataset(SyntheticImages(num_images=100, image_size=8, channels=3))
    pixels = palette.sample_pixels(data, 640, seed=0)
    assert pixels.shape == (640, 3) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0 and pixels.min() < 0 < pixels.max()
    assert len(data.read) == 640 // 64 and len(set(data.read)) == len(data.read)
    assert torch.equal(pixels, palette.sample_pixels(data, 640, seed=0))
    assert not torch.equal(pixels, palette.sample_pixels(data, 640, seed=1))
    assert palette.sample_pixels(data, 3).shape == (3, 3)  # fewer than 64: one image


def test_save_load_round_trip(tmp_path: Path) -> None:
    centres = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = tmp_path / "palette.json"
    palette.save_palette(path, centres, {"dataset": "synthetic", "pixels": 1000})
    loaded, meta = palette.load_palette(path)
    assert torch.equal(loaded, centres)
    assert meta == {"dataset": "synthetic", "pixels": 1000}
    document = json.loads(path.read_text())
    assert (document["format"], document["version"]) == ("arvision-palette", 1)
    assert (document["num_colors"], document["channels"]) == (6, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["palette.json"]  # no temp file left


GOOD = {
    "format": "arvision-palette",
    "version": 1,
    "num_colors": 2,
    "channels": 3,
    "colors": [[-1.0, 0.0, 0.5], [0.25, 1.0, -0.5]],
    "meta": {},
}


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "missing"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (dict(GOOD, format="something-else"), "format"),
        (dict(GOOD, version=2), "version"),
        (dict(GOOD, colors=[[0.0, 0.0, 0.0], [0.0, 0.0]]), "colors"),
        (dict(GOOD, colors=[[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), r"\[-1, 1\]"),
        (dict(GOOD, colors=[[0.0, 0.0, 0.0], [0.0, "x", 0.0]]), "colors"),
        (dict(GOOD, colors="red"), "colors"),
        (dict(GOOD, num_colors=3), "num_colors=3"),
        (dict(GOOD, channels=4), "channels=4"),
        (dict(GOOD, meta=[1]), "meta"),
    ],
)
def test_bad_palette_files_raise_one_line_naming_the_file(
    tmp_path: Path, content: object, problem: str
) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CheckpointError, match=problem) as info:
        palette.load_palette(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_good_fixture_loads(tmp_path: Path) -> None:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(GOOD))
    colors, meta = palette.load_palette(path)
    assert torch.equal(colors, torch.tensor(GOOD["colors"])) and meta == {}
