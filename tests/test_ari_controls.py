"""scripts/ari_controls.py: the controls tell colour from phase on hand-made outputs with a known answer."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from ari_controls import control_features  # noqa: E402

from ctcae_core.metrics import ari_scores, count_label_clusters, kmeans_batched  # noqa: E402


def _scene() -> torch.Tensor:
    """(1, 8, 8) labels: background 0, object 1 on the left half, object 2 on the right half (rows 2-5)."""
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:6, :4], labels[0, 2:6, 4:] = 1, 2
    return labels


def _ari(name: str, magnitude: torch.Tensor, phase: torch.Tensor, labels: torch.Tensor) -> float:
    feats = control_features(magnitude, phase)[name]
    pred, _ = kmeans_batched(feats, count_label_clusters(labels), n_init=10, generator=torch.Generator().manual_seed(0))
    return ari_scores(labels, pred.view_as(labels))["ari_fg"].item()


def test_colour_alone_scores_with_every_phase_equal():
    labels = _scene()
    magnitude = torch.zeros(1, 3, 8, 8)
    magnitude[0, 0][labels[0] == 1] = 1.0  # object 1 red, object 2 green
    magnitude[0, 1][labels[0] == 2] = 1.0
    phase = torch.zeros_like(magnitude)
    assert _ari("paper", magnitude, phase, labels) == 1.0  # the paper's ARI-FG, phases all 0
    assert _ari("magnitude_only", magnitude, phase, labels) == 1.0  # earned by colour alone


def test_phases_alone_score_where_colour_cannot():
    labels = _scene()
    magnitude = torch.zeros(1, 3, 8, 8)
    magnitude[:, :, labels[0] >= 1] = 1.0  # both objects white
    phase = torch.zeros_like(magnitude)
    phase[:, :, labels[0] == 2] = 2.0  # object 2 at another phase
    assert _ari("paper", magnitude, phase, labels) == 1.0
    assert _ari("pixel_phase", magnitude, phase, labels) == 1.0
    assert abs(_ari("magnitude_only", magnitude, phase, labels)) < 1e-9  # colour tells nothing here
