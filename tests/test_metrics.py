"""Metrics against independent oracles: scikit-learn's ARI and KMeans, hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from ctcae_core.metrics import (
    METRIC_KEYS,
    phase_spread,
    MetricAccumulator,
    adjusted_rand_index,
    ari_scores,
    cluster_distances,
    cluster_phases,
    cluster_phases_sklearn,
    colour_features,
    count_label_clusters,
    evaluate_batch,
    kmeans_batched,
    kmeans_sklearn_labels,
    phase_features,
)


def _sk_ari(true: torch.Tensor, pred: torch.Tensor, valid: torch.Tensor) -> list[float]:
    return [
        adjusted_rand_score(true[i][valid[i]].numpy(), pred[i][valid[i]].numpy()) for i in range(true.shape[0])
    ]


def synthetic_scenes(b: int, size: int, channels: int, noise: float, seed: int):
    """Label maps of random rectangles (overlaps -> -1) with a phase per object and channel plus
    gaussian noise; background magnitudes low, object magnitudes around the threshold.

    Returns labels (b, h, w) int64, n_objects (b,), magnitude and phase (b, c, h, w).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, size, size, dtype=torch.long)
    n_objects = torch.randint(1, 5, (b,), generator=g)
    for i in range(b):
        for o in range(1, int(n_objects[i]) + 1):
            y0, x0 = torch.randint(0, size - 8, (2,), generator=g).tolist()
            sh, sw = torch.randint(7, 14, (2,), generator=g).tolist()
            region = labels[i, y0 : y0 + sh, x0 : x0 + sw]
            region[region > 0] = -1
            region[region == 0] = o
    obj_phase = (torch.rand(b, channels, 8, generator=g) * 2 - 1) * math.pi  # (b, c, objects)
    idx = labels.clamp_min(0).view(b, 1, -1).expand(-1, channels, -1)
    phase = torch.gather(obj_phase, 2, idx).view(b, channels, size, size)
    phase = phase + noise * torch.randn(b, channels, size, size, generator=g)
    phase = torch.atan2(torch.sin(phase), torch.cos(phase))
    is_obj = labels.unsqueeze(1) > 0
    mag = torch.where(
        is_obj,
        0.05 + 0.1 * torch.rand(b, channels, size, size, generator=g),
        0.03 * torch.rand(b, channels, size, size, generator=g),
    )
    return labels, n_objects, mag, phase


# ----------------------------------------------------------------------------------------- ARI
def test_ari_matches_sklearn_random() -> None:
    g = torch.Generator().manual_seed(0)
    true = torch.randint(-1, 5, (40, 300), generator=g)
    pred = torch.randint(0, 6, (40, 300), generator=g) * 1000 - 7  # arbitrary, non-dense ids
    # make some images well correlated so values spread over [0, 1]
    pred[:20] = torch.where(torch.rand(20, 300, generator=g) < 0.8, true[:20] * 3 + 11, pred[:20])
    valid = torch.rand(40, 300, generator=g) < 0.7
    ours = adjusted_rand_index(true, pred, valid)
    ref = _sk_ari(true, pred, valid)
    assert ours.dtype == torch.float64 and ours.shape == (40,)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)
    assert ours[:20].mean() > 0.4  # the test really covers non-trivial values


def test_ari_no_mask_and_2d_maps() -> None:
    g = torch.Generator().manual_seed(1)
    true = torch.randint(0, 3, (5, 8, 8), generator=g)
    pred = torch.randint(0, 4, (5, 8, 8), generator=g)
    ours = adjusted_rand_index(true, pred)
    ref = [adjusted_rand_score(true[i].flatten().numpy(), pred[i].flatten().numpy()) for i in range(5)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


def test_ari_edge_cases() -> None:
    n = 50
    g = torch.Generator().manual_seed(2)
    rand_true = torch.randint(0, 4, (n,), generator=g)
    perm = torch.tensor([3, 0, 2, 1])
    cases = {
        "single_cluster_both": (torch.zeros(n, dtype=torch.long), torch.full((n,), 7)),
        "perfect": (rand_true, rand_true.clone()),
        "permuted": (rand_true, perm[rand_true] + 100),
        "one_true_many_pred": (torch.zeros(n, dtype=torch.long), torch.arange(n) % 5),
        "many_true_one_pred": (rand_true, torch.zeros(n, dtype=torch.long)),
        "all_singletons_pred": (rand_true, torch.arange(n)),
    }
    true = torch.stack([c[0] for c in cases.values()])
    pred = torch.stack([c[1] for c in cases.values()])
    ours = adjusted_rand_index(true, pred, torch.ones_like(true, dtype=torch.bool))
    ref = [adjusted_rand_score(t.numpy(), p.numpy()) for t, p in cases.values()]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)
    expected = dict(zip(cases, ours.tolist()))
    assert expected["single_cluster_both"] == 1.0
    assert expected["perfect"] == 1.0
    assert expected["permuted"] == pytest.approx(1.0)
    assert expected["one_true_many_pred"] == 0.0
    assert expected["many_true_one_pred"] == 0.0


def test_ari_too_few_pixels_is_nan() -> None:
    true = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 1, 2, 2]])
    pred = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 1, 1]])
    valid = torch.tensor([[False] * 4, [True, False, False, False], [True] * 4])
    ours = adjusted_rand_index(true, pred, valid)
    assert math.isnan(ours[0]) and math.isnan(ours[1])  # no pixel / one pixel
    assert ours[2].item() == 1.0
    # a batch where nothing at all is valid
    assert torch.isnan(adjusted_rand_index(true, pred, torch.zeros_like(valid))).all()


def test_ari_scores_fg_full_and_background_only() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(-1, 4, (6, 16, 16), generator=g)
    labels[0] = 0  # background-only image
    labels[1, :8] = 0
    labels[1, 8:] = -1  # background plus overlap only
    noise = torch.randint(0, 4, (6, 16, 16), generator=g)
    pred = torch.where(torch.rand(6, 16, 16, generator=g) < 0.7, labels.clamp_min(0), noise)
    scores = ari_scores(labels, pred)
    np.testing.assert_allclose(scores["ari_full"].numpy(), _sk_ari(labels, pred, labels != -1), atol=1e-6)
    fg = scores["ari_fg"]
    assert math.isnan(fg[0]) and math.isnan(fg[1])
    np.testing.assert_allclose(fg[2:].numpy(), _sk_ari(labels[2:], pred[2:], labels[2:] >= 1), atol=1e-6)
    # background-only image, one predicted segment: ARI-FULL is sklearn's 1.0
    assert scores["ari_full"][0].item() == adjusted_rand_score(labels[0].flatten(), pred[0].flatten())


# -------------------------------------------------------------------------------- features, K
def test_phase_features_values() -> None:
    mag = torch.tensor([0.05, 0.3, 0.0]).view(1, 3, 1, 1)
    phase = torch.tensor([0.0, math.pi / 2, 1.0]).view(1, 3, 1, 1)
    f = phase_features(mag, phase, threshold=0.1)
    assert f.shape == (1, 1, 6)
    np.testing.assert_allclose(f[0, 0].numpy(), [0.5, 0.0, 0.0, 1.0, 0.0, 0.0], atol=1e-6)
    f_raw = phase_features(mag, phase, threshold=None)
    np.testing.assert_allclose(f_raw[0, 0].numpy(), [1.0, 0.0, 0.0, 1.0, math.cos(1.0), math.sin(1.0)], atol=1e-6)
    # pixel order: (h, w) row-major
    ph = torch.arange(6, dtype=torch.float32).view(1, 1, 2, 3)
    f2 = phase_features(torch.ones(1, 1, 2, 3), ph)
    np.testing.assert_allclose(f2[0, :, 0].numpy(), np.cos(np.arange(6)), atol=1e-6)


def test_count_label_clusters() -> None:
    labels = torch.tensor(
        [
            [[0, 0], [1, 1]],
            [[0, -1], [2, 5]],
            [[-1, -1], [-1, -1]],
            [[3, 3], [3, 3]],
        ]
    )
    assert count_label_clusters(labels).tolist() == [2, 3, 1, 1]


# ------------------------------------------------------------------------------------ k-means
def test_kmeans_separated_blobs_exact() -> None:
    g = torch.Generator().manual_seed(4)
    b, n = 6, 300
    k = torch.tensor([1, 2, 3, 4, 5, 3])
    truth = torch.stack([torch.randint(0, int(k[i]), (n,), generator=g) for i in range(b)])
    centers = torch.randn(b, 5, 4, generator=g) * 10
    x = torch.gather(centers, 1, truth.unsqueeze(-1).expand(-1, -1, 4)) + 0.1 * torch.randn(b, n, 4, generator=g)
    labels, inertia = kmeans_batched(x, k, generator=torch.Generator().manual_seed(0))
    assert labels.shape == (b, n) and labels.dtype == torch.int64
    np.testing.assert_allclose(adjusted_rand_index(truth, labels).numpy(), 1.0)
    expected = ((x - torch.gather(centers, 1, truth.unsqueeze(-1).expand(-1, -1, 4))) ** 2).sum((1, 2))
    assert (inertia <= expected * 1.001).all()  # at least as good as the generating centers


def test_kmeans_matches_sklearn_on_phase_features() -> None:
    # 96 scenes: single images can flip between two near-equal optima (for sklearn too, between
    # its own seeds), so the agreement is a property of the average, as the issue states it.
    b, size = 96, 32
    labels, _, mag, phase = synthetic_scenes(b, size, 3, noise=0.5, seed=5)
    feats = phase_features(mag, phase)  # (b, 1024, 6)
    k = count_label_clusters(labels)
    ours, inertia = kmeans_batched(feats, k, n_init=10, generator=torch.Generator().manual_seed(0))
    ref_labels, ref_inertia = [], []
    with threadpool_limits(1):  # 2 shared cores: no OpenMP oversubscription
        for i in range(b):
            km = KMeans(n_clusters=int(k[i]), n_init=10, random_state=0).fit(feats[i].double().numpy())
            ref_labels.append(km.labels_)
            ref_inertia.append(km.inertia_)
    ref = torch.from_numpy(np.stack(ref_labels)).long().view(b, size, size)
    a_ours = ari_scores(labels, ours.view(b, size, size))
    a_ref = ari_scores(labels, ref)
    for key in ("ari_fg", "ari_full"):
        assert abs(a_ours[key].nanmean().item() - a_ref[key].nanmean().item()) < 0.01, key
    assert 0.5 < a_ref["ari_fg"].nanmean().item() < 0.95  # a non-trivial clustering problem
    # same optimum quality: inertia as low as sklearn's on average, never far above
    ratio = inertia.double() / torch.tensor(ref_inertia)
    assert ratio.mean() < 1.002 and ratio.max() < 1.05, (ratio.mean(), ratio.max())
    # the reference helpers give sklearn's labels
    with threadpool_limits(1):
        np.testing.assert_array_equal(kmeans_sklearn_labels(feats[:2], k[:2], seed=0), np.stack(ref_labels[:2]))
        sk_seg = cluster_phases_sklearn(mag[:2], phase[:2], k[:2], seed=0)
    np.testing.assert_array_equal(sk_seg.numpy(), ref[:2].numpy())


def test_kmeans_respects_per_image_k_and_is_deterministic() -> None:
    labels, _, mag, phase = synthetic_scenes(12, 24, 3, noise=0.3, seed=6)
    k = torch.tensor([1, 2, 3, 4, 5, 6, 2, 3, 7, 1, 4, 2])
    seg_a = cluster_phases(mag, phase, k, generator=torch.Generator().manual_seed(3))
    seg_b = cluster_phases(mag, phase, k, generator=torch.Generator().manual_seed(3))
    assert seg_a.shape == (12, 24, 24) and seg_a.dtype == torch.int64
    assert torch.equal(seg_a, seg_b)
    per_image_max = seg_a.flatten(1).max(1).values
    assert (per_image_max < k).all()
    assert (seg_a >= 0).all()
    # every requested cluster is used (the features have many distinct points)
    n_used = torch.tensor([len(torch.unique(s)) for s in seg_a])
    assert torch.equal(n_used, k)
    # a different seed may change ids but keeps the constraint
    seg_c = cluster_phases(mag, phase, k, generator=torch.Generator().manual_seed(4))
    assert (seg_c.flatten(1).max(1).values < k).all()


def test_kmeans_degenerate_inputs() -> None:
    x = torch.zeros(3, 50, 2)
    x[1, :25] = 1.0  # two distinct points only, K = 4
    k = torch.tensor([3, 4, 1])
    labels, inertia = kmeans_batched(x, k, n_init=3, max_iter=20, generator=torch.Generator().manual_seed(0))
    assert (labels.max(1).values < k).all() and (labels >= 0).all()
    np.testing.assert_allclose(inertia.numpy(), 0.0, atol=1e-6)
    assert adjusted_rand_index((x[1, :, 0] > 0).long().unsqueeze(0), labels[1:2]).item() == 1.0


# --------------------------------------------------------------------------- cluster distances
def _paper_distances(x: np.ndarray, lab: np.ndarray) -> tuple[float, float]:
    ids = np.unique(lab)
    cents = np.stack([x[lab == i].mean(0) for i in ids])
    diff = ((cents[None] - cents[:, None]) ** 2).mean(-1)
    mask = ~np.eye(len(ids), dtype=bool)
    inter = diff[mask].mean() if len(ids) > 1 else float("nan")
    intra = np.mean([((x[lab == i] - cents[j]) ** 2).mean() for j, i in enumerate(ids)])
    return float(inter), float(intra)


def test_cluster_distances_hand_computed() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 40, 6, generator=g)
    pred = torch.randint(0, 4, (4, 40), generator=g)
    pred[1] = torch.where(pred[1] == 2, 0, pred[1])  # a missing cluster id
    pred[2] = 0  # a single cluster
    inter, intra = cluster_distances(x, pred)
    for i in range(4):
        ref_inter, ref_intra = _paper_distances(x[i].numpy(), pred[i].numpy())
        assert intra[i].item() == pytest.approx(ref_intra, rel=1e-5)
        if math.isnan(ref_inter):
            assert math.isnan(inter[i])
        else:
            assert inter[i].item() == pytest.approx(ref_inter, rel=1e-5)


# ------------------------------------------------------------------------- batch + accumulator
def test_evaluate_batch_values() -> None:
    b, size = 8, 16
    labels, n_objects, mag, phase = synthetic_scenes(b, size, 3, noise=0.2, seed=8)
    g = torch.Generator().manual_seed(9)
    images = torch.rand(b, 3, size, size, generator=g)
    recon = images + 0.1 * torch.randn(b, 3, size, size, generator=g)
    out = evaluate_batch(images, recon, mag, phase, labels, n_objects, generator=torch.Generator().manual_seed(0))
    for key in METRIC_KEYS:
        assert out[key].shape == (b,), key
    np.testing.assert_allclose(out["mse"].numpy(), ((recon - images) ** 2).mean((1, 2, 3)).numpy(), rtol=1e-5)
    k = count_label_clusters(labels)
    assert (out["labels_pred"].flatten(1).max(1).values < k).all()
    ref = ari_scores(labels, out["labels_pred"])
    assert torch.equal(out["ari_fg"].nan_to_num(-5), ref["ari_fg"].nan_to_num(-5))
    assert out["ari_fg"].nanmean() > 0.8  # low noise: objects recovered
    assert torch.equal(out["n_objects"], n_objects)
    inter, intra = cluster_distances(phase_features(mag, phase), out["labels_pred"])
    assert torch.allclose(out["inter_cluster"], inter, equal_nan=True)
    assert (out["inter_cluster"] > out["intra_cluster"]).all()  # separable phases


def _two_objects() -> torch.Tensor:
    """(2, 8, 8) labels: background 0, object 1 on the left half and object 2 on the right (rows 2-5)."""
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:6, :4], labels[:, 2:6, 4:] = 1, 2
    return labels


def test_ari_fg_colour_tells_colour_from_phase() -> None:
    labels = _two_objects()
    images = torch.zeros(2, 3, 8, 8)
    n_objects = torch.tensor([2, 2])
    # image 0: object 1 red, object 2 green, every phase 0 -> colour alone separates them;
    # image 1: both objects white, object 2 at phase 2 rad -> only the phases separate them.
    mag = torch.zeros(2, 3, 8, 8)
    mag[0, 0][labels[0] == 1], mag[0, 1][labels[0] == 2] = 1.0, 1.0
    mag[1][:, labels[1] >= 1] = 1.0
    phase = torch.zeros_like(mag)
    phase[1][:, labels[1] == 2] = 2.0
    out = evaluate_batch(images, images, mag, phase, labels, n_objects, generator=torch.Generator().manual_seed(0))
    assert out["ari_fg"].tolist() == [1.0, 1.0]
    assert out["ari_fg_colour"][0].item() == 1.0  # earned by colour
    assert abs(out["ari_fg_colour"][1].item()) < 1e-9  # colour tells the white objects nothing
    full = phase_features(mag, torch.zeros_like(phase))  # every phase 0
    assert torch.equal(full[..., 1::2], torch.zeros_like(full[..., 1::2]))  # sin 0: nothing of the phase left
    assert torch.equal(colour_features(mag), full[..., 0::2])  # the cos weights, the zeros dropped


def test_ari_fg_colour_leaves_the_phase_clustering_and_its_generator_alone() -> None:
    b, size = 6, 16
    labels, n_objects, mag, phase = synthetic_scenes(b, size, 3, noise=0.6, seed=4)
    images = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1))
    g, ref_g = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = evaluate_batch(images, images, mag, phase, labels, n_objects, generator=g)
    ref = cluster_phases(mag, phase, count_label_clusters(labels), generator=ref_g)
    assert torch.equal(out["labels_pred"], ref)  # the phase clustering draws what it drew before
    assert torch.equal(g.get_state(), ref_g.get_state())  # and leaves the generator where it left it
    colour_g = torch.Generator().manual_seed(3)
    colour, _ = kmeans_batched(colour_features(mag), count_label_clusters(labels), n_init=10, generator=colour_g)
    want = ari_scores(labels, colour.view(b, size, size))["ari_fg"]
    assert torch.equal(out["ari_fg_colour"].nan_to_num(-5), want.nan_to_num(-5))  # the same seeds as the phases'


def _metrics(values: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}


def test_metric_accumulator_means_per_object_count() -> None:
    nan = float("nan")
    batch1 = _metrics(
        {
            "mse": [0.1, 0.2, 0.3],
            "ari_fg": [0.5, nan, 0.9],
            "ari_full": [0.4, 0.6, 0.8],
            "inter_cluster": [1.0, 2.0, nan],
            "intra_cluster": [0.1, 0.1, 0.4],
            "phase_spread": [0.01, 0.02, 0.03],
            "ari_fg_colour": [0.4, nan, 0.1],
        }
    )
    batch2 = _metrics(
        {
            "mse": [0.5, 0.7],
            "ari_fg": [0.7, 0.2],
            "ari_full": [nan, 0.2],
            "inter_cluster": [3.0, 4.0],
            "intra_cluster": [0.2, 0.2],
            "phase_spread": [nan, 0.14],
            "ari_fg_colour": [0.3, 0.0],
        }
    )
    n1, n2 = torch.tensor([2, 0, 3]), torch.tensor([2, 3])
    acc = MetricAccumulator()
    acc.update(batch1, n1)
    acc.update(batch2, n2)
    res = acc.compute()
    assert res["n_images"] == 5
    assert res["mse"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.5 + 0.7) / 5)
    assert res["ari_fg"] == pytest.approx((0.5 + 0.9 + 0.7 + 0.2) / 4)
    assert res["ari_full"] == pytest.approx((0.4 + 0.6 + 0.8 + 0.2) / 4)
    assert res["inter_cluster"] == pytest.approx(10.0 / 4)
    assert res["intra_cluster"] == pytest.approx(1.0 / 5)
    assert res["phase_spread"] == pytest.approx(0.2 / 4)
    assert res["ari_fg_colour"] == pytest.approx(0.8 / 4)
    assert (res["count_n0"], res["count_n2"], res["count_n3"]) == (1, 2, 2)
    assert "count_n1" not in res and "ari_fg_n1" not in res
    assert "ari_fg_n0" not in res  # its only value is NaN
    assert res["ari_full_n0"] == pytest.approx(0.6)
    assert res["ari_fg_n2"] == pytest.approx((0.5 + 0.7) / 2)
    assert res["ari_full_n2"] == pytest.approx(0.4)
    assert res["ari_fg_n3"] == pytest.approx((0.9 + 0.2) / 2)
    assert res["ari_full_n3"] == pytest.approx((0.8 + 0.2) / 2)

    # merging workers == one accumulator; the flat tensor survives a round trip (all_reduce sum)
    a, b = MetricAccumulator(), MetricAccumulator()
    a.update(batch1, n1)
    b.update({**batch2, "n_objects": n2})
    summed = a.to_tensor() + b.to_tensor()
    assert summed.dtype == torch.float64 and summed.dim() == 1
    assert MetricAccumulator.from_tensor(summed).compute() == pytest.approx(res, nan_ok=True)
    assert a.merge(b).compute() == pytest.approx(res, nan_ok=True)
    with pytest.raises(ValueError):
        MetricAccumulator(max_objects=4).update(batch2, torch.tensor([5, 1]))


def test_metric_accumulator_empty_is_nan() -> None:
    res = MetricAccumulator().compute()
    assert res["n_images"] == 0 and math.isnan(res["ari_fg"])


# ------------------------------------------------------------------------- phase spread
def test_phase_spread_against_scipy_circstd() -> None:
    from scipy.stats import circstd

    g = torch.Generator().manual_seed(11)
    b, c, h, w = 4, 3, 12, 12
    mag = torch.rand(b, c, h, w, generator=g) * 0.3  # about a third under the 0.1 threshold
    scales = torch.tensor([1e-3, 0.05, 0.7, 3.0]).view(b, 1, 1, 1)
    # centred near +-pi, where a plain std would see the wrap
    phase = torch.remainder(math.pi + scales * torch.randn(b, c, h, w, generator=g) + math.pi, 2 * math.pi) - math.pi
    got = phase_spread(mag, phase)
    for i in range(b):
        stds, counts = [], []
        for ch in range(c):
            sel = (mag[i, ch] > 0.1).numpy()
            stds.append(circstd(phase[i, ch].double().numpy()[sel], high=math.pi, low=-math.pi))
            counts.append(sel.sum())
        want = float(np.average(stds, weights=counts))
        assert float(got[i]) == pytest.approx(want, rel=1e-4, abs=1e-6), i
    assert float(got[0]) == pytest.approx(1e-3, rel=0.2)  # float64 inside: resolves 1e-3 rad
    assert float(got[1]) < float(got[2]) < float(got[3])


def test_phase_spread_nan_without_strong_pixels_and_zero_for_constant_phase() -> None:
    mag = torch.full((2, 3, 4, 4), 0.05)
    mag[1] = 1.0
    phase = torch.full((2, 3, 4, 4), 2.5)
    got = phase_spread(mag, phase)
    assert math.isnan(float(got[0])) and float(got[1]) == pytest.approx(0.0, abs=1e-6)
