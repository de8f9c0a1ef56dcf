"""Shared types for dataset generators and storage."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SceneBatch:
    """A batch of generated or imported scenes.

    images: (n, h, w, 3) uint8; labels: (n, h, w) int8 with 0 = background,
    -1 = overlap, 1..K = objects; n_objects: (n,) int64.
    factors: per-image generating factors. Arrays of shape (n,) are per scene,
    arrays of shape (n, k_max, ...) are per object (only the first n_objects rows
    of an image are meaningful).
    """

    images: np.ndarray  # (n, h, w, 3) uint8
    labels: np.ndarray  # (n, h, w) int8
    n_objects: np.ndarray  # (n,) int64
    factors: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, idx: np.ndarray | slice) -> "SceneBatch":
        """Rows `idx` of every array."""
        return SceneBatch(
            self.images[idx],
            self.labels[idx],
            self.n_objects[idx],
            {k: v[idx] for k, v in self.factors.items()},
        )


def chunk_rng(seed: int, stream: int, chunk: int) -> np.random.Generator:
    """The RNG of one generation chunk.

    Every chunk of every split has its own stream derived from (seed, stream, chunk),
    so any worker can regenerate any chunk alone and get identical bytes.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream), int(chunk)])))
