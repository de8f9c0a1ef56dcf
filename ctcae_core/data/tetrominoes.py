"""Tetrominoes generator: 35x35, pieces of four 5x5 bevelled blocks on black.

Matches the facts measured from DeepMind's Tetrominoes (``shared/data/real/README.md``):
19 fixed orientations, colours from {R, G, B, Y, M, C} with replacement, pieces never
overlap (may touch), fully inside the frame at any pixel offset, and each block
carries the fixed bevel ``value = (32 k - 1) * channel``.
"""

from __future__ import annotations

import numpy as np

from .base import SceneBatch

NAME = "tetrominoes"
VERSION = 1
SIZE = 35
BLOCK = 5
DEFAULT_OBJECTS = (3, 3)
MAX_OBJECTS = 8
CHUNK = 2000  # images per RNG stream / shard

# Bevel level k per block pixel (row-major, 5x5); pixel value = (32 k - 1) * channel.
BEVEL_K = np.array(
    [
        [6, 8, 8, 8, 7],
        [4, 5, 5, 5, 6],
        [4, 5, 5, 5, 6],
        [4, 5, 5, 5, 6],
        [3, 2, 2, 2, 4],
    ],
    dtype=np.int64,
)
BLOCK_LEVELS = (32 * BEVEL_K - 1).astype(np.uint8)  # (5, 5) value of a full channel

COLOR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")
COLORS = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.uint8
)  # (6, 3) channel on/off

_BASE_PIECES = {
    "I": [(0, 0), (0, 1), (0, 2), (0, 3)],
    "O": [(0, 0), (0, 1), (1, 0), (1, 1)],
    "T": [(0, 0), (0, 1), (0, 2), (1, 1)],
    "S": [(0, 1), (0, 2), (1, 0), (1, 1)],
    "Z": [(0, 0), (0, 1), (1, 1), (1, 2)],
    "L": [(0, 0), (1, 0), (2, 0), (2, 1)],
    "J": [(0, 1), (1, 1), (2, 1), (2, 0)],
}


def _orientations() -> list[tuple[str, tuple[tuple[int, int], ...]]]:
    """The 19 fixed tetromino orientations as (piece letter, sorted block cells)."""
    out: list[tuple[str, tuple[tuple[int, int], ...]]] = []
    for letter, cells in _BASE_PIECES.items():
        seen: set[tuple[tuple[int, int], ...]] = set()
        cur = list(cells)
        for _ in range(4):
            r0 = min(r for r, _ in cur)
            c0 = min(c for _, c in cur)
            norm = tuple(sorted((r - r0, c - c0) for r, c in cur))
            if norm not in seen:
                seen.add(norm)
                out.append((letter, norm))
            cur = [(c, -r) for r, c in cur]  # rotate 90 degrees
    return out


ORIENTATIONS = _orientations()
assert len(ORIENTATIONS) == 19
PIECE_LETTERS = tuple(letter for letter, _ in ORIENTATIONS)


def _templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel offsets (19, 100, 2), bevel value per pixel (19, 100), heights, widths (19,)."""
    offs = np.zeros((19, 4 * BLOCK * BLOCK, 2), dtype=np.int64)
    vals = np.zeros((19, 4 * BLOCK * BLOCK), dtype=np.uint8)
    hs = np.zeros(19, dtype=np.int64)
    ws = np.zeros(19, dtype=np.int64)
    br, bc = np.mgrid[0:BLOCK, 0:BLOCK]
    for o, (_, cells) in enumerate(ORIENTATIONS):
        for b, (r, c) in enumerate(cells):
            sl = slice(b * 25, (b + 1) * 25)
            offs[o, sl, 0] = (r * BLOCK + br).ravel()
            offs[o, sl, 1] = (c * BLOCK + bc).ravel()
            vals[o, sl] = BLOCK_LEVELS.ravel()
        hs[o] = (max(r for r, _ in cells) + 1) * BLOCK
        ws[o] = (max(c for _, c in cells) + 1) * BLOCK
    return offs, vals, hs, ws


_OFFS, _VALS, _HS, _WS = _templates()


def piece_mask(orientation: int) -> np.ndarray:
    """Binary (h, w) mask of one orientation, for tests and inspection."""
    m = np.zeros((_HS[orientation], _WS[orientation]), dtype=bool)
    m[_OFFS[orientation, :, 0], _OFFS[orientation, :, 1]] = True
    return m


MAX_TRIES = 10000  # draws of one slot before a scene that cannot take its next piece is redrawn whole
MAX_RESTARTS = 1000


def _place(counts: np.ndarray, colors: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Place ``counts[i]`` pieces in scene i, one slot at a time for all scenes at once; a
    placement that overlaps an earlier piece is redrawn (orientation, position) until it fits.
    A scene whose next piece still does not fit after MAX_TRIES draws (earlier pieces leave no
    room: likely from 6 pieces on) is given up and flagged in ``stuck`` for the caller to redraw.
    """
    n, hi = colors.shape
    orient = np.full((n, hi), -1, dtype=np.int64)
    rows = np.full((n, hi), -1, dtype=np.int64)
    cols = np.full((n, hi), -1, dtype=np.int64)
    occ = np.zeros((n, SIZE, SIZE), dtype=bool)
    images = np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.zeros((n, SIZE, SIZE), dtype=np.int8)
    stuck = np.zeros(n, dtype=bool)
    for k in range(hi):
        pending = np.nonzero((counts > k) & ~stuck)[0]
        tries = 0
        while pending.size:
            tries += 1
            if tries > MAX_TRIES:
                stuck[pending] = True
                break
            o = rng.integers(0, 19, size=pending.size)
            r = rng.integers(0, SIZE - _HS[o] + 1)
            c = rng.integers(0, SIZE - _WS[o] + 1)
            pr = _OFFS[o, :, 0] + r[:, None]  # (m, 100)
            pc = _OFFS[o, :, 1] + c[:, None]
            clash = occ[pending[:, None], pr, pc].any(axis=1)
            ok = ~clash
            img_idx = pending[ok]
            if img_idx.size:
                pr_ok, pc_ok, o_ok = pr[ok], pc[ok], o[ok]
                ii = img_idx[:, None]
                occ[ii, pr_ok, pc_ok] = True
                labels[ii, pr_ok, pc_ok] = k + 1
                rgb = COLORS[colors[img_idx, k]]  # (m, 3)
                images[ii, pr_ok, pc_ok] = _VALS[o_ok][:, :, None] * rgb[:, None, :]
                orient[img_idx, k] = o_ok
                rows[img_idx, k] = r[ok]
                cols[img_idx, k] = c[ok]
            pending = pending[clash]
    return orient, rows, cols, images, labels, stuck


def generate(n: int, rng: np.random.Generator, n_objects: tuple[int, int] = DEFAULT_OBJECTS) -> SceneBatch:
    """Generate `n` scenes, vectorised over images.

    Pieces are placed one slot at a time for all images at once; a placement that overlaps an
    earlier piece is redrawn (orientation, position) until it fits, and a scene whose earlier
    pieces leave no room for the next is redrawn whole (same count and colours). Scenes that never
    get stuck come out exactly as before the redraw existed (the same draws in the same order).
    """
    lo, hi = int(n_objects[0]), int(n_objects[1])
    if not 1 <= lo <= hi <= MAX_OBJECTS:
        raise ValueError(f"tetrominoes: n_objects range must satisfy 1 <= min <= max <= {MAX_OBJECTS}, got {n_objects}")
    counts = rng.integers(lo, hi + 1, size=n)  # (n,)
    colors = rng.integers(0, 6, size=(n, hi))  # (n, k)
    orient, rows, cols, images, labels, stuck = _place(counts, colors, rng)
    for _ in range(MAX_RESTARTS):
        if not stuck.any():
            break
        idx = np.nonzero(stuck)[0]
        o2, r2, c2, im2, lb2, stuck2 = _place(counts[idx], colors[idx], rng)
        orient[idx], rows[idx], cols[idx], images[idx], labels[idx] = o2, r2, c2, im2, lb2
        stuck[idx] = stuck2
    else:
        raise RuntimeError(f"tetrominoes: {int(stuck.sum())} scene(s) of {hi} pieces could not be placed "
                           f"in {MAX_RESTARTS} redraws; lower the object count")
    valid = np.arange(hi)[None, :] < counts[:, None]
    factors = {
        "orientation": orient.astype(np.int16),
        "color": np.where(valid, colors, -1).astype(np.int16),
        "row": rows.astype(np.int16),
        "col": cols.astype(np.int16),
    }
    return SceneBatch(images, labels, counts.astype(np.int64), factors)
