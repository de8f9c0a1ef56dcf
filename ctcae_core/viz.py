"""Pictures for logging: phase maps, segmentations, reconstructions, as PNG (numpy + Pillow).

Conventions: images are (c, h, w) floats in [0, 1] (c = 1 or 3); model outputs are
(c, h, w) magnitude and phase; label maps are (h, w) ints (0 = background, -1 = overlap,
1..K objects for ground truth; 0..K-1 for predictions). Batched inputs have a leading b.
Every function returns uint8 RGB arrays (..., h, w, 3); the ``save_*`` functions write one PNG
atomically (temporary file in the same folder, then rename) and return its path.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "PALETTE",
    "PANEL_ROWS",
    "phase_map_rgb",
    "segmentation_rgb",
    "match_labels",
    "save_panel",
    "save_phase_maps",
    "save_segmentation",
]

ArrayLike = torch.Tensor | np.ndarray

#: Object colours (label 1 -> PALETTE[0], ...; wraps around). Background black, overlap gray.
PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
        [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
        [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [255, 255, 255],
    ],
    dtype=np.uint8,
)
#: The rows of :func:`save_panel`, top to bottom, as its legend writes them.
PANEL_ROWS = ("input", "reconstruction", "phase", "true seg.", "predicted seg.")
BACKGROUND_RGB = np.array([0, 0, 0], dtype=np.uint8)
OVERLAP_RGB = np.array([128, 128, 128], dtype=np.uint8)


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns (..., 3) float."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [
        np.stack(c, -1)
        for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    ]
    out = np.zeros(h.shape + (3,), dtype=np.float64)
    for j, c in enumerate(choices):
        out = np.where((i == j)[..., None], c, out)
    return out


def phase_map_rgb(magnitude: ArrayLike, phase: ArrayLike, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-code phases: hue = phase, brightness = magnitude.

    The channels are combined as the mean complex value z = mean_c |z_c| e^{i phi_c}; hue is
    (arg z + pi) / 2pi (so phase -pi/pi is red, 0 cyan), saturation 1, value = mean_c |z_c|
    divided by ``max_magnitude`` (default: the image's maximum), clipped to [0, 1].

    Args:
        magnitude: (c, h, w) or (b, c, h, w) magnitudes (>= 0); (h, w) is read as one channel.
        phase: same shape, radians.

    Returns:
        (h, w, 3) or (b, h, w, 3) uint8.
    """
    mag = _np(magnitude).astype(np.float64)
    ph = _np(phase).astype(np.float64)
    if mag.ndim == 2:
        mag, ph = mag[None], ph[None]
    batched = mag.ndim == 4
    if not batched:
        mag, ph = mag[None], ph[None]
    z = (mag * np.exp(1j * ph)).mean(1)  # (b, h, w)
    hue = (np.angle(z) + np.pi) / (2 * np.pi)
    bright = mag.mean(1)  # (b, h, w)
    scale = (
        np.full((bright.shape[0], 1, 1), float(max_magnitude))
        if max_magnitude is not None
        else bright.reshape(bright.shape[0], -1).max(1).reshape(-1, 1, 1)
    )
    value = np.clip(bright / np.maximum(scale, 1e-12), 0.0, 1.0)
    rgb = _hsv_to_rgb(np.clip(hue, 0.0, 1.0), np.ones_like(hue), value)
    out = np.round(rgb * 255.0).astype(np.uint8)
    return out if batched else out[0]


def segmentation_rgb(labels: ArrayLike, background: bool = True) -> np.ndarray:
    """Colour a label map with the fixed PALETTE.

    Args:
        labels: (h, w) or (b, h, w) ints. -1 -> gray (overlap). With ``background=True`` (ground
            truth) 0 -> black and k >= 1 -> PALETTE[(k - 1) % len]; with ``background=False``
            (predicted segment ids, where 0 is a segment like any other) k >= 0 -> PALETTE[k % len].

    Returns:
        (h, w, 3) or (b, h, w, 3) uint8.
    """
    lab = _np(labels).astype(np.int64)
    offset = 1 if background else 0
    out = PALETTE[np.mod(lab - offset, len(PALETTE))]
    if background:
        out[lab == 0] = BACKGROUND_RGB
    out[lab < 0] = OVERLAP_RGB
    return out


def match_labels(pred: ArrayLike, true: ArrayLike) -> np.ndarray:
    """Rename predicted segments after the ground-truth label they overlap most (one to one,
    greedily by overlap), so that matching segments get the same colour. Unmatched segments get
    fresh ids above the largest true label.

    pred, true: (h, w) ints. Returns (h, w) int64 in the ground truth's label space.
    """
    p = _np(pred).astype(np.int64).ravel()
    t = _np(true).astype(np.int64).ravel()
    p_ids, p_inv = np.unique(p, return_inverse=True)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    overlap = np.zeros((len(p_ids), len(t_ids)), dtype=np.int64)
    np.add.at(overlap, (p_inv, t_inv), 1)
    overlap[:, t_ids < 0] = -1  # never name a segment "overlap"
    mapping = np.full(len(p_ids), -2, dtype=np.int64)
    used_t: set[int] = set()
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(t_ids))
        if overlap[i, j] < 0 or mapping[i] != -2 or j in used_t:
            continue
        mapping[i] = t_ids[j]
        used_t.add(j)
    fresh = max(int(t_ids.max()), 0) + 1
    for i in range(len(p_ids)):
        if mapping[i] == -2:
            mapping[i] = fresh
            fresh += 1
    return mapping[p_inv].reshape(_np(pred).shape)


def _image_rgb(images: ArrayLike) -> np.ndarray:
    """(b, c, h, w) floats in [0, 1] -> (b, h, w, 3) uint8 (c = 1 is repeated)."""
    x = _np(images).astype(np.float64)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    x = x[:, :3].transpose(0, 2, 3, 1)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=height)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _grid(rows: Sequence[np.ndarray], scale: int, pad: int = 2, labels: Sequence[str] = ()) -> np.ndarray:
    """Tile rows of (b, h, w, 3) uint8 tiles into one (H, W, 3) picture, upscaled by ``scale``.

    ``labels`` (one per row) are written in black in a white column left of the tiles: the legend
    that tells the rows apart when the picture is viewed alone (an MLflow image grid, a report).
    """
    n_rows, n_cols = len(rows), rows[0].shape[0]
    h, w = rows[0].shape[1] * scale, rows[0].shape[2] * scale
    font = _font(max(10, min(16, h // 5)))
    text_w = max((int(math.ceil(font.getlength(t))) for t in labels), default=0)
    left = text_w + 3 * pad if labels else 0
    canvas = np.full((n_rows * (h + pad) + pad, left + n_cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, tiles in enumerate(rows):
        for c in range(n_cols):
            tile = tiles[c].repeat(scale, axis=0).repeat(scale, axis=1)
            y0, x0 = pad + r * (h + pad), left + pad + c * (w + pad)
            canvas[y0:y0 + h, x0:x0 + w] = tile
    if not labels:
        return canvas
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for r, text in enumerate(labels):
        draw.text((pad, pad + r * (h + pad) + h // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(picture)


def _save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write atomically: a temporary file in the target folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_panel(
    path: str | os.PathLike,
    images: ArrayLike,
    recon: ArrayLike,
    magnitude: ArrayLike,
    phase: ArrayLike,
    labels_true: ArrayLike,
    labels_pred: ArrayLike,
    max_images: int = 8,
    scale: int = 4,
) -> Path:
    """One PNG grid, a column per image, rows: input / reconstruction / phase map / true
    segmentation / predicted segmentation (predicted segments recoloured to match the truth),
    each row named in a legend column on the left (:data:`PANEL_ROWS`).

    Args:
        images, recon: (b, c, h, w) in [0, 1]; magnitude, phase: (b, c', h, w);
        labels_true, labels_pred: (b, h, w) ints. At most ``max_images`` columns; tiles upscaled
        by ``scale`` (nearest).

    Returns:
        the written path.
    """
    m = min(int(_np(labels_true).shape[0]), max_images)
    true = _np(labels_true)[:m]
    pred = _np(labels_pred)[:m]
    pred_matched = np.stack([match_labels(pred[i], true[i]) for i in range(m)])
    rows = [
        _image_rgb(_np(images)[:m]),
        _image_rgb(_np(recon)[:m]),
        phase_map_rgb(_np(magnitude)[:m], _np(phase)[:m]),
        segmentation_rgb(true),
        segmentation_rgb(pred_matched),
    ]
    return _save_png(path, _grid(rows, scale, labels=PANEL_ROWS))


def save_phase_maps(
    path: str | os.PathLike, magnitude: ArrayLike, phase: ArrayLike, max_images: int = 8, scale: int = 4
) -> Path:
    """One PNG row of phase maps (see :func:`phase_map_rgb`). magnitude, phase: (b, c, h, w)."""
    m = min(int(_np(phase).shape[0]), max_images)
    return _save_png(path, _grid([phase_map_rgb(_np(magnitude)[:m], _np(phase)[:m])], scale, labels=PANEL_ROWS[2:3]))


def save_segmentation(
    path: str | os.PathLike,
    labels_true: ArrayLike,
    labels_pred: ArrayLike | None = None,
    max_images: int = 8,
    scale: int = 4,
) -> Path:
    """One PNG: the true segmentations, and below them the predicted ones (recoloured to match the
    truth) when given. labels_true, labels_pred: (b, h, w) ints."""
    m = min(int(_np(labels_true).shape[0]), max_images)
    true = _np(labels_true)[:m]
    rows = [segmentation_rgb(true)]
    if labels_pred is not None:
        pred = _np(labels_pred)[:m]
        rows.append(segmentation_rgb(np.stack([match_labels(pred[i], true[i]) for i in range(m)])))
    return _save_png(path, _grid(rows, scale, labels=PANEL_ROWS[3 : 3 + len(rows)]))
