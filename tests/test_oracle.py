"""Parity of ``ctcae_core``'s model with the paper's equations written plainly (docs/model.md).

The oracle below is the model as the paper's code computes it, from the equations alone: complex64
tensors and autograd, no custom autograd Functions, no sub-pixel trick, nearest upsampling of the
real and imaginary parts, the angle guarded on a copy (|Im psi| < 1e-8 set to +1e-8). It is loaded
with the same weights as ``ctcae_core``'s model; loss and every parameter gradient must agree.

At the symmetric start (input phase 0) every phase sits at 0 or pi and the phase-bias gradients
are rounding-level (1e-10..1e-7): there only their norms are compared, within 1.25x for the first
encoder layers and 3x for the deeper ones.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from ctcae_core.config import ContrastiveConfig, ModelConfig
from ctcae_core.contrastive import contrastive_loss
from ctcae_core.layers import same_padding
from ctcae_core.model import build_model

EPS = 1e-8
ROUNDING = 1e-5  # gradient norms below this times the largest one are float32 rounding
SMALL5 = dict(enc_channels=(8, 8, 16, 16, 16), enc_strides=(2, 1, 2, 1, 2), enc_kernels=(3,) * 5, linear_dim=16)
SMALL7 = dict(enc_channels=(8, 8, 16, 16, 16, 16, 16), enc_strides=(2, 1, 2, 1, 2, 1, 2), enc_kernels=(3,) * 7, linear_dim=16)
VARIANTS = {  # decoder, out_conv, out_sigmoid, contrastive
    "cae": ("transpose", True, True, False),
    "caepp": ("upsample", False, False, False),
    "ctcae": ("upsample", False, False, True),
}
# Contrastive pairs at tiny maps: 4x4 encoder map (16 positions), 32x32 decoder map.
CC = ContrastiveConfig(weight=1e-4, temperature=0.05, enc_anchors=4, enc_top_k=1, enc_negatives=2, enc_bottom_m=2,
                       dec_anchors=20, dec_top_k=5, dec_negatives=20, dec_bottom_m=100)


# ------------------------------------------------------------------------------------ the oracle
def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    ph, pw = same_padding(x.shape[-2], k, s), same_padding(x.shape[-1], k, s)
    return F.pad(x, (pw[0], pw[1], ph[0], ph[1]))


def oracle_layer(f, z: torch.Tensor, b_m: torch.Tensor, b_phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """psi = f(Re z) + i f(Im z); chi = f(|z|); m = 0.5 (|psi| + b_m) + 0.5 (chi + b_m); phi = arg psi + b_phi."""
    psi = torch.complex(f(z.real), f(z.imag))
    chi = f(z.abs())
    guarded = torch.complex(psi.real, torch.where(psi.imag.abs() < EPS, torch.full_like(psi.imag, EPS), psi.imag))
    return 0.5 * (psi.abs() + b_m) + 0.5 * (chi + b_m), guarded.angle() + b_phi


def oracle_forward(p: dict[str, torch.Tensor], cfg: ModelConfig, images: torch.Tensor, phase: torch.Tensor, training: bool):
    """The paper's model on plain complex tensors. p: parameters and buffers by ctcae_core's names."""

    def block(prefix: str, f, z, norm: str):
        m, phi = oracle_layer(f, z, p[f"{prefix}.layer.magnitude_bias"], p[f"{prefix}.layer.phase_bias"])
        if norm == "bn":
            m = F.batch_norm(m, p[f"{prefix}.norm.running_mean"], p[f"{prefix}.norm.running_var"],
                             p[f"{prefix}.norm.weight"], p[f"{prefix}.norm.bias"], training, 0.1, 1e-5)
        else:
            m = F.layer_norm(m, m.shape[-1:], p[f"{prefix}.norm.weight"], p[f"{prefix}.norm.bias"], 1e-5)
        m = F.relu(m)
        return m * torch.exp(1j * phi)

    def conv(w, k, s):
        return lambda x: F.conv2d(_same_pad(x, k, s), w, stride=s)

    b = images.shape[0]
    z = images * torch.exp(1j * phase)
    for i, (k, s) in enumerate(zip(cfg.enc_kernels, cfg.enc_strides)):
        z = block(f"encoder.{i}", conv(p[f"encoder.{i}.layer.conv.weight"], k, s), z, "bn")
    enc = z
    shape = z.shape[1:]
    z = block("enc_linear", lambda x: F.linear(x, p["enc_linear.layer.fc.weight"]), z.reshape(b, -1), "ln")
    z = block("dec_linear", lambda x: F.linear(x, p["dec_linear.layer.fc.weight"]), z, "ln").reshape(b, *shape)
    for i, (k, s) in enumerate(zip(reversed(cfg.enc_kernels), reversed(cfg.enc_strides))):
        w = p[f"decoder.{i}.layer.conv.weight"]
        if s == 1:
            f = conv(w, k, 1)
        elif cfg.decoder == "upsample":
            f = lambda x, w=w, k=k: F.conv2d(_same_pad(F.interpolate(x, scale_factor=2, mode="nearest"), k, 1), w)  # noqa: E731
        else:
            f = lambda x, w=w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)  # noqa: E731
        z = block(f"decoder.{i}", f, z, "bn")
    z = z[..., : images.shape[-2], : images.shape[-1]]
    recon = z.abs()
    if cfg.out_conv:
        recon = F.conv2d(recon, p["out_conv.weight"], p["out_conv.bias"])
    if cfg.out_sigmoid:
        recon = torch.sigmoid(recon)
    return recon, z, enc


# ------------------------------------------------------------------------------------ harness
def _images(n: int, size: int, seed: int) -> torch.Tensor:
    """Coloured rectangles on black, as the datasets: exact zeros exercise the guard and |psi| = 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, size, size)
    for i in range(n):
        for _ in range(3):
            y0, x0 = torch.randint(0, size - 6, (2,), generator=g).tolist()
            hh, ww = torch.randint(3, 9, (2,), generator=g).tolist()
            x[i, :, y0 : y0 + hh, x0 : x0 + ww] = torch.rand(3, 1, 1, generator=g) * 0.8 + 0.2
    return x


def _model_cfg(arch: dict, variant: str, phase_init: str = "zero") -> ModelConfig:
    decoder, out_conv, out_sigmoid, _ = VARIANTS[variant]
    return ModelConfig(decoder=decoder, out_conv=out_conv, out_sigmoid=out_sigmoid, phase_init=phase_init, **arch)


def _loss(recon, images, enc_m, enc_phi, out_m, out_phi, contrastive: bool, seed: int, addresses=None):
    loss = F.mse_loss(recon, images)
    if contrastive:
        # Pairs are mined on magnitudes, which carry no gradient: both sides mine on the same
        # (ctcae_core's) magnitudes so that rounding-level ties cannot pick different pairs.
        em, om = addresses if addresses is not None else (enc_m, out_m)
        loss = loss + CC.weight * contrastive_loss(em.detach(), enc_phi, om.detach(), out_phi, CC, torch.Generator().manual_seed(seed))
    return loss


def _grads_both(model, cfg: ModelConfig, images: torch.Tensor, contrastive: bool, training: bool, seed: int = 0):
    """Loss and gradients of ctcae_core's model and of the oracle on the same weights and input."""
    model.train(training)
    phase = torch.zeros_like(images) if cfg.phase_init == "zero" else torch.rand(images.shape, generator=torch.Generator().manual_seed(seed))
    params = {n: t.detach().clone().requires_grad_(t.is_floating_point() and n in dict(model.named_parameters()))
              for n, t in model.state_dict().items()}
    model.zero_grad(set_to_none=True)
    out = model(images, generator=torch.Generator().manual_seed(seed))
    loss = _loss(out.recon, images, out.enc_magnitude, out.enc_phase, out.out_magnitude, out.out_phase, contrastive, seed)
    loss.backward()
    ours = {n: q.grad.detach().clone() if q.grad is not None else torch.zeros_like(q) for n, q in model.named_parameters()}

    recon, z, enc = oracle_forward(params, cfg, images, phase, training)
    o_loss = _loss(recon, images, enc.abs(), enc.angle(), z.abs(), z.angle(), contrastive, seed,
                   addresses=(out.enc_magnitude, out.out_magnitude))
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(o_loss, [params[n] for n in names], allow_unused=True)
    theirs = {n: g if g is not None else torch.zeros_like(params[n]) for n, g in zip(names, grads)}
    return float(loss.detach()), float(o_loss.detach()), ours, theirs, out, (recon, z)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _assert_parity(ours, theirs, *, symmetric_start: bool, n_enc: int, rtol: float = 2e-3):
    """Every gradient within rtol (relative norm of the difference); at the symmetric start the
    phase biases by norm ratio only: first encoder layers 1.25x, deeper ones 3x."""
    first = {f"encoder.{i}.layer.phase_bias" for i in range(2)}
    rounding = ROUNDING * max(float(g.norm()) for n, g in theirs.items() if not n.endswith("phase_bias"))
    for name, want in theirs.items():
        got = ours[name]
        assert torch.isfinite(got).all(), name
        if symmetric_start and name.endswith("phase_bias"):
            gn, wn = float(got.norm()), float(want.norm())
            if wn < 1e-12:
                assert gn < 1e-12, (name, gn)
                continue
            bound = 1.25 if name in first else 3.0
            assert 1 / bound <= gn / wn <= bound, (name, gn, wn)
            continue
        if float(want.norm()) < rounding:
            # zero in exact arithmetic (a per-channel constant before train-mode BatchNorm, the
            # last phase bias without a loss on phases): both must stay at rounding level
            assert float(got.norm()) < rounding, (name, float(got.norm()))
            continue
        assert _rel(got, want) < rtol, (name, _rel(got, want), float(want.norm()))


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("decoder,out_conv,out_sigmoid,contrastive",
                         list(itertools.product(("upsample", "transpose"), (False, True), (False, True), (False, True))))
def test_oracle_parity_at_init_every_toggle(decoder, out_conv, out_sigmoid, contrastive):
    torch.manual_seed(0)
    cfg = ModelConfig(decoder=decoder, out_conv=out_conv, out_sigmoid=out_sigmoid, **SMALL5)
    model = build_model(cfg, 32)
    images = _images(8, 32, seed=1)
    loss, o_loss, ours, theirs, out, (recon, z) = _grads_both(model, cfg, images, contrastive, training=True)
    assert loss == pytest.approx(o_loss, rel=1e-5)
    torch.testing.assert_close(out.recon, recon, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out.out_magnitude, z.abs(), rtol=1e-3, atol=1e-4)
    _assert_parity(ours, theirs, symmetric_start=True, n_enc=5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("size,arch", [(64, SMALL7), (35, SMALL5)])
def test_oracle_parity_at_64_and_an_odd_size(variant, size, arch):
    torch.manual_seed(1)
    cfg = _model_cfg(arch, variant)
    model = build_model(cfg, size)
    images = _images(4, size, seed=2)
    loss, o_loss, ours, theirs, out, (recon, _) = _grads_both(model, cfg, images, VARIANTS[variant][3], training=True)
    assert out.recon.shape == recon.shape == images.shape
    assert loss == pytest.approx(o_loss, rel=1e-5)
    _assert_parity(ours, theirs, symmetric_start=True, n_enc=len(arch["enc_channels"]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_oracle_parity_in_eval_mode_and_random_input_phase(variant):
    torch.manual_seed(2)
    cfg = _model_cfg(SMALL5, variant, phase_init="random")
    model = build_model(cfg, 32)
    images = _images(8, 32, seed=3)
    model.train()
    with torch.no_grad():  # running statistics away from their (0, 1) start
        for _ in range(3):
            model(images, generator=torch.Generator().manual_seed(9))
    loss, o_loss, ours, theirs, _, _ = _grads_both(model, cfg, images, VARIANTS[variant][3], training=False, seed=4)
    assert loss == pytest.approx(o_loss, rel=1e-5)
    # off the symmetric start (random input phases) every gradient is well above rounding
    _assert_parity(ours, theirs, symmetric_start=False, n_enc=5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_oracle_parity_after_200_training_steps(variant):
    torch.manual_seed(3)
    cfg = _model_cfg(SMALL5, variant)
    model = build_model(cfg, 32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = _images(64, 32, seed=5)
    gen = torch.Generator().manual_seed(6)
    contrastive = VARIANTS[variant][3]
    for step in range(200):
        x = data[torch.randperm(64, generator=gen)[:8]]
        out = model(x)
        loss = _loss(out.recon, x, out.enc_magnitude, out.enc_phase, out.out_magnitude, out.out_phase, contrastive, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # After training the phases have left 0 and pi: every gradient, the phase biases included.
    for training in (True, False):
        loss, o_loss, ours, theirs, _, _ = _grads_both(model, cfg, data[:8], contrastive, training=training, seed=7)
        assert loss == pytest.approx(o_loss, rel=1e-4)
        _assert_parity(ours, theirs, symmetric_start=False, n_enc=5, rtol=1e-2)


def test_oracle_layer_at_zero_psi_and_guarded_entries():
    """|psi| = 0 and |Im psi| < eps: no NaN, and the same gradients as the plain complex layer."""
    from ctcae_core.layers import ComplexConv2d

    torch.manual_seed(4)
    conv = ComplexConv2d(3, 4, 3, 1)
    m = torch.zeros(2, 3, 6, 6)
    m[:, :, 2:4, 2:4] = torch.rand(2, 3, 2, 2) + 0.5  # black elsewhere: psi = 0 exactly there
    phi = torch.zeros_like(m)
    m.requires_grad_(), phi.requires_grad_()
    got_m, got_phi = conv(m, phi)
    g_m, g_phi = torch.randn_like(got_m), torch.randn_like(got_phi)
    ours = torch.autograd.grad((got_m * g_m).sum() + (got_phi * g_phi).sum(), [m, phi, conv.conv.weight, conv.phase_bias])

    w = conv.conv.weight.detach().clone().requires_grad_()
    b_m, b_phi = conv.magnitude_bias.detach().clone(), conv.phase_bias.detach().clone().requires_grad_()
    m2, phi2 = m.detach().clone().requires_grad_(), phi.detach().clone().requires_grad_()
    want_m, want_phi = oracle_layer(lambda x: F.conv2d(_same_pad(x, 3, 1), w), m2 * torch.exp(1j * phi2), b_m, b_phi)
    theirs = torch.autograd.grad((want_m * g_m).sum() + (want_phi * g_phi).sum(), [m2, phi2, w, b_phi])
    torch.testing.assert_close(got_m, want_m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_phi, want_phi, rtol=1e-5, atol=1e-6)
    assert got_phi[0, :, 0, 0].sub(math.pi / 2).abs().max() < 1e-6  # atan2(+eps, 0) on black
    for a, b in zip(ours, theirs):
        assert torch.isfinite(a).all()
        assert _rel(a, b) < 1e-4
