"""Contrastive loss on phases, pairs mined on magnitudes (docs/model.md, "Contrastive loss").

For each sampled anchor position, all positions are ranked by the cosine distance between their
address (the magnitude vector over channels) and the anchor's; positives come from the top-k
closest (the anchor itself excluded), negatives from the bottom-m farthest. The loss is a
soft-target cross-entropy over cosine similarities of the phase vectors divided by a temperature.

Only the (batch, anchors, positions) distance matrix is formed; the paper's code builds
(batch, channels, positions, H, W) copies for the same result. As in the paper's code, the anchor
positions and the sampled ranks are shared by all images of a batch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ctcae_core import fused
from ctcae_core.config import ContrastiveConfig

Tensor = torch.Tensor
DIST_BLOCK = 1 << 20  # elements of the distance block mined at once
GRAM_POSITIONS_PER_PAIR = 8  # the InfoNCE term forms all anchor-position similarities up to n = 8 (P + N)


class Pairs(NamedTuple):
    anchors: Tensor  # (A,) anchor positions
    index: Tensor  # (b, A, P + N) positions: the P positives, then the N negatives
    n_positives: int

    @property
    def positives(self) -> Tensor:  # (b, A, P)
        return self.index[:, :, : self.n_positives]

    @property
    def negatives(self) -> Tensor:  # (b, A, N)
        return self.index[:, :, self.n_positives :]


def to_patches(x: Tensor, patch: int) -> Tensor:
    """(b, c, h, w) -> (b, c * p * p, h/p * w/p): each p x p patch becomes one position."""
    if patch == 1:
        return x.flatten(2)
    if x.shape[-1] % patch or x.shape[-2] % patch:
        raise ValueError(f"patch size {patch} does not divide the map size {tuple(x.shape[-2:])}")
    return F.unfold(x, kernel_size=patch, stride=patch)


def _sample(n: int, k: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """k distinct integers from range(n) (sampled on the CPU generator, then moved)."""
    return torch.randperm(n, generator=generator)[:k].to(device)


def mine_pairs(
    addresses: Tensor,
    n_anchors: int,
    n_positives: int,
    top_k: int,
    n_negatives: int,
    bottom_m: int,
    generator: torch.Generator | None = None,
) -> Pairs:
    """Pick anchors, positives (top-k closest) and negatives (bottom-m farthest) by address.

    addresses: (b, d, n) magnitude vectors at n positions. Returns position indices.
    """
    b, _, n = addresses.shape
    if top_k + 1 > n or bottom_m > n:
        raise ValueError(f"top_k ({top_k}) + anchor and bottom_m ({bottom_m}) must fit in {n} positions")
    n_anchors = min(n_anchors, n)
    with torch.no_grad():
        anchors = _sample(n, n_anchors, generator, addresses.device)  # (A,)
        unit = unit_vectors(addresses)
        pos_ranks = 1 + _sample(top_k, n_positives, generator, addresses.device)
        neg_ranks = n - bottom_m + _sample(bottom_m, n_negatives, generator, addresses.device)
        ranks = torch.cat([pos_ranks, neg_ranks])
        # A few images at a time keeps the (images, A, n) distance block near 4 MB.
        chunk = max(1, DIST_BLOCK // (len(anchors) * n))
        picked = []
        if not unit.is_cuda and fused.mining_keys_usable(unit):  # distances and keys in one C pass
            bits = _position_bits(n)
            keys = torch.empty(min(chunk, b), len(anchors), n, dtype=torch.int32)  # one buffer for every chunk
            for i in range(0, b, chunk):
                block = fused.mining_keys(unit[i : i + chunk], anchors, bits, out=keys[: min(chunk, b - i)])
                picked.append(_positions_at_ranks_of_keys(block, ranks, bits))
            return Pairs(anchors, torch.cat(picked), n_positives)
        for i in range(0, b, chunk):
            u = unit[i : i + chunk]
            ua = u[:, :, anchors].transpose(1, 2)  # (images, A, d)
            ones = u.new_ones(1, 1, 1).expand(u.shape[0], len(anchors), n)
            dist = torch.baddbmm(ones, ua, u, alpha=-1.0).clamp_min_(0.0)  # 1 - cos similarity
            picked.append(positions_at_ranks(dist, anchors, ranks))
        picked = torch.cat(picked)
    return Pairs(anchors, picked, n_positives)


def unit_vectors(x: Tensor, eps: float = 1e-12) -> Tensor:
    """x / max(||x||, eps) along dim 1 (as F.normalize; avoids its slow strided reduction)."""
    return x / x.square().sum(dim=1, keepdim=True).clamp_min(eps * eps).sqrt()


def positions_at_ranks(dist: Tensor, anchors: Tensor, ranks: Tensor) -> Tensor:
    """Positions at the given ranks of each row sorted by distance, the row's anchor at rank 0.

    dist: (b, A, n) non-negative, modified in place on the CPU; ranks: (R,). Returns (b, A, R).
    On CUDA a plain argsort. On the CPU the position is packed into the low bits of the
    distance's float bits and the int32 keys are sorted by numpy's SIMD sort, several times
    faster than torch's argsort there; distances equal to within a relative 2^-(23 -
    ceil(log2 n)) (1.2e-4 at n = 1024) are then ordered by position.
    """
    b, n_a, n = dist.shape
    anchor_idx = anchors.view(1, -1, 1).expand(b, -1, 1)
    if dist.is_cuda:
        order = torch.argsort(dist.scatter(2, anchor_idx, -1.0), dim=2)
        return order[:, :, ranks]
    bits = _position_bits(n)
    keys = dist.contiguous().view(torch.int32)
    keys &= ~((1 << bits) - 1)
    keys |= torch.arange(n, dtype=torch.int32)
    # A negative key sorts first; its low bits still hold the anchor's position.
    keys.scatter_(2, anchor_idx, (anchors.to(torch.int32) - (1 << bits)).view(1, -1, 1).expand(b, -1, 1))
    return _positions_at_ranks_of_keys(keys, ranks, bits)


def _position_bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def _positions_at_ranks_of_keys(keys: Tensor, ranks: Tensor, bits: int) -> Tensor:
    """Sort the (b, A, n) int32 keys along the last axis in place; the positions at ``ranks``."""
    sorted_keys = keys.numpy()  # shares keys' memory
    # In place (np.sort would copy). Not split over threads: at 2 threads that measured slower
    # inside the loss (benchmarks/README.md).
    sorted_keys.sort(axis=2)
    picked = sorted_keys.take(ranks.numpy(), axis=2)  # several times faster than fancy indexing here
    return torch.from_numpy(picked & ((1 << bits) - 1)).long()


def soft_target_infonce(features: Tensor, pairs: Pairs, temperature: float) -> Tensor:
    """Soft-target cross-entropy of anchors against their pairs; positives share the target mass.

    features: (b, d, n) phase vectors. Logits = cos-similarity / temperature, where the cosine
    similarity of p and a is p . a / (max(|p|, 1e-12) max(|a|, 1e-12)) (0 for a zero vector).

    The features are normalised once per position (b, d, n), not once per pair, and the pairs are
    gathered channel-major, (b, d, A * (P + N)): with the decoder's d = 3 channels a pair-major
    layout (..., d) leaves every elementwise pass and its backward a stride-3 innermost loop.
    """
    b, d, n = features.shape
    idx = pairs.index  # (b, A, P + N)
    n_a, n_k = idx.shape[1], idx.shape[2]
    unit = unit_vectors(features)  # (b, d, n)
    if n <= GRAM_POSITIONS_PER_PAIR * n_k:
        # Few positions, many channels (the encoder's 4x4 map of 256): every anchor against every
        # position in one batched matmul, then the pairs' entries, instead of gathering d-vectors.
        anchor_rows = unit[:, :, pairs.anchors].transpose(1, 2)  # (b, A, d)
        logits = torch.gather(torch.bmm(anchor_rows, unit), 2, idx) / temperature  # (b, A, P + N)
    elif fused.infonce_usable(unit):  # the gathered pairs' logits, log-softmax and backward in one C pass each
        return _FusedInfoNCE.apply(unit, idx, pairs.anchors, temperature, pairs.n_positives)
    else:
        pair_unit = torch.gather(unit, 2, idx.reshape(b, 1, n_a * n_k).expand(b, d, n_a * n_k)).view(b, d, n_a, n_k)
        anchor_unit = unit[:, :, pairs.anchors].unsqueeze(-1)  # (b, d, A, 1)
        logits = (pair_unit * anchor_unit).sum(dim=1) / temperature  # (b, A, P + N)
    n_pos = pairs.n_positives
    log_p = F.log_softmax(logits, dim=2)
    return -(log_p[:, :, :n_pos].sum(dim=2) / n_pos).mean()


class _FusedInfoNCE(torch.autograd.Function):
    """soft_target_infonce's gathered-pairs branch on unit vectors, by fused.infonce_forward and
    infonce_backward: the same value and gradient as the ATen ops to float rounding
    (tests/test_fused.py), without the (b, d, A, P + N) gathers and their scatter-add."""

    @staticmethod
    def forward(ctx, unit: Tensor, idx: Tensor, anchors: Tensor, temperature: float, n_pos: int) -> Tensor:
        # The kernels read int64 positions and dense float32 vectors.
        unit, idx, anchors = unit.contiguous(), idx.to(torch.int64).contiguous(), anchors.to(torch.int64).contiguous()
        rows, coef = fused.infonce_forward(unit, idx, anchors, temperature, n_pos)
        ctx.save_for_backward(unit, idx, anchors, coef)
        ctx.temperature = temperature
        return rows.mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        unit, idx, anchors, coef = ctx.saved_tensors
        scale = grad.item() / (coef.shape[0] * coef.shape[1] * ctx.temperature)
        return fused.infonce_backward(unit, idx, anchors, coef, scale), None, None, None, None


def contrastive_loss(
    enc_magnitude: Tensor,
    enc_phase: Tensor,
    out_magnitude: Tensor,
    out_phase: Tensor,
    cfg: ContrastiveConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sum of the encoder and decoder terms selected by ``cfg.layers`` (unweighted).

    enc_*: (b, c', h', w') last encoder conv layer; out_*: (b, c, h, w) decoder output.
    """
    total = out_magnitude.new_zeros(())
    if cfg.layers in ("both", "encoder"):
        pairs = mine_pairs(
            enc_magnitude.flatten(2), cfg.enc_anchors, cfg.enc_positives, cfg.enc_top_k,
            cfg.enc_negatives, cfg.enc_bottom_m, generator,
        )
        total = total + soft_target_infonce(enc_phase.flatten(2), pairs, cfg.temperature)
    if cfg.layers in ("both", "decoder"):
        pairs = mine_pairs(
            to_patches(out_magnitude, cfg.dec_patch), cfg.dec_anchors, cfg.dec_positives, cfg.dec_top_k,
            cfg.dec_negatives, cfg.dec_bottom_m, generator,
        )
        total = total + soft_target_infonce(to_patches(out_phase, cfg.dec_patch), pairs, cfg.temperature)
    return total
