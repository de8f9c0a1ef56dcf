import itertools
import math

import numpy as np
import pytest
import torch

from ctcae_core.config import ContrastiveConfig, ModelConfig
from ctcae_core.contrastive import contrastive_loss
from ctcae_core.layers import ComplexConv2d, ComplexLinear, same_padding, wrap_phase
from ctcae_core.model import build_model

TINY = dict(enc_channels=(4, 4, 8, 8, 8), enc_strides=(2, 1, 2, 1, 2), enc_kernels=(3,) * 5, linear_dim=8)
LAST_PHASE_BIAS = "decoder.4.layer.phase_bias"  # only the output phases see it


def _reference_layer(re, im, m_out_linear, mag_bias, phase_bias):
    """Hand-written complex layer on already-applied real maps (numpy)."""
    psi = re + 1j * im
    m = 0.5 * (np.abs(psi) + mag_bias) + 0.5 * (m_out_linear + mag_bias)
    return m, np.angle(psi) + phase_bias


def test_complex_linear_matches_hand_computed_reference():
    torch.manual_seed(0)
    layer = ComplexLinear(3, 2)
    with torch.no_grad():
        layer.phase_bias.copy_(torch.tensor([[0.1, -0.2]]))
    m = torch.rand(2, 3) + 0.1
    phi = (torch.rand(2, 3) - 0.5) * 6
    got_m, got_phi = layer(m, phi)
    w = layer.fc.weight.detach().numpy().astype(np.float64)
    z = m.numpy() * np.exp(1j * phi.numpy())
    re, im, chi = z.real @ w.T, z.imag @ w.T, np.abs(z) @ w.T
    ref_m, ref_phi = _reference_layer(re, im, chi, layer.magnitude_bias.detach().numpy(), layer.phase_bias.detach().numpy())
    np.testing.assert_allclose(got_m.detach().numpy(), ref_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_phi.detach().numpy(), ref_phi, rtol=1e-5, atol=1e-6)


def test_complex_conv_stride2_tf_same_padding_matches_loops():
    torch.manual_seed(1)
    conv = ComplexConv2d(2, 3, kernel_size=3, stride=2)
    m = torch.rand(1, 2, 6, 6) + 0.1
    phi = (torch.rand(1, 2, 6, 6) - 0.5) * 6
    got_m, got_phi = conv(m, phi)
    assert got_m.shape == (1, 3, 3, 3)
    assert same_padding(6, 3, 2) == (0, 1)  # TF puts the odd pixel at the bottom/right
    z = np.pad((m * torch.exp(1j * phi)).numpy()[0], ((0, 0), (0, 1), (0, 1)))  # (2, 7, 7)
    w = conv.conv.weight.detach().numpy().astype(np.float64)  # (3, 2, 3, 3)
    re = np.zeros((3, 3, 3)); im = np.zeros((3, 3, 3)); chi = np.zeros((3, 3, 3))
    for o, y, x in itertools.product(range(3), range(3), range(3)):
        patch = z[:, 2 * y : 2 * y + 3, 2 * x : 2 * x + 3]
        re[o, y, x] = (w[o] * patch.real).sum()
        im[o, y, x] = (w[o] * patch.imag).sum()
        chi[o, y, x] = (w[o] * np.abs(patch)).sum()
    ref_m, ref_phi = _reference_layer(re, im, chi, conv.magnitude_bias.detach().numpy()[0], 0.0)
    np.testing.assert_allclose(got_m.detach().numpy()[0], ref_m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_phi.detach().numpy()[0], ref_phi, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [7, 4099])  # a vector kernel's scalar tail alone, and its body
def test_wrap_phase_equals_torch_complex_angle_bit_for_bit_at_dead_units(n):
    """Where m == 0 the phase is angle() of the complex zero m e^{i phi} as torch's complex ops
    give it (0, +-0 or pi by the signs of m, cos phi and sin phi), signed zeros included; where
    m > 0 it is phi wrapped to (-pi, pi], phi itself when already inside."""
    g = torch.Generator().manual_seed(n)
    special = torch.tensor([0.0, -0.0, math.pi, -math.pi, math.pi / 2, -math.pi / 2, 1e-8, -1e-8, 1e-30, -1e-30,
                            3 * math.pi, -3 * math.pi, 100.0, -100.0, float("nan")])
    phi = torch.cat([special, (torch.rand(n, generator=g) - 0.5) * 24])
    for mag in (0.0, -0.0, float("nan")):
        m = torch.full_like(phi, mag)
        got, want = wrap_phase(m, phi), (m * torch.exp(1j * phi)).angle()
        same = (got == want) & (torch.signbit(got) == torch.signbit(want)) | (got.isnan() & want.isnan())
        assert bool(same.all()), (mag, phi[~same][:5], got[~same][:5], want[~same][:5])
    dead = wrap_phase(torch.zeros_like(phi), phi)[~phi.isnan()]
    assert set(dead.abs().unique().tolist()) == {0.0, float(torch.tensor(math.pi))}
    m = torch.rand(phi.shape, generator=g) + 0.1
    got = wrap_phase(m, phi)
    inside = (phi > -math.pi) & (phi <= math.pi)
    assert torch.equal(got[inside], phi[inside])
    outside = ~inside & ~phi.isnan()
    gap = torch.remainder(got[outside] - phi[outside] + math.pi, 2 * math.pi) - math.pi  # the same angle
    assert float(gap.abs().max()) < 1e-5
    assert bool((got[outside].abs() <= math.pi).all())  # float32 pi rounds up, so -pi can stay -pi


def test_wrap_phase_passes_gradient_to_live_units_only():
    m = torch.tensor([0.5, 0.0, 2.0, -0.0])
    phi = torch.tensor([1.0, 2.0, 4.0, -1.0], requires_grad=True)
    wrap_phase(m, phi).sum().backward()
    assert phi.grad.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_magnitude_bias_init_range_and_zero_phase_bias():
    conv = ComplexConv2d(16, 32, 3)
    bound = 1 / math.sqrt(16 * 9)
    assert conv.magnitude_bias.abs().max() <= bound and conv.magnitude_bias.abs().max() > bound / 2
    assert torch.count_nonzero(conv.phase_bias) == 0


@pytest.mark.parametrize("decoder,out_conv,out_sigmoid,contrastive", list(itertools.product(("upsample", "transpose"), (False, True), (False, True), (False, True))))
def test_contract_every_variant(decoder, out_conv, out_sigmoid, contrastive):
    torch.manual_seed(0)
    cfg = ModelConfig(decoder=decoder, out_conv=out_conv, out_sigmoid=out_sigmoid, **TINY)
    model = build_model(cfg, 32)
    x = torch.rand(3, 3, 32, 32)
    out = model(x)
    assert out.recon.shape == out.out_magnitude.shape == out.out_phase.shape == (3, 3, 32, 32)
    assert out.enc_magnitude.shape == (3, 8, 4, 4)
    for t in out:
        assert torch.isfinite(t).all()
    assert out.out_phase.min() > -math.pi and out.out_phase.max() <= math.pi  # as torch.angle
    if out_sigmoid:
        assert (out.recon >= 0).all() and (out.recon <= 1).all()
    loss = torch.nn.functional.mse_loss(out.recon, x)
    if contrastive:
        cc = ContrastiveConfig(weight=1e-4)
        loss = loss + 1e-4 * contrastive_loss(out.enc_magnitude, out.enc_phase, out.out_magnitude, out.out_phase, cc, torch.Generator().manual_seed(0))
    loss.backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # Without a loss on the output phases, the last layer's phase bias cannot get a gradient.
    assert no_grad == (set() if contrastive else {LAST_PHASE_BIAS})


@pytest.mark.parametrize("resolution,strides", [(32, (2, 1, 2, 1, 2)), (64, (2, 1, 2, 1, 2, 1, 2)), (96, (2, 1, 2, 1, 2, 1, 2))])
@pytest.mark.parametrize("decoder", ["upsample", "transpose"])
def test_decoder_shapes_at_paper_resolutions(resolution, strides, decoder):
    n = len(strides)
    cfg = ModelConfig(enc_channels=(4,) * n, enc_strides=strides, enc_kernels=(3,) * n, linear_dim=8, decoder=decoder)
    model = build_model(cfg, resolution)
    out = model(torch.rand(2, 3, resolution, resolution))
    assert out.recon.shape == (2, 3, resolution, resolution)
    assert out.enc_magnitude.shape[-1] == resolution // 2 ** strides.count(2)


@pytest.mark.parametrize("batch", [1, 5])
def test_any_batch_size(batch):
    model = build_model(ModelConfig(**TINY), 32)
    out = model(torch.rand(batch, 3, 32, 32))
    assert out.recon.shape[0] == batch and torch.isfinite(out.recon).all()


def test_zero_input_phase_and_background_pixels_keep_gradients_finite():
    # Black images: every psi of the first layer is exactly 0 -> the arg() guard must hold.
    model = build_model(ModelConfig(**TINY), 32)
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, 8:16, 8:16] = 1.0
    out = model(x)
    torch.nn.functional.mse_loss(out.recon, x).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_upsample_conv_without_forming_the_upsampled_map_equals_explicit_upsampling():
    torch.manual_seed(3)
    conv = ComplexConv2d(5, 4, 3, 1, upsample=True)
    x = torch.randn(3, 5, 6, 7)
    explicit = conv._f(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(conv._f_upsampled(x), explicit, rtol=1e-5, atol=1e-5)
    m, phi = torch.rand(2, 5, 4, 4), torch.rand(2, 5, 4, 4) * 6 - 3
    up = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    ref = ComplexConv2d(5, 4, 3, 1)
    ref.load_state_dict(conv.state_dict())
    for got, want in zip(conv(m, phi), ref(up(m), up(phi))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_complex_layer_autograd_functions_pass_gradcheck():
    from ctcae_core.layers import _ComplexActivation, _PolarToStacked

    torch.manual_seed(0)
    m = (torch.rand(2, 3, 2, 2, dtype=torch.float64) + 0.1).requires_grad_()
    phi = ((torch.rand(2, 3, 2, 2, dtype=torch.float64) - 0.5) * 6).requires_grad_()
    assert torch.autograd.gradcheck(_PolarToStacked.apply, (m, phi))
    out = torch.randn(6, 3, 2, 2, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(_ComplexActivation.apply, (out,))
    # where Im psi is guarded (exactly 0, as on black backgrounds), its gradient is 0 and finite
    out = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    out[2:4] = 0.0
    out.requires_grad_()
    m_out, phi_out = _ComplexActivation.apply(out)
    (m_out.sum() + phi_out.sum()).backward()
    assert torch.isfinite(out.grad).all() and torch.count_nonzero(out.grad[2:4]) == 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_sub_pixel_placement_passes_gradcheck_and_matches_explicit_upsampling_gradients(channels_last):
    from ctcae_core.layers import _SubPixels

    torch.manual_seed(4)
    y = torch.randn(2, 4 * 3, 4, 5, dtype=torch.float64)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(lambda t: _SubPixels.apply(t, 3, channels_last), (y.requires_grad_(),))
    conv = ComplexConv2d(5, 4, 3, 1, upsample=True)
    x = torch.randn(3, 5, 6, 7)
    x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
    g = torch.randn(3, 4, 12, 14)
    conv._f_upsampled(x).backward(g)
    got_x, got_w = x.grad.clone(), conv.conv.weight.grad.clone()
    x.grad, conv.conv.weight.grad = None, None
    conv._f(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")).backward(g)
    torch.testing.assert_close(got_x, x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_w, conv.conv.weight.grad, rtol=1e-4, atol=1e-4)


def test_symmetry_breaking_options_default_to_the_paper_and_act_only_where_asked():
    from ctcae_core.config import ConfigError

    torch.manual_seed(0)
    paper = build_model(ModelConfig(**TINY), 32)
    torch.manual_seed(0)
    biased = build_model(ModelConfig(phase_bias_init=1.5, **TINY), 32)
    # the weights are drawn first, so the paper's setting is unchanged by the option's existence
    assert torch.equal(paper.encoder[0].layer.conv.weight, biased.encoder[0].layer.conv.weight)
    biases = torch.cat([p.flatten() for n, p in biased.named_parameters() if n.endswith("phase_bias")])
    assert biases.abs().max() <= 1.5 and biases.std() > 0.5
    assert all(torch.count_nonzero(p) == 0 for n, p in paper.named_parameters() if n.endswith("phase_bias"))

    noisy = build_model(ModelConfig(phase_noise=0.3, **TINY), 32)
    x = torch.rand(2, 3, 32, 32)
    noisy.eval()
    a, b = noisy(x), noisy(x)
    assert torch.equal(a.out_phase, b.out_phase)  # no noise at evaluation
    noisy.train()
    c = noisy(x, generator=torch.Generator().manual_seed(1))
    d = noisy(x, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(c.out_phase, d.out_phase)
    for bad in (float("nan"), -0.1, 4.0):
        with pytest.raises(ConfigError, match="phase_noise"):
            ModelConfig(phase_noise=bad, **TINY)
        with pytest.raises(ConfigError, match="phase_bias_init"):
            ModelConfig(phase_bias_init=bad, **TINY)
