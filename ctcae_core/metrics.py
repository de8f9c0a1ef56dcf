"""Evaluation metrics: ARI, phase clustering (batched k-means), cluster distances, aggregation.

Everything here is a pure function of tensors, batched over images and device-agnostic (CPU or
CUDA; results come back on the input's device). The protocol follows the paper's code
(arXiv 2305.15001, ``utils_eval``):

* features = (cos phi, sin phi) of every output channel, each weighted by
  ``clip(|z|, 0, t) / t`` with ``t = 0.1``;
* k-means per image with K = number of distinct ground-truth labels in that image
  (background included; overlap pixels, label -1, do not count as a label), best of 10
  k-means++ initialisations; every pixel is clustered (as the paper does for colour images);
* ARI-FULL over all non-overlap pixels, ARI-FG over object pixels (label >= 1);
* inter/intra cluster distances as defined in :func:`cluster_distances`;
* phase spread (not in the paper): how far the output phases have left a single value, see
  :func:`phase_spread`. Read ARI-FG beside it: ARI-FG can rise from colour alone;
* ARI-FG of colour alone (not in the paper): the same clustering with every output phase set
  to 0, so only the magnitude weights tell pixels apart (``ari_fg_colour``). ARI-FG minus it is
  what the phases earn.

Differences from the paper's code, on purpose:

* the paper counts ``-1`` (overlap) as one more cluster when an image has overlap pixels; here
  K counts only labels >= 0, as docs/model.md says;
* ARI of an image with fewer than 2 counted pixels (e.g. ARI-FG of a background-only image) is
  NaN here, where scikit-learn returns 1.0; aggregation skips NaNs.

scikit-learn is imported lazily and only by the reference :func:`kmeans_sklearn_labels`.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

__all__ = [
    "adjusted_rand_index",
    "ari_scores",
    "phase_features",
    "colour_features",
    "kmeans_batched",
    "count_label_clusters",
    "cluster_phases",
    "cluster_distances",
    "evaluate_batch",
    "phase_spread",
    "MetricAccumulator",
    "kmeans_sklearn_labels",
    "cluster_phases_sklearn",
    "METRIC_KEYS",
]

#: Per-image metrics produced by :func:`evaluate_batch` and averaged by :class:`MetricAccumulator`.
METRIC_KEYS: tuple[str, ...] = (
    "mse", "ari_fg", "ari_full", "inter_cluster", "intra_cluster", "phase_spread", "ari_fg_colour",
)
PER_COUNT_KEYS: tuple[str, ...] = ("ari_fg", "ari_full")  # also averaged per object count
_PER_COUNT_KEYS = PER_COUNT_KEYS


# --------------------------------------------------------------------------------------------
# ARI
# --------------------------------------------------------------------------------------------
def _sum_sq_counts(key: torch.Tensor, stride: int, b: int) -> torch.Tensor:
    """Sum over distinct keys of (count of key)^2, per image.

    key: (m,) int64 encoding (image, value) as image * stride + value.
    Returns (b,) int64.
    """
    uniq, counts = torch.unique(key, return_counts=True)
    out = torch.zeros(b, dtype=torch.int64, device=key.device)
    out.scatter_add_(0, torch.div(uniq, stride, rounding_mode="floor"), counts * counts)
    return out


@torch.no_grad()
def adjusted_rand_index(true: torch.Tensor, pred: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Batched adjusted Rand index, equal to ``sklearn.metrics.adjusted_rand_score`` per image.

    Args:
        true: (b, n) or (b, h, w) integer labels (any ints, e.g. -1 allowed).
        pred: same shape, integer labels.
        valid: same shape, bool; only these pixels are counted (None = all).

    Returns:
        (b,) float64 ARI. Same value as scikit-learn (pair-confusion formula, 1.0 when both
        partitions agree on every pair, e.g. a single cluster in both), except that an image with
        fewer than 2 valid pixels gives NaN (scikit-learn says 1.0) so that it can be skipped.
    """
    if true.shape != pred.shape:
        raise ValueError(f"true {tuple(true.shape)} and pred {tuple(pred.shape)} differ in shape")
    b = true.shape[0]
    true = true.reshape(b, -1).long()  # (b, n)
    pred = pred.reshape(b, -1).long()  # (b, n)
    device = true.device
    if valid is None:
        valid = torch.ones_like(true, dtype=torch.bool)
    else:
        valid = valid.reshape(b, -1).to(device=device, dtype=torch.bool)
    bidx = torch.arange(b, device=device).unsqueeze(1).expand_as(true)[valid]  # (m,)
    t = true[valid]  # (m,)
    p = pred[valid]  # (m,)
    n = valid.sum(1).to(torch.int64)  # (b,)
    if t.numel() == 0:
        return torch.full((b,), float("nan"), dtype=torch.float64, device=device)
    # Dense ids over the batch (labels may be arbitrary ints), so the joint key cannot overflow.
    _, t_id = torch.unique(t, return_inverse=True)
    _, p_id = torch.unique(p, return_inverse=True)
    n_t = int(t_id.max()) + 1
    n_p = int(p_id.max()) + 1
    sum_a = _sum_sq_counts(bidx * n_t + t_id, n_t, b)  # sum_i a_i^2
    sum_b = _sum_sq_counts(bidx * n_p + p_id, n_p, b)  # sum_j b_j^2
    sum_ab = _sum_sq_counts((bidx * n_t + t_id) * n_p + p_id, n_t * n_p, b)  # sum_ij n_ij^2
    # Pair confusion matrix over ordered pairs, exactly as sklearn.metrics.pair_confusion_matrix.
    tp = sum_ab - n
    fp = sum_b - sum_ab
    fn = sum_a - sum_ab
    tn = n * n - fp - fn - sum_ab
    tp, fp, fn, tn = (v.double() for v in (tp, fp, fn, tn))
    num = 2.0 * (tp * tn - fn * fp)
    den = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    ari = num / torch.where(den == 0, torch.ones_like(den), den)
    ari = torch.where((fn == 0) & (fp == 0), torch.ones_like(ari), ari)
    return torch.where(n < 2, torch.full_like(ari, float("nan")), ari)


def ari_scores(labels: torch.Tensor, pred: torch.Tensor) -> dict[str, torch.Tensor]:
    """ARI-FULL and ARI-FG per image.

    Args:
        labels: (b, h, w) int64 ground truth, 0 = background, -1 = overlap, 1..K objects.
        pred: (b, h, w) integer predicted segment ids.

    Returns:
        ``{"ari_full": (b,), "ari_fg": (b,)}`` float64. ARI-FULL counts every non-overlap pixel,
        ARI-FG only object pixels (label >= 1); NaN where fewer than 2 pixels count.
    """
    return {
        "ari_full": adjusted_rand_index(labels, pred, labels >= 0),
        "ari_fg": adjusted_rand_index(labels, pred, labels >= 1),
    }


# --------------------------------------------------------------------------------------------
# Phase features and batched k-means
# --------------------------------------------------------------------------------------------
def phase_features(magnitude: torch.Tensor, phase: torch.Tensor, threshold: float | None = 0.1) -> torch.Tensor:
    """Magnitude-weighted phase features per pixel, as the paper clusters them.

    Args:
        magnitude: (b, c, h, w) output magnitudes |z| (>= 0).
        phase: (b, c, h, w) output phases in radians.
        threshold: t; each channel's (cos, sin) is scaled by clip(|z|, 0, t) / t, so pixels with
            small magnitude sit near the origin. None: no weighting.

    Returns:
        (b, h*w, 2c) float32 features, per channel (cos, sin) interleaved: [c0cos, c0sin, c1cos, ...].
    """
    b, c, h, w = phase.shape
    phase = phase.float()
    feats = torch.stack((torch.cos(phase), torch.sin(phase)), dim=2)  # (b, c, 2, h, w)
    if threshold is not None:
        weight = magnitude.float().clamp(0.0, threshold) / threshold  # (b, c, h, w)
        feats = feats * weight.unsqueeze(2)
    return feats.reshape(b, 2 * c, h * w).transpose(1, 2).contiguous()  # (b, h*w, 2c)


class _Points:
    """Points of the k-means rows, shared between the rows of one image without copies.

    Holds G groups of n points in augmented form, each group serving ``r`` consecutive rows
    (r = n_init while every row is active, 1 after compaction):
    ``xa`` (G, n, d + 1) = [x, 1] and ``xta`` (G, d + 1, n) its transpose, so that one matmul gives
    distances (with [-2c, |c|^2]) and another gives cluster sums together with counts.
    ``sq`` (A, n) holds |x|^2 per row.
    """

    def __init__(self, xa: torch.Tensor, xta: torch.Tensor, sq: torch.Tensor, r: int) -> None:
        self.xa, self.xta, self.sq, self.r = xa, xta, sq, r

    @classmethod
    def from_points(cls, x: torch.Tensor, r: int) -> "_Points":
        """x: (b, n, d) -> points for b * r rows (rows i*r .. i*r + r - 1 are image i)."""
        b, n, _ = x.shape
        xa = torch.cat((x, torch.ones(b, n, 1, dtype=x.dtype, device=x.device)), dim=2)  # (b, n, d+1)
        sq = (x * x).sum(-1).repeat_interleave(r, dim=0)  # (b*r, n)
        return cls(xa, xa.transpose(1, 2).contiguous(), sq, r)

    def dists(self, c: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """Squared distances minus |x|^2 (argmin and differences unaffected): c (A, k, d) -> (A, k, n).

        masked: (A, k) bool, centers that get +inf.
        """
        a, k, d = c.shape
        c_sq = (c * c).sum(-1, keepdim=True)  # (A, k, 1)
        if masked is not None:
            c_sq = c_sq.masked_fill(masked.unsqueeze(-1), float("inf"))
        ca = torch.cat((-2.0 * c, c_sq), dim=2)  # (A, k, d+1)
        g = self.xta.shape[0]
        return torch.bmm(ca.view(g, self.r * k, d + 1), self.xta).view(a, k, -1)

    def cluster_sums(self, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """onehot (A, k, n) -> per-cluster sums of points (A, k, d) and counts (A, k)."""
        a, k, n = onehot.shape
        g = self.xta.shape[0]
        # (G, d+1, n) @ (G, n, r*k): dot products along the contiguous n of both operands.
        sums = torch.bmm(self.xta, onehot.view(g, self.r * k, n).transpose(1, 2))  # (G, d+1, r*k)
        sums = sums.transpose(1, 2).reshape(a, k, -1)  # (A, k, d+1)
        return sums[..., :-1], sums[..., -1]

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Points by index per row: idx (A, m) -> (A, m, d)."""
        a, m = idx.shape
        g, _, d1 = self.xa.shape
        idx = idx.view(g, self.r * m, 1).expand(-1, -1, d1)
        return torch.gather(self.xa, 1, idx).view(a, m, d1)[..., :-1]

    def select_rows(self, rows: torch.Tensor) -> "_Points":
        """Points of the given rows only, one group per row (r = 1)."""
        grp = torch.div(rows, self.r, rounding_mode="floor")
        return _Points(self.xa[grp], self.xta[grp], self.sq[rows], 1)


def _argmin_small(dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """min and argmin over dim 1 of (A, k, n) for small k.

    On CPU, ``torch.min(dim)`` with indices and masked writes are ~10x slower than an ``amin`` plus
    a few arithmetic passes, so the index is counted: argmin = number of leading entries that are
    not the minimum (ties go to the lowest index, as ``torch.argmin``). Returns (A, n) min and
    (A, n) float32 argmin (small integers, exact).
    """
    best = dist.amin(1)  # (A, n)
    idx = torch.zeros_like(best)
    not_found = torch.ones_like(best)
    differs = torch.empty_like(best)
    for j in range(dist.shape[1] - 1):
        not_found.mul_(torch.ne(dist[:, j], best, out=differs))
        idx.add_(not_found)
    return best, idx


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """U[0, 1) samples drawn on the generator's device (so any generator works with any input)."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _kmeans_pp(pts: _Points, k: torch.Tensor, kmax: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (as scikit-learn's: 2 + log(k) candidates per center), batched.

    pts: the rows' points; k: (A,) clusters per row. Returns centers (A, kmax, d); those with
    index >= k_i are filled but never used.
    """
    a = k.shape[0]
    n, d = pts.xa.shape[1], pts.xa.shape[2] - 1
    device = k.device
    n_trials = 2 + int(math.log(max(kmax, 1)))
    rows = torch.arange(a, device=device)
    centers = torch.empty(a, kmax, d, dtype=pts.xa.dtype, device=device)
    first = (_uniform((a, 1), generator, device) * n).long().clamp_(max=n - 1)  # (A, 1)
    centers[:, :1] = pts.gather(first)
    # Distances are kept minus |x|^2 (what pts.dists gives); potentials differ by a row constant.
    closest = pts.dists(centers[:, :1])[:, 0]  # (A, n)
    for j in range(1, kmax):
        weights = (closest + pts.sq).clamp_min_(0.0)  # (A, n) squared distance to nearest center
        # All points on existing centers (fewer distinct points than K): sample uniformly.
        weights.add_((weights.sum(1, keepdim=True) <= 0).to(weights.dtype))
        cum = torch.cumsum(weights, dim=1)  # (A, n)
        r = _uniform((a, n_trials), generator, device) * cum[:, -1:]  # (A, L)
        cand = torch.searchsorted(cum, r, right=True).clamp_(max=n - 1)  # (A, L)
        cand_x = pts.gather(cand)  # (A, L, d)
        cand_d = pts.dists(cand_x)  # (A, L, n)
        pot = torch.stack([torch.minimum(cand_d[:, t], closest).sum(1) for t in range(n_trials)], 1)  # (A, L)
        best = pot.argmin(1)  # (A,)
        centers[:, j] = cand_x[rows, best]
        new_closest = torch.minimum(cand_d[rows, best], closest)  # (A, n)
        no_center = k <= j  # rows without a j-th center keep their distances
        closest = torch.where(no_center.unsqueeze(1), closest, new_closest) if bool(no_center.any()) else new_closest
    return centers


@torch.no_grad()
def kmeans_batched(
    x: torch.Tensor,
    k: torch.Tensor,
    n_init: int = 10,
    max_iter: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd k-means for many images at once, each with its own K, best of ``n_init`` inits.

    All images and all initialisations run together as b * n_init rows of one (rows, kmax, n)
    problem (the rows of one image share its points without copies); centers with index >= k_i
    get +inf distance. Seeding is greedy k-means++ (as scikit-learn's). An empty cluster moves to
    the point farthest from its center (as scikit-learn). A row stops when an update moved its
    centers by at most ``tol`` times the mean per-feature variance of its image (scikit-learn's
    criterion; the shift is 0 once the labels stop changing), or after ``max_iter`` updates; its
    labels are then the nearest-center assignment of its final centers. Finished rows leave the
    batch, so the cost follows the typical row, not the slowest. No Python loop over images; a
    few scalar host syncs per iteration (to drop finished rows), none per image.

    Args:
        x: (b, n, d) float points per image.
        k: (b,) long, clusters per image (clamped to 1..n).
        n_init: initialisations per image; the one with the lowest inertia wins.
        max_iter: maximum Lloyd iterations.
        tol: relative center-shift tolerance.
        generator: torch.Generator for the seeding (any device); None = a CPU generator seeded 0.

    Returns:
        labels (b, n) int64 in [0, k_i), inertia (b,) float32 (sum of squared distances to the
        assigned centers).
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    b, n, d = x.shape
    device = x.device
    x = torch.nan_to_num(x.float()).contiguous()  # a diverged model must not break the clustering
    k = k.to(device=device, dtype=torch.long).clamp(1, n)  # (b,)
    kmax = int(k.max())
    bsz = b * n_init
    pts = _Points.from_points(x, n_init)  # rows of image i: i*n_init + r
    kr = k.repeat_interleave(n_init)  # (B,)
    masked = torch.arange(kmax, device=device).unsqueeze(0) >= kr.unsqueeze(1)  # (B, kmax)
    tol_abs = tol * x.var(dim=1, unbiased=False).mean(-1).repeat_interleave(n_init)  # (B,)
    centers = _kmeans_pp(pts, kr, kmax, generator)  # (B, kmax, d)

    out_labels = torch.zeros(bsz, n, dtype=x.dtype, device=device)
    out_inertia = torch.zeros(bsz, dtype=x.dtype, device=device)
    act = torch.arange(bsz, device=device)  # rows still in the batch
    finished = torch.zeros(bsz, dtype=torch.bool, device=device)  # in the batch, already written out
    small_shift = torch.zeros(bsz, dtype=torch.bool, device=device)
    onehot = torch.empty(bsz, kmax, n, dtype=x.dtype, device=device)
    for it in range(max_iter + 1):
        dist = pts.dists(centers, masked)  # (A, kmax, n)
        min_d = dist.amin(1)  # (A, n)
        # A row whose last update moved its centers by <= tol (0 when its labels stopped
        # changing) is final: its labels are the nearest-center assignment of these centers.
        done = small_shift if it < max_iter else torch.ones_like(small_shift)
        done_idx = torch.nonzero(done & ~finished).squeeze(1)  # (n_done,)
        if done_idx.numel():
            rows = act[done_idx]
            out_labels[rows] = _argmin_small(dist[done_idx])[1]
            out_inertia[rows] = (min_d[done_idx] + pts.sq[done_idx]).clamp_min(0.0).sum(1)
            finished |= done
            n_fin = int(finished.sum())
            if n_fin == act.shape[0]:
                break
            # Finished rows iterate on harmlessly until enough of them pay for a compaction
            # (leaving the shared layout costs ~2x per row: per-row matmuls are smaller).
            if n_fin >= act.shape[0] * (0.6 if pts.r > 1 else 0.25):
                keep = torch.nonzero(~finished).squeeze(1)
                pts = pts.select_rows(keep)
                act, dist, min_d, finished = act[keep], dist[keep], min_d[keep], finished[keep]
                centers, masked, tol_abs = centers[keep], masked[keep], tol_abs[keep]
        a = act.shape[0]
        oh = onehot[:a]
        for j in range(kmax):
            # Membership without an argmin: exact ties between two centers are measure-zero for
            # distinct centers (k-means++ never seeds duplicates while distinct points remain).
            torch.eq(dist[:, j], min_d, out=oh[:, j])
        sums, counts = pts.cluster_sums(oh)  # (A, kmax, d), (A, kmax)
        new_centers = sums / counts.clamp_min(1.0).unsqueeze(-1)
        empty = (counts == 0) & ~masked  # (A, kmax)
        if bool(empty.any()):
            # The r-th empty cluster of a row moves to the row's r-th farthest point.
            far = (min_d + pts.sq).topk(min(kmax, n), dim=1).indices  # (A, kmax')
            rank = (torch.cumsum(empty.long(), 1) - 1).clamp_(0, far.shape[1] - 1)  # (A, kmax)
            far_x = pts.gather(torch.gather(far, 1, rank))  # (A, kmax, d)
            new_centers = torch.where(empty.unsqueeze(-1), far_x, new_centers)
        new_centers = torch.where(masked.unsqueeze(-1), centers, new_centers)
        small_shift = ((new_centers - centers) ** 2).sum((1, 2)) <= tol_abs  # (A,)
        centers = new_centers
    inertia = out_inertia.view(b, n_init)
    best = inertia.argmin(1)  # (b,)
    arange_b = torch.arange(b, device=device)
    return out_labels[arange_b * n_init + best].long(), inertia[arange_b, best]


def colour_features(magnitude: torch.Tensor, threshold: float | None = 0.1) -> torch.Tensor:
    """:func:`phase_features` with every phase set to 0: the clustering features of colour alone.

    On datasets whose objects differ in colour, the magnitude weights alone separate objects; the
    ARI-FG these features score is the part of ARI-FG that needs no phase. With every phase 0 the
    sin features are 0 and drop out of every distance: (b, h*w, c), the cos features only.
    """
    return phase_features(magnitude, torch.zeros_like(magnitude), threshold)[..., 0::2].contiguous()


@torch.no_grad()
def count_label_clusters(labels: torch.Tensor) -> torch.Tensor:
    """Number of distinct ground-truth labels >= 0 per image (background included, -1 excluded).

    labels: (b, h, w) or (b, n) int. Returns (b,) int64, at least 1.
    """
    b = labels.shape[0]
    lab = labels.reshape(b, -1).long()  # (b, n)
    valid = lab >= 0
    stride = int(lab.max().clamp_min(0)) + 1
    key = (torch.arange(b, device=lab.device).unsqueeze(1) * stride + lab)[valid]
    uniq = torch.unique(key)
    out = torch.zeros(b, dtype=torch.int64, device=lab.device)
    out.scatter_add_(0, torch.div(uniq, stride, rounding_mode="floor"), torch.ones_like(uniq))
    return out.clamp_min(1)


def cluster_phases(
    magnitude: torch.Tensor,
    phase: torch.Tensor,
    n_clusters: torch.Tensor,
    generator: torch.Generator | None = None,
    threshold: float | None = 0.1,
    n_init: int = 10,
) -> torch.Tensor:
    """Segment images by clustering their output phases (paper protocol).

    Args:
        magnitude, phase: (b, c, h, w) output magnitude and phase.
        n_clusters: (b,) long, K per image (see :func:`count_label_clusters`).
        generator: torch.Generator for k-means seeding.
        threshold: magnitude weighting threshold of :func:`phase_features`.

    Returns:
        (b, h, w) int64 segment ids in [0, K_i).
    """
    b, _, h, w = phase.shape
    feats = phase_features(magnitude, phase, threshold)  # (b, h*w, 2c)
    labels, _ = kmeans_batched(feats, n_clusters, n_init=n_init, generator=generator)
    return labels.view(b, h, w)


@torch.no_grad()
def cluster_distances(features: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inter- and intra-cluster distances of a clustering, per image (the paper's definitions).

    The distance between two points is the mean over feature dimensions of the squared difference
    (squared euclidean distance / d), as in the paper's ``calculate_cluster_metrics``. Centroids are
    the means of the points of each non-empty cluster of ``pred``.

    * intra = mean over non-empty clusters of (mean distance of the cluster's points to its
      centroid) -- clusters weigh equally, whatever their size;
    * inter = mean distance over all pairs of distinct non-empty clusters' centroids
      (NaN when fewer than 2 clusters).

    Args:
        features: (b, n, d) float points (e.g. :func:`phase_features`).
        pred: (b, n) or (b, h, w) int cluster ids >= 0.

    Returns:
        inter (b,), intra (b,) float32.
    """
    b, n, d = features.shape
    x = features.float()
    lab = pred.reshape(b, n).long()  # (b, n)
    kmax = int(lab.max()) + 1
    onehot = torch.nn.functional.one_hot(lab, kmax).to(x.dtype)  # (b, n, k)
    counts = onehot.sum(1)  # (b, k)
    centroids = torch.bmm(onehot.transpose(1, 2), x) / counts.clamp_min(1.0).unsqueeze(-1)  # (b, k, d)
    own = torch.gather(centroids, 1, lab.unsqueeze(-1).expand(-1, -1, d))  # (b, n, d)
    point_d = ((x - own) ** 2).mean(-1)  # (b, n)
    per_cluster = torch.zeros(b, kmax, dtype=x.dtype, device=x.device).scatter_add_(1, lab, point_d)
    nonempty = counts > 0  # (b, k)
    per_cluster = per_cluster / counts.clamp_min(1.0)
    intra = (per_cluster * nonempty).sum(1) / nonempty.sum(1).clamp_min(1)
    cd = ((centroids.unsqueeze(2) - centroids.unsqueeze(1)) ** 2).mean(-1)  # (b, k, k)
    eye = torch.eye(kmax, dtype=torch.bool, device=x.device).unsqueeze(0)
    pairs = nonempty.unsqueeze(2) & nonempty.unsqueeze(1) & ~eye  # (b, k, k)
    n_pairs = pairs.sum((1, 2))
    inter = (cd * pairs).sum((1, 2)) / n_pairs.clamp_min(1)
    inter = torch.where(n_pairs > 0, inter, torch.full_like(inter, float("nan")))
    return inter, intra


def phase_spread(magnitude: torch.Tensor, phase: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Circular standard deviation of the output phase over pixels with |z| > threshold (radians).

    Per image and channel, over the pixels whose magnitude exceeds ``threshold``:
    ``sqrt(-2 ln R)`` with ``R = |mean exp(i phi)|`` (equal to the plain standard deviation for
    concentrated phases, and blind to the wrap at +-pi); then the mean over channels weighted by
    their pixel counts. Objects need phase differences of the order of 1 rad; a spread near 0
    means the phases never left their start. Computed in float64: at a spread of 1e-3,
    1 - R = 5e-7 is below float32's resolution.

    magnitude, phase: (b, c, h, w). Returns (b,) float; NaN where no pixel passes.
    """
    m = magnitude.detach().double()
    p = phase.detach().double()
    mask = (m > threshold).double()  # (b, c, h, w)
    cnt = mask.sum((2, 3))  # (b, c)
    c = (torch.cos(p) * mask).sum((2, 3)) / cnt.clamp_min(1)
    s = (torch.sin(p) * mask).sum((2, 3)) / cnt.clamp_min(1)
    r = torch.sqrt(c * c + s * s).clamp(1e-300, 1.0)
    std = torch.sqrt(-2.0 * torch.log(r))  # (b, c)
    total = cnt.sum(1)
    out = (std * cnt).sum(1) / total.clamp_min(1)
    return torch.where(total > 0, out, torch.full_like(out, float("nan"))).to(magnitude.dtype)


def evaluate_batch(
    images: torch.Tensor,
    recon: torch.Tensor,
    magnitude: torch.Tensor,
    phase: torch.Tensor,
    labels: torch.Tensor,
    n_objects: torch.Tensor,
    generator: torch.Generator | None = None,
    threshold: float | None = 0.1,
    n_init: int = 10,
    colour: bool = True,
) -> dict[str, torch.Tensor]:
    """All per-image evaluation metrics of one batch (paper protocol).

    Args:
        images: (b, c, h, w) inputs in [0, 1].
        recon: (b, c, h, w) reconstructions.
        magnitude, phase: (b, c_out, h, w) output magnitude and phase of the model.
        labels: (b, h, w) int64 ground truth (0 bg, -1 overlap, 1..K objects).
        n_objects: (b,) int objects per image (passed through for per-count aggregation).
        generator: torch.Generator for the k-means seeding.

    Returns:
        dict of per-image tensors: ``mse, ari_fg, ari_full, inter_cluster, intra_cluster,
        phase_spread, ari_fg_colour`` (b,)
        float; ``n_objects`` (b,) int64; ``labels_pred`` (b, h, w) int64 predicted segments.
        K per image = distinct ground-truth labels (background included, -1 excluded).
        ``ari_fg_colour`` clusters :func:`colour_features` with the same k-means seeds as the
        phase features; ``generator`` leaves in the state the phase clustering alone leaves it
        in, so ``ari_fg`` does not depend on the control. Without ``colour`` it is not clustered
        and ``ari_fg_colour`` is NaN.
    """
    b, _, h, w = phase.shape
    with torch.no_grad():
        mse = ((recon.float() - images.float()) ** 2).flatten(1).mean(1)  # (b,)
        feats = phase_features(magnitude, phase, threshold)  # (b, h*w, 2c)
        k = count_label_clusters(labels)  # (b,)
        seeds = generator.get_state() if generator is not None else None
        pred, _ = kmeans_batched(feats, k, n_init=n_init, generator=generator)  # (b, h*w)
        inter, intra = cluster_distances(feats, pred)
        pred = pred.view(b, h, w)
        ari = ari_scores(labels, pred)
        ari_colour = torch.full_like(mse, float("nan"))
        if colour:
            after = generator.get_state() if generator is not None else None
            if generator is not None:
                generator.set_state(seeds)
            by_colour, _ = kmeans_batched(colour_features(magnitude, threshold), k, n_init=n_init, generator=generator)
            if generator is not None:
                generator.set_state(after)
            ari_colour = ari_scores(labels, by_colour.view(b, h, w))["ari_fg"]
    return {
        "mse": mse,
        "ari_fg": ari["ari_fg"],
        "ari_full": ari["ari_full"],
        "inter_cluster": inter,
        "intra_cluster": intra,
        "phase_spread": phase_spread(magnitude, phase, 0.1 if threshold is None else threshold),
        "ari_fg_colour": ari_colour,
        "n_objects": torch.as_tensor(n_objects, device=mse.device).long().reshape(b),
        "labels_pred": pred,
    }


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------
class MetricAccumulator:
    """Sums per-image metrics into means overall and per object count, skipping NaNs.

    State is a flat float64 tensor of sums and counts (see :meth:`to_tensor`), so distributed
    workers can ``all_reduce(SUM)`` it and rebuild with :meth:`from_tensor`.

    Layout: for each key of METRIC_KEYS ``[sum, count]``; then ``n_images``; then for each
    object count k in 0..max_objects ``[ari_fg_sum, ari_fg_count, ari_full_sum, ari_full_count,
    images]``.
    """

    def __init__(self, max_objects: int = 16) -> None:
        self.max_objects = int(max_objects)
        n_global = 2 * len(METRIC_KEYS) + 1
        self._per_count = 2 * len(_PER_COUNT_KEYS) + 1
        self.state = torch.zeros(n_global + (self.max_objects + 1) * self._per_count, dtype=torch.float64)

    def _count_block(self, k: int) -> int:
        return 2 * len(METRIC_KEYS) + 1 + k * self._per_count

    def update(self, metrics: Mapping[str, torch.Tensor], n_objects: torch.Tensor | None = None) -> None:
        """Add one batch: metrics[key] (b,) per image; n_objects (b,) int (default metrics["n_objects"])."""
        if n_objects is None:
            n_objects = metrics["n_objects"]
        nobj = torch.as_tensor(n_objects).detach().cpu().long().reshape(-1)  # (b,)
        if nobj.numel() and (int(nobj.min()) < 0 or int(nobj.max()) > self.max_objects):
            raise ValueError(f"n_objects outside 0..{self.max_objects}: {nobj.tolist()}")
        s = self.state
        for i, key in enumerate(METRIC_KEYS):
            v = torch.as_tensor(metrics[key]).detach().cpu().double().reshape(-1)
            ok = ~torch.isnan(v)
            s[2 * i] += v[ok].sum()
            s[2 * i + 1] += ok.sum()
        s[2 * len(METRIC_KEYS)] += nobj.numel()
        per = torch.zeros(self.max_objects + 1, self._per_count, dtype=torch.float64)
        for i, key in enumerate(_PER_COUNT_KEYS):
            v = torch.as_tensor(metrics[key]).detach().cpu().double().reshape(-1)
            ok = ~torch.isnan(v)
            per[:, 2 * i].index_add_(0, nobj[ok], v[ok])
            per[:, 2 * i + 1].index_add_(0, nobj[ok], torch.ones(int(ok.sum()), dtype=torch.float64))
        per[:, -1].index_add_(0, nobj, torch.ones(nobj.numel(), dtype=torch.float64))
        s[self._count_block(0):] += per.reshape(-1)

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Add another accumulator's sums in place (same max_objects); returns self."""
        if other.max_objects != self.max_objects:
            raise ValueError("cannot merge accumulators with different max_objects")
        self.state += other.state
        return self

    def to_tensor(self) -> torch.Tensor:
        """Flat float64 copy of the sums and counts (for ``torch.distributed.all_reduce``)."""
        return self.state.clone()

    @classmethod
    def from_tensor(cls, state: torch.Tensor, max_objects: int = 16) -> "MetricAccumulator":
        """Rebuild from :meth:`to_tensor` output (possibly all-reduced, on any device)."""
        acc = cls(max_objects)
        state = state.detach().cpu().double().reshape(-1)
        if state.shape != acc.state.shape:
            raise ValueError(f"state has {state.numel()} values, expected {acc.state.numel()}")
        acc.state = state.clone()
        return acc

    def compute(self) -> dict[str, float]:
        """Means: keys METRIC_KEYS, ``n_images``; per object count k with images: ``count_n{k}``
        and ``ari_fg_n{k}``, ``ari_full_n{k}`` (only when some value for k was not NaN).
        A global mean with no non-NaN value is NaN."""
        s = self.state.tolist()
        out: dict[str, float] = {}
        for i, key in enumerate(METRIC_KEYS):
            out[key] = s[2 * i] / s[2 * i + 1] if s[2 * i + 1] > 0 else float("nan")
        out["n_images"] = int(s[2 * len(METRIC_KEYS)])
        for k in range(self.max_objects + 1):
            base = self._count_block(k)
            images = s[base + self._per_count - 1]
            if images <= 0:
                continue
            out[f"count_n{k}"] = int(images)
            for i, key in enumerate(_PER_COUNT_KEYS):
                if s[base + 2 * i + 1] > 0:
                    out[f"{key}_n{k}"] = s[base + 2 * i] / s[base + 2 * i + 1]
        return out


# --------------------------------------------------------------------------------------------
# scikit-learn reference (tests and benchmarks only)
# --------------------------------------------------------------------------------------------
def kmeans_sklearn_labels(
    features: torch.Tensor | np.ndarray, k: torch.Tensor | np.ndarray, seed: int = 0, n_init: int = 10
) -> np.ndarray:
    """Reference clustering: ``sklearn.cluster.KMeans(K_i, n_init, random_state=seed)`` per image.

    features: (b, n, d); k: (b,) clusters per image. Returns (b, n) int64 labels.
    """
    from sklearn.cluster import KMeans  # lazy: the library itself does not need scikit-learn

    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    ks = k.detach().cpu().numpy() if isinstance(k, torch.Tensor) else np.asarray(k)
    out = np.zeros(feats.shape[:2], dtype=np.int64)
    for i in range(feats.shape[0]):
        km = KMeans(n_clusters=int(ks[i]), n_init=n_init, random_state=seed).fit(feats[i].astype(np.float64))
        out[i] = km.labels_
    return out


def cluster_phases_sklearn(
    magnitude: torch.Tensor,
    phase: torch.Tensor,
    n_clusters: torch.Tensor,
    seed: int = 0,
    threshold: float | None = 0.1,
    n_init: int = 10,
) -> torch.Tensor:
    """:func:`cluster_phases` with scikit-learn's KMeans (the reference). Returns (b, h, w) int64."""
    b, _, h, w = phase.shape
    feats = phase_features(magnitude, phase, threshold)
    labels = kmeans_sklearn_labels(feats, n_clusters, seed=seed, n_init=n_init)
    return torch.from_numpy(labels).view(b, h, w).to(phase.device)
