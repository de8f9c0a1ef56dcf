"""Pictures: shapes, dtypes, colours that mean something, PNGs that Pillow reads back."""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ctcae_core.viz import (
    PANEL_ROWS,
    OVERLAP_RGB,
    PALETTE,
    match_labels,
    phase_map_rgb,
    save_panel,
    save_phase_maps,
    save_segmentation,
    segmentation_rgb,
)


def _hue(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(rgb.astype(float) / 255.0))[0]


def test_phase_map_hue_encodes_phase_value_encodes_magnitude() -> None:
    phase = torch.tensor([[0.0, math.pi - 1e-4], [math.pi / 2, -math.pi / 2]]).expand(3, 2, 2)  # (c, h, w)
    mag = torch.tensor([[1.0, 1.0], [0.5, 0.0]]).expand(3, 2, 2)
    rgb = phase_map_rgb(mag, phase)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    h0, h_pi, h_half = _hue(rgb[0, 0]), _hue(rgb[0, 1]), _hue(rgb[1, 0])
    assert abs(h0 - 0.5) < 0.01  # phase 0 -> cyan
    assert min(h_pi, 1 - h_pi) < 0.01  # phase pi -> red
    assert abs(h_half - 0.75) < 0.01  # pi/2 -> 3/4 of the hue circle
    assert rgb[0, 0].max() == 255 and abs(int(rgb[1, 0].max()) - 128) <= 1  # brightness = magnitude
    assert rgb[1, 1].max() == 0  # zero magnitude is black
    # batched input, channel phases combined as a complex mean
    batched = phase_map_rgb(mag.unsqueeze(0).repeat(4, 1, 1, 1), phase.unsqueeze(0).repeat(4, 1, 1, 1))
    assert batched.shape == (4, 2, 2, 3)
    np.testing.assert_array_equal(batched[2], rgb)


def test_segmentation_colours() -> None:
    labels = torch.tensor([[0, -1, 1], [2, 3, 21]])
    rgb = segmentation_rgb(labels)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], OVERLAP_RGB)
    np.testing.assert_array_equal(rgb[0, 2], PALETTE[0])
    np.testing.assert_array_equal(rgb[1, 0], PALETTE[1])
    np.testing.assert_array_equal(rgb[1, 2], PALETTE[0])  # palette wraps around
    assert len({tuple(c) for c in rgb.reshape(-1, 3)[[0, 1, 2, 3, 4]]}) == 5
    pred_rgb = segmentation_rgb(np.array([[0, 1]]), background=False)
    np.testing.assert_array_equal(pred_rgb[0], PALETTE[:2])


def test_match_labels_renames_predictions_after_truth() -> None:
    true = np.array([[0, 0, 1, 1], [2, 2, -1, 3]])
    pred = np.array([[5, 5, 7, 7], [9, 9, 9, 4]])  # a permutation of the truth
    np.testing.assert_array_equal(match_labels(pred, true), np.array([[0, 0, 1, 1], [2, 2, 2, 3]]))
    # more predicted segments than true ones: the extra one gets a fresh id
    out = match_labels(np.array([0, 0, 1, 2]), np.array([0, 0, 1, 1]))
    assert out[0] == 0 and out[2] == 1 and out[3] == 2


def _inputs(b: int = 3, c: int = 3, size: int = 8):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, c, size, size, generator=g)
    recon = torch.rand(b, c, size, size, generator=g)
    mag = torch.rand(b, c, size, size, generator=g)
    phase = (torch.rand(b, c, size, size, generator=g) * 2 - 1) * math.pi
    labels = torch.randint(-1, 4, (b, size, size), generator=g)
    pred = torch.randint(0, 4, (b, size, size), generator=g)
    return images, recon, mag, phase, labels, pred


def test_save_panel_png(tmp_path: Path) -> None:
    images, recon, mag, phase, labels, pred = _inputs()
    path = save_panel(tmp_path / "sub" / "panel.png", images, recon, mag, phase, labels, pred, max_images=2, scale=3)
    assert path == tmp_path / "sub" / "panel.png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        arr = np.asarray(im)
    pad, tile = 2, 8 * 3
    left = arr.shape[1] - (2 * (tile + pad) + pad)  # the legend column
    assert arr.shape[0] == 5 * (tile + pad) + pad and left > 20
    # the legend: dark text in every row's band of the left column, nothing else there
    for r in range(5):
        band = arr[pad + r * (tile + pad) : (r + 1) * (tile + pad), :left]
        assert (band.min(axis=2) < 100).sum() > 5, f"row {r} ({PANEL_ROWS[r]}) has no label"
    # first tile of the first row is the first input image, upscaled
    x0 = left + pad
    first = arr[pad : pad + tile, x0 : x0 + tile]
    expected = np.round(images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8).repeat(3, 0).repeat(3, 1)
    np.testing.assert_array_equal(first, expected)
    # 4th row is the true segmentation
    y0 = pad + 3 * (tile + pad)
    np.testing.assert_array_equal(arr[y0 : y0 + tile : 3, x0 : x0 + tile : 3], segmentation_rgb(labels[0]))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["panel.png"]  # no temp file left


def test_save_phase_maps_and_segmentation(tmp_path: Path) -> None:
    images, recon, mag, phase, labels, pred = _inputs(b=10, c=1)
    p1 = save_phase_maps(tmp_path / "phase.png", mag, phase, scale=1)
    p2 = save_segmentation(tmp_path / "seg.png", labels, pred, scale=1)
    p3 = save_segmentation(tmp_path / "seg_true.png", labels, scale=1)
    tiles = 8 * (8 + 2) + 2  # max_images = 8 columns
    with Image.open(p1) as a, Image.open(p2) as b, Image.open(p3) as c:
        left = a.size[0] - tiles  # the legend column ("phase")
        assert left > 10 and a.size[1] == 8 + 4  # one row
        assert b.size[1] == 2 * (8 + 2) + 2 and b.size[0] > tiles
        assert c.size[1] == 8 + 4 and c.size[0] > tiles
        np.testing.assert_array_equal(np.asarray(a)[2:10, left + 2 : left + 10], phase_map_rgb(mag[0], phase[0]))
    # overwriting an existing file works and stays readable
    save_phase_maps(p1, mag, phase, max_images=2, scale=1)
    with Image.open(p1) as a:
        assert a.size == (left + 2 * (8 + 2) + 2, 8 + 4)
    # grayscale images in a panel
    save_panel(tmp_path / "gray.png", images, recon, mag, phase, labels, pred)
    with Image.open(tmp_path / "gray.png") as im:
        assert im.mode == "RGB"
