import math

import pytest
import torch

from ctcae_core import contrastive
from ctcae_core.config import ContrastiveConfig
from ctcae_core.contrastive import Pairs, contrastive_loss, mine_pairs, positions_at_ranks, soft_target_infonce, to_patches


def _angles_map(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 2, n) addresses on a quarter circle with growing spacing (no tied distances), and the
    float64 cosine-distance matrix (n, n) computed independently."""
    theta = (torch.arange(n, dtype=torch.float64) / n) ** 1.5 * math.pi / 2
    addr = torch.stack([torch.cos(theta), torch.sin(theta)]).unsqueeze(0)
    return addr.float(), 1 - torch.cos(theta[:, None] - theta[None, :])


def test_mining_picks_top_k_and_bottom_m_on_known_map():
    n, top_k, bottom_m = 64, 3, 10
    addr, dist = _angles_map(n)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        pairs = mine_pairs(addr, n_anchors=5, n_positives=2, top_k=top_k, n_negatives=4, bottom_m=bottom_m, generator=g)
        assert pairs.positives.shape == (1, 5, 2) and pairs.negatives.shape == (1, 5, 4)
        for a_i, a in enumerate(pairs.anchors.tolist()):
            order = [i for i in torch.argsort(dist[a]).tolist() if i != a]
            closest, farthest = set(order[:top_k]), set(order[-bottom_m:])
            pos, neg = set(pairs.positives[0, a_i].tolist()), set(pairs.negatives[0, a_i].tolist())
            assert a not in pos and pos <= closest, (a, pos, closest)
            assert neg <= farthest, (a, neg, farthest)
            assert len(pos) == 2 and len(neg) == 4  # drawn without replacement


def test_mining_exact_when_all_of_top_k_and_bottom_m_taken():
    n = 16
    addr, dist = _angles_map(n)
    pairs = mine_pairs(addr, n, 2, 2, 3, 3, torch.Generator().manual_seed(1))
    assert sorted(pairs.anchors.tolist()) == list(range(n))
    for a_i, a in enumerate(pairs.anchors.tolist()):
        order = [i for i in torch.argsort(dist[a]).tolist() if i != a]
        assert set(pairs.positives[0, a_i].tolist()) == set(order[:2])
        assert set(pairs.negatives[0, a_i].tolist()) == set(order[-3:])


def test_positions_at_ranks_equals_argsort_on_separated_distances():
    g = torch.Generator().manual_seed(0)
    dist = torch.randperm(2 * 300, generator=g)[:300].float().div(300).view(1, 1, 300).repeat(2, 4, 1)
    anchors = torch.tensor([3, 50, 7, 299])
    ref = torch.argsort(dist.scatter(2, anchors.view(1, -1, 1).expand(2, -1, 1), -1.0), dim=2)
    ranks = torch.tensor([0, 1, 2, 150, 298, 299])
    got = positions_at_ranks(dist.clone(), anchors, ranks)
    assert torch.equal(got, ref[:, :, ranks])
    assert torch.equal(got[:, :, 0], anchors.expand(2, -1))


def test_loss_lower_when_positives_share_the_anchor_phase():
    b, d, n = 2, 3, 12
    pairs = Pairs(torch.tensor([0, 1]), torch.tensor([[[2, 4, 5, 6], [3, 7, 8, 9]]] * b), 1)
    phase = torch.randn(b, d, n, generator=torch.Generator().manual_seed(0))
    aligned = phase.clone()
    aligned[:, :, 2], aligned[:, :, 3] = phase[:, :, 0], phase[:, :, 1]  # positives = anchors' phases
    opposed = phase.clone()
    opposed[:, :, 2], opposed[:, :, 3] = -phase[:, :, 0], -phase[:, :, 1]
    l_aligned = soft_target_infonce(aligned, pairs, 0.05)
    l_opposed = soft_target_infonce(opposed, pairs, 0.05)
    assert l_aligned < l_opposed
    # by hand for one anchor: -log softmax of the positive's logit
    rows = []  # by hand: -log softmax of the positive's logit, per image and anchor
    unit = torch.nn.functional.normalize
    for i in range(b):
        for anchor, others in ((0, (2, 4, 5, 6)), (1, (3, 7, 8, 9))):
            a = unit(aligned[i, :, anchor], dim=0)
            logits = torch.stack([a @ unit(aligned[i, :, j], dim=0) for j in others]) / 0.05
            rows.append(-torch.log_softmax(logits, 0)[0])
    assert torch.allclose(l_aligned, torch.stack(rows).mean(), atol=1e-5)


def test_soft_targets_share_mass_among_positives():
    pairs = Pairs(torch.tensor([0]), torch.tensor([[[1, 2, 3]]]), 2)
    feats = torch.tensor([[[1.0, 1.0, -1.0, 0.5], [0.2, 0.2, 0.3, 0.9]]])  # (1, 2, 4)
    unit = torch.nn.functional.normalize(feats[0], dim=0)
    logits = (unit[:, 0] @ unit[:, 1:]) / 0.1
    expect = -(torch.log_softmax(logits, 0)[:2]).mean()
    assert torch.allclose(soft_target_infonce(feats, pairs, 0.1), expect, atol=1e-5)


def _infonce_by_pair(features: torch.Tensor, pairs: Pairs, temperature: float) -> torch.Tensor:
    """The loss written pair by pair from its definition (docs/model.md), as a reference."""
    b = features.shape[0]
    rows = []
    for i in range(b):
        for a_i, anchor in enumerate(pairs.anchors.tolist()):
            a = features[i, :, anchor]
            cos = []
            for j in pairs.index[i, a_i].tolist():
                p = features[i, :, j]
                cos.append((p @ a) / (p.norm().clamp_min(1e-12) * a.norm().clamp_min(1e-12)))
            log_p = torch.log_softmax(torch.stack(cos) / temperature, 0)
            rows.append(-log_p[: pairs.n_positives].mean())
    return torch.stack(rows).mean()


@pytest.mark.parametrize("gram", [False, True], ids=["gathered-pairs", "all-similarities"])
@pytest.mark.parametrize("d", [3, 8])
def test_infonce_value_and_gradient_equal_the_pair_by_pair_definition(d, gram, monkeypatch):
    monkeypatch.setattr(contrastive, "GRAM_POSITIONS_PER_PAIR", 1000 if gram else 0)
    b, n, n_a, n_pos, n_neg = 3, 40, 6, 2, 9
    g = torch.Generator().manual_seed(d)
    features = torch.randn(b, d, n, generator=g, dtype=torch.float64)
    features[:, :, 5] = 0.0  # a zero phase vector (every channel's phase 0, as at the symmetric start)
    anchors = torch.tensor([5, 0, 7, 11, 20, 39])
    index = torch.stack([torch.stack([torch.randperm(n, generator=g)[: n_pos + n_neg] for _ in range(n_a)]) for _ in range(b)])
    index[0, 1, 0] = 5  # the zero vector as a positive, and as an anchor above
    pairs = Pairs(anchors, index, n_pos)
    f1 = features.clone().requires_grad_()
    f2 = features.clone().requires_grad_()
    loss, ref = soft_target_infonce(f1, pairs, 0.07), _infonce_by_pair(f2, pairs, 0.07)
    loss.backward()
    ref.backward()
    assert torch.isfinite(f1.grad).all()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-10, atol=1e-12)


def test_same_seed_same_pairs_and_loss():
    torch.manual_seed(0)
    mag, phase = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16) * 6 - 3
    emag, ephase = torch.rand(4, 8, 4, 4), torch.rand(4, 8, 4, 4)
    cfg = ContrastiveConfig(weight=1e-4, dec_anchors=20, dec_negatives=20, dec_bottom_m=100)
    l1 = contrastive_loss(emag, ephase, mag, phase, cfg, torch.Generator().manual_seed(5))
    l2 = contrastive_loss(emag, ephase, mag, phase, cfg, torch.Generator().manual_seed(5))
    l3 = contrastive_loss(emag, ephase, mag, phase, cfg, torch.Generator().manual_seed(6))
    assert l1.item() == l2.item() and l1.item() != l3.item()


def test_patches_and_layer_selection():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    p = to_patches(x, 2)
    assert p.shape == (2, 12, 4)
    assert set(p[0, :, 0].tolist()) == set(x[0, :, :2, :2].flatten().tolist())
    with pytest.raises(ValueError, match="patch size"):
        to_patches(torch.zeros(1, 3, 5, 5), 2)
    mag, phase = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    emag, ephase = torch.rand(2, 8, 2, 2), torch.rand(2, 8, 2, 2)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    small = dict(dec_anchors=4, dec_negatives=4, dec_bottom_m=8, dec_top_k=2, enc_bottom_m=2)
    enc = contrastive_loss(emag, ephase, mag, phase, ContrastiveConfig(layers="encoder", **small), g())
    dec = contrastive_loss(emag, ephase, mag, phase, ContrastiveConfig(layers="decoder", dec_patch=2, **small), g())
    assert enc > 0 and dec > 0 and enc.item() != dec.item()
