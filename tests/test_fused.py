"""The fused CPU kernels (ctcae_core/fused.py) against the ATen path they replace.

The kernels use glibc's vector sin/cos/hypot, so their float32 results may differ from torch's by
an ulp; what must not differ is what the symmetric start is sensitive to: arg psi near the real
line (which decides the 0-or-pi phase of a unit the ReLU switches off), the guard, |psi| = 0, and
bfloat16 rounding. The oracle tests (tests/test_oracle.py) run on the fused path by default.
"""
from __future__ import annotations

import math

import pytest
import torch

from ctcae_core import fused
from ctcae_core.config import ContrastiveConfig, ModelConfig
from ctcae_core.contrastive import contrastive_loss
from ctcae_core.layers import PHASE_EPS, _ComplexActivation, _guarded_im, _PolarToStacked
from ctcae_core.model import build_model
from ctcae_core.precision import precision_context

pytestmark = pytest.mark.skipif(fused.library() is None, reason="the fused kernels did not build here (see warning)")
ULP = 2.5e-7  # a float32 ulp at 1-2, a bit over


def _aten(monkeypatch, on: bool) -> None:
    monkeypatch.setenv("CTCAE_FUSED", "0" if on else "1")


def _stacked(shape, dtype, fmt, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn((3 * shape[0], *shape[1:]), generator=g)
    y[2 * shape[0]:] = y[2 * shape[0]:].abs()
    return y.to(dtype).contiguous(memory_format=fmt)


CASES = [  # (shape, threads, channels_last): a scalar tail, a split over two threads, a linear layer's (b, d)
    ((2, 5, 3, 7), 1, False),
    ((2, 5, 3, 7), 1, True),
    ((4, 32, 16, 16), 2, False),
    ((4, 32, 16, 16), 2, True),
    ((8, 4099), 2, False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,threads,channels_last", CASES)
def test_kernels_match_the_aten_path_forward_and_backward(dtype, channels_last, shape, threads, monkeypatch):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    m = torch.rand(shape, generator=g).contiguous(memory_format=fmt)
    phi = (6 * torch.rand(shape, generator=g) - 3).contiguous(memory_format=fmt)
    y = _stacked(shape, dtype, fmt, 2)
    g_m, g_phi = (torch.randn(shape, generator=g).contiguous(memory_format=fmt) for _ in range(2))
    results = {}
    for aten in (True, False):
        _aten(monkeypatch, aten)
        mm, pp, yy = (t.detach().clone().requires_grad_() for t in (m, phi, y))
        with precision_context("bf16" if dtype == torch.bfloat16 else "fp32", torch.device("cpu")):
            stacked = _PolarToStacked.apply(mm, pp)
        m_out, phi_out = _ComplexActivation.apply(yy)
        (m_out * g_m + phi_out * g_phi).sum().backward()
        g_st = torch.randn(stacked.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
        (stacked.float() * g_st.float()).sum().backward()
        results[aten] = (stacked, m_out, phi_out, yy.grad, mm.grad, pp.grad)
        assert stacked.dtype == dtype and yy.grad.dtype == dtype
        assert stacked.stride() == torch.empty((3 * shape[0], *shape[1:]), memory_format=fmt).stride()
        assert m_out.stride() == m.stride() and phi_out.stride() == m.stride()
    want, got = results[True], results[False]
    low = dtype == torch.bfloat16
    # bf16 planes: a float32 ulp can move the rounding across a bf16 step (1/128 relative)
    for name, w, o in zip(("stacked", "m_out", "phi_out", "grad y", "grad m", "grad phi"), want, got):
        w, o = w.detach().float(), o.detach().float()
        if low and name in ("stacked", "grad y"):
            assert float(((w - o).abs() > 0.0079 * w.abs() + 1e-30).float().mean()) == 0, name
            assert float((w != o).float().mean()) < 0.01, name
        elif low and name in ("grad m", "grad phi"):  # sums of bf16 gradients
            torch.testing.assert_close(o, w, rtol=2e-2, atol=2e-2, msg=name)
        else:
            torch.testing.assert_close(o, w, rtol=4 * ULP, atol=4 * ULP * float(w.abs().max()), msg=name)
    torch.set_num_threads(1)


def test_arg_psi_near_the_real_line_is_torchs_bit_for_bit():
    """The phases of the symmetric start: Im psi tiny, exactly 0 (guarded), +-0, or psi = 0."""
    g = torch.Generator().manual_seed(4)
    n = 1 << 16
    re = torch.randn(n, generator=g) * torch.logspace(-4, 1, n)
    im = torch.randn(n, generator=g) * 1e-6 * re.abs()
    im[::7] = 0.0
    im[1::7] = -0.0
    im[2::7] = PHASE_EPS
    im[3::7] = -PHASE_EPS
    re[4::97] = 0.0
    re[5::97] = -0.0
    im[4::97] = 0.0
    y = torch.stack([re, im, re.abs()])
    m_out, phi_out = (t[0] for t in fused.activation_forward(y))
    want = torch.atan2(_guarded_im(im), re)
    assert torch.equal(phi_out, want)
    assert torch.equal(torch.signbit(phi_out), torch.signbit(want))
    want_m = 0.5 * (torch.hypot(re, im) + re.abs())
    torch.testing.assert_close(m_out, want_m, rtol=2 * ULP, atol=0)  # |psi| to an ulp, and 0 exactly at psi = 0
    assert torch.equal(m_out == 0, want_m == 0) and bool((want_m == 0).any())
    # and sin of the phases the symmetric start produces (0, +-pi as float32, and a few ulps off)
    pi = torch.tensor(math.pi, dtype=torch.float32)
    phases = torch.cat([torch.zeros(1), pi.view(1), -pi.view(1), torch.nextafter(pi, torch.zeros(1)),
                        torch.tensor([1e-8, -1e-8, 2.5e-7])]).repeat(40)
    out = torch.empty(3, phases.numel())
    fused.polar_forward(torch.ones_like(phases), phases, out)
    assert torch.equal(out[1], torch.sin(phases)) and torch.equal(out[0], torch.cos(phases))


def test_bf16_rounding_is_torchs_ties_to_even_and_keeps_inf_and_nan():
    one = 1.0
    step = 2.0 ** -7  # bf16 spacing at 1
    m = torch.tensor([one + step / 2, one + 3 * step / 2, one + step / 2 + 2 ** -20, 3.0e38, float("inf"),
                      -float("inf"), 1e-40, -0.0, 0.0, 65504.0, float("nan")] * 3)
    phi = torch.zeros_like(m)
    out = torch.empty((3, m.numel()), dtype=torch.bfloat16)
    fused.polar_forward(m, phi, out)
    want = m.bfloat16()
    assert torch.equal(out[2].isnan(), want.isnan())
    keep = ~want.isnan()
    assert torch.equal(out[2][keep].view(torch.int16), want[keep].view(torch.int16))  # bits, signed zero too


def test_a_symmetric_start_step_matches_the_aten_path(monkeypatch):
    """A whole model at the paper's symmetric start, with the contrastive loss: the same loss, the
    same 0-or-pi phases of dead units, every gradient within what an ulp of input noise moves."""
    cfg = ModelConfig(enc_channels=(8, 8, 16, 16), enc_kernels=(3, 3, 3, 3), enc_strides=(1, 2, 1, 2), linear_dim=16)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    images[:, :, :8] = 0.0  # black background: psi = 0 exactly
    results = {}
    for aten in (True, False):
        _aten(monkeypatch, aten)
        torch.manual_seed(0)
        model = build_model(cfg, 32)
        out = model(images)
        con = contrastive_loss(out.enc_magnitude, out.enc_phase, out.out_magnitude, out.out_phase,
                               ContrastiveConfig(weight=1e-3), torch.Generator().manual_seed(0))
        loss = torch.nn.functional.mse_loss(out.recon, images) + 1e-3 * con
        loss.backward()
        results[aten] = (float(loss.detach()), out, {n: p.grad for n, p in model.named_parameters()})
    (l0, o0, g0), (l1, o1, g1) = results[True], results[False]
    assert l1 == pytest.approx(l0, rel=1e-5)
    dead = o0.out_magnitude == 0
    assert dead.any() and torch.equal(dead, o1.out_magnitude == 0)
    assert torch.equal(o0.out_phase[dead], o1.out_phase[dead])
    for name, want in g0.items():
        rel = float((g1[name] - want).norm() / want.norm().clamp_min(1e-30))
        bound = 5e-2 if name.endswith("magnitude_bias") and float(want.norm()) < 1e-5 else 2e-2
        assert rel < bound or float(want.norm()) < 1e-6, (name, rel)


def test_fused_off_or_unbuildable_falls_back_to_aten_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CTCAE_FUSED", "0")
    assert not fused.usable(torch.float32, torch.zeros(3))
    monkeypatch.setenv("CTCAE_FUSED", "1")
    assert fused.usable(torch.float32, torch.zeros(3))
    assert not fused.usable(torch.float64, torch.zeros(3))  # float64 (gradcheck) stays on ATen
    assert not fused.usable(torch.float32, torch.zeros(3), torch.zeros(4))  # shapes differ
    assert not fused.usable(torch.float32, torch.zeros(4, 4).t())  # not dense in a known layout
    fused.library.cache_clear()
    monkeypatch.setenv("CTCAE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    try:
        with pytest.warns(UserWarning, match="did not build"):
            assert fused.library() is None
        m, phi = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
        assert torch.equal(_PolarToStacked.apply(m, phi), torch.cat([m * torch.cos(phi), m * torch.sin(phi), m]))
    finally:
        fused.library.cache_clear()
    monkeypatch.delenv("CC")
    assert fused.library() is not None and list(tmp_path.glob("polar_kernels_*.so"))


MINING_CASES = [  # (b, d, n, anchors, top_k, bottom_m, threads): the decoder's RGB map, the encoder's map, patches
    (6, 3, 1024, 100, 5, 500, 2),
    (64, 256, 16, 4, 1, 2, 2),
    (3, 12, 256, 40, 5, 100, 1),
]


@pytest.mark.parametrize("b,d,n,n_anchors,top_k,bottom_m,threads", MINING_CASES)
def test_mining_keys_pick_the_aten_paths_pairs(b, d, n, n_anchors, top_k, bottom_m, threads, monkeypatch):
    """The C keys (distance, position bits, anchor first) pick the same pairs as the ATen path's
    baddbmm and bit arithmetic, on maps with the ties real magnitudes have (a flat background)."""
    from ctcae_core.contrastive import mine_pairs

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(n)
    addr = torch.rand(b, d, n, generator=g)
    addr[:, :, : n // 3] = 0.25  # a third of the positions share one address (a flat background)
    addr[0, :, 1] = 0.0  # a zero address: unit vector 0, distance 1 to everything
    picks = {}
    for aten in (True, False):
        _aten(monkeypatch, aten)
        picks[aten] = mine_pairs(addr, n_anchors, 1, top_k, min(bottom_m, 100), bottom_m,
                                 torch.Generator().manual_seed(7))
    assert torch.equal(picks[True].anchors, picks[False].anchors)
    assert torch.equal(picks[True].index, picks[False].index)


def test_mining_keys_values_and_out_checks():
    """The keys themselves: distance bits above the position bits, the anchor negative first."""
    unit = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]]), dim=1)  # (1, 2, 3)
    anchors = torch.tensor([2, 0])
    keys = fused.mining_keys(unit, anchors, bits=2)
    dist = 1 - (unit[0, :, anchors].T @ unit[0])  # (A, n)
    expect = (dist.clamp_min(0).view(torch.int32) & ~3) | torch.arange(3, dtype=torch.int32)
    expect[0, 2], expect[1, 0] = 2 - 4, 0 - 4
    assert torch.equal(keys[0], expect)
    with pytest.raises(ValueError, match="contiguous int32"):
        fused.mining_keys(unit, anchors, 2, out=torch.empty(1, 2, 3, dtype=torch.int64))


INFONCE_CASES = [  # (b, d, n, anchors, positives, negatives): the decoder's RGB output, a patch map, odd sizes
    (4, 3, 1024, 100, 1, 100),
    (3, 12, 256, 10, 2, 30),
    (5, 3, 37, 6, 3, 7),
]


@pytest.mark.parametrize("b,d,n,n_a,n_pos,n_neg", INFONCE_CASES)
def test_fused_infonce_equals_the_definition_and_the_aten_branch(b, d, n, n_a, n_pos, n_neg, monkeypatch):
    """The fused InfoNCE (logits, log-softmax and backward in C) against the ATen branch and the
    loss written pair by pair in float64, with a zero phase vector and an anchor among its own pairs;
    the same bits at 1 and 2 threads (a row, and in the backward an image, belongs to one thread)."""
    from ctcae_core import contrastive
    from ctcae_core.contrastive import Pairs, soft_target_infonce
    from test_contrastive import _infonce_by_pair

    g = torch.Generator().manual_seed(n)
    features = torch.randn(b, d, n, generator=g)
    features[:, :, 2] = 0.0  # a zero phase vector: unit vector 0, similarity 0
    anchors = torch.randperm(n, generator=g)[:n_a]
    index = torch.stack([torch.stack([torch.randperm(n, generator=g)[: n_pos + n_neg] for _ in range(n_a)])
                         for _ in range(b)])
    index[0, 0, n_pos] = anchors[0]  # the anchor as one of its own negatives
    index[1, 1, 0] = 2  # the zero vector as a positive
    pairs = Pairs(anchors, index, n_pos)
    monkeypatch.setattr(contrastive, "GRAM_POSITIONS_PER_PAIR", 0)  # the gathered-pairs branch at every n

    def run(aten: bool, threads: int = 1):
        _aten(monkeypatch, aten)
        torch.set_num_threads(threads)
        x = features.clone().requires_grad_()
        loss = soft_target_infonce(x, pairs, 0.05)
        (3.0 * loss).backward()  # an upstream gradient other than 1
        return loss.detach(), x.grad

    fused_1, fused_2, aten = run(False, 1), run(False, 2), run(True)
    x64 = features.clone().double().requires_grad_()
    ref = _infonce_by_pair(x64, pairs, 0.05)
    (3.0 * ref).backward()
    assert torch.equal(fused_1[0], fused_2[0]) and torch.equal(fused_1[1], fused_2[1])
    for loss, grad in (fused_1, aten):
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=2e-6, atol=0)
        # The zero vector's gradient is of order 1 / 1e-12 (unit_vectors' clamp): held to its own scale
        # apart, so that it does not set the tolerance for the others.
        for cols in (torch.arange(n) != 2, torch.arange(n) == 2):
            ref_grad = x64.grad[:, :, cols]
            torch.testing.assert_close(grad[:, :, cols].double(), ref_grad, rtol=1e-4,
                                       atol=1e-5 * ref_grad.abs().max().item())


def test_fused_infonce_is_used_on_cpu_float32_only(monkeypatch):
    from ctcae_core import contrastive

    calls = []
    monkeypatch.setattr(contrastive._FusedInfoNCE, "apply", lambda *a: calls.append(a[0].dtype) or a[0].sum())
    monkeypatch.setattr(contrastive, "GRAM_POSITIONS_PER_PAIR", 0)
    pairs = contrastive.Pairs(torch.tensor([0, 1]), torch.tensor([[[2, 3, 4], [3, 4, 5]]]), 1)
    for dtype in (torch.float32, torch.float64):
        contrastive.soft_target_infonce(torch.randn(1, 3, 8, dtype=dtype), pairs, 0.1)
    _aten(monkeypatch, True)
    contrastive.soft_target_infonce(torch.randn(1, 3, 8), pairs, 0.1)
    assert calls == [torch.float32]
