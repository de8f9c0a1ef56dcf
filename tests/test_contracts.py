"""The contracts that cross modules and processes: metric names, run-directory files, atomic writes."""
from __future__ import annotations

import math

import pytest

from ctcae_core.atomic import atomic_path
from ctcae_core.metric_names import flat_metrics, per_count_values, reported_metric_pattern
from ctcae_core.metrics import METRIC_KEYS


def test_flat_metrics_one_spelling_and_counts_evaluated_alone_win() -> None:
    result = {
        "checkpoint": "c.pt", "dataset": "d", "split": "test",
        "mse": 0.1, "ari_fg": 0.5, "n_images": 12, "count_n5": 4, "ari_fg_n5": 0.2, "inter_cluster": math.nan,
        "by_n_objects": {
            "5": {"mse": 0.3, "ari_fg": 0.25, "n_images": 9, "count_n5": 9, "ari_fg_n5": 0.25},
            "6": {"n_images": 0},
        },
    }
    flat = flat_metrics(result, "test")
    assert flat["test_mse"] == 0.1 and flat["test_n_images"] == 12 and math.isnan(flat["test_inter_cluster"])
    assert flat["test_ari_fg_n5"] == 0.25 and flat["test_mse_n5"] == 0.3  # count 5 evaluated alone replaces its share
    assert flat["test_count_n5"] == 9 and flat["test_count_n6"] == 0
    assert not [k for k in flat if k.startswith("test_n") and k != "test_n_images"]  # no test_n<k>_<metric>
    assert "test_ari_fg_n5_n5" not in flat and "test_checkpoint" not in flat


def test_per_count_values_reads_both_spellings() -> None:
    new = {"test_ari_fg_n3": 0.4, "test_ari_fg_n4": math.nan, "test_ari_full_n3": 0.9, "test_ari_fg": 0.7}
    assert per_count_values(new, "test", "ari_fg") == {3: 0.4}
    old = {"test_n3_ari_fg": 0.6, "test_ari_fg_n3": 0.0, "test_ari_fg_n2": 0.1, "test_n3_ari_fg_n3": 5.0}
    assert per_count_values(old, "test", "ari_fg") == {3: 0.6, 2: 0.1}  # k evaluated alone beats the share


def test_reported_metrics_follow_metric_keys() -> None:
    pattern = reported_metric_pattern()
    for key in METRIC_KEYS:
        assert pattern.fullmatch(f"val_{key}"), key
    for name in ("loss", "mse", "contrastive", "val_phase_spread", "val_ari_fg_n3", "val_ari_full_n12"):
        assert pattern.fullmatch(name), name
    for name in ("test_ari_fg", "val_mse_n3", "val_ari_fg_n", "ari_fg", "val_n_images"):
        assert not pattern.fullmatch(name), name


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path) -> None:
    target = tmp_path / "f.json"
    with atomic_path(target) as tmp:
        tmp.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target, fsync=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
