"""train.precision: low-precision linear maps with the phase arithmetic kept in fp32 (issue 13).

bf16 is tested on the CPU (torch's CPU autocast); fp16 needs CUDA and is refused elsewhere. The
stated tolerance, on the paper's layer structure at small widths at initialisation: the loss within
1% of fp32 (measured 0.01-0.35%). The gradient does NOT keep fp32's direction closely (cosine of
the weight gradients 0.69 at the paper's symmetric start, 0.88 with phase_bias_init=pi): at the
start the phase terms are rounding-level (docs/model.md), so bf16 changes the early dynamics and
is not for runs meant to reproduce the paper's numbers; the test only pins cosine >= 0.6.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from ctcae_core.config import ConfigError, ContrastiveConfig, ExperimentConfig, ModelConfig, TrainConfig
from ctcae_core.contrastive import contrastive_loss
from ctcae_core.model import build_model
from ctcae_core.precision import precision_context

SMALL = ModelConfig(enc_channels=(8, 8, 16, 16, 16), linear_dim=16, decoder="upsample", out_conv=False, out_sigmoid=False)
CC = ContrastiveConfig(weight=1e-4, enc_anchors=4, enc_top_k=1, enc_negatives=2, enc_bottom_m=2,
                       dec_anchors=20, dec_top_k=5, dec_negatives=20, dec_bottom_m=100)


def _loss_and_grad(precision: str, images: torch.Tensor, cfg: ModelConfig) -> tuple[float, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(cfg, 32)
    with precision_context(precision, torch.device("cpu")):
        out = model(images)
    loss = F.mse_loss(out.recon.float(), images)
    loss = loss + CC.weight * contrastive_loss(out.enc_magnitude, out.enc_phase, out.out_magnitude, out.out_phase,
                                               CC, torch.Generator().manual_seed(0))
    loss.backward()
    grad = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if n.endswith("weight")])
    return float(loss), grad, out.out_phase


@pytest.mark.slow  # bf16 convs are emulated on AVX2 CPUs (tens of times slower than fp32)
@pytest.mark.parametrize("phase_bias_init", [0.0, 3.14])
def test_bf16_loss_within_stated_tolerance_phases_fp32(phase_bias_init):
    cfg = dataclasses.replace(SMALL, phase_bias_init=phase_bias_init)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss32, g32, phase32 = _loss_and_grad("fp32", images, cfg)
    loss16, g16, phase16 = _loss_and_grad("bf16", images, cfg)
    assert phase32.dtype == torch.float32 and phase16.dtype == torch.float32  # phase arithmetic in fp32
    assert abs(loss16 - loss32) <= 0.01 * abs(loss32)
    assert float(F.cosine_similarity(g16, g32, dim=0)) >= 0.6
    assert loss16 != loss32  # the option did change the arithmetic: the test compares two things


def test_fp32_is_the_default_and_bit_identical_to_no_autocast():
    assert TrainConfig().precision == "fp32"
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = build_model(SMALL, 32)
    with precision_context("fp32", torch.device("cpu")):
        a = model(images).recon
    assert torch.equal(a, model(images).recon)


def test_precision_values_checked():
    with pytest.raises(ConfigError, match="train.precision"):
        ExperimentConfig.from_dict({"train": {"precision": "fp8"}})
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        precision_context("fp16", torch.device("cpu"))


class _Scenes:
    """A dataset as ``evaluate`` reads it: random images and three-segment label maps."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.images = torch.rand(n, 3, 32, 32, generator=g)
        self.labels = torch.randint(0, 3, (n, 32, 32), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": self.images[idx], "labels": self.labels[idx], "n_objects": torch.full((len(idx),), 2)}


def test_evaluate_precision_autocasts_the_forward_and_keeps_the_metrics_fp32():
    from ctcae_core.evaluate import evaluate

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(SMALL, phase_bias_init=3.14), 32)
    scenes = _Scenes(4)
    fp32 = evaluate(model, scenes, batch_size=2)
    assert evaluate(model, scenes, batch_size=2, precision="fp32") == fp32  # fp32: the default, unchanged
    bf16 = evaluate(model, scenes, batch_size=2, precision="bf16")
    assert bf16["mse"] != fp32["mse"]  # the forward did run under autocast
    assert abs(bf16["mse"] - fp32["mse"]) <= 0.01 * fp32["mse"]
    assert {k: type(v) for k, v in bf16.items()} == {k: type(v) for k, v in fp32.items()} and bf16["n_images"] == 4
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        evaluate(model, scenes, precision="fp16")
    with pytest.raises(ConfigError, match="'fp8'"):
        evaluate(model, scenes, precision="fp8")


def test_evaluate_without_the_colour_control_leaves_every_other_metric_unchanged():
    from ctcae_core.evaluate import evaluate

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(SMALL, phase_bias_init=3.14), 32)
    scenes = _Scenes(4)
    full = evaluate(model, scenes, batch_size=2)
    assert math.isfinite(full["ari_fg_colour"])  # measured by default
    lean = evaluate(model, scenes, batch_size=2, colour=False)  # train.eval_colour: false
    assert "ari_fg_colour" not in lean and lean == {k: v for k, v in full.items() if k != "ari_fg_colour"}


def _block_layouts(model: torch.nn.Module) -> list[tuple[str, bool, bool]]:
    """Records, for every conv block a forward runs, whether its output (m, phi) is channels-last."""
    from ctcae_core.layers import ComplexBlock, is_channels_last

    seen: list[tuple[str, bool, bool]] = []
    for name, module in model.named_modules():
        if isinstance(module, ComplexBlock) and "linear" not in name:
            module.register_forward_hook(lambda mod, inp, out, name=name: seen.append(
                (name, is_channels_last(out[0]), is_channels_last(out[1]))))
    return seen


@pytest.mark.parametrize("decoder", ["upsample", "transpose"])
def test_the_channels_last_layout_changes_no_value(monkeypatch, decoder):
    """The layout bf16 runs in on the CPU, forced in fp32: the same loss and gradients as NCHW
    (to conv rounding), and every conv block really ran channels-last."""
    import ctcae_core.model as model_module

    cfg = dataclasses.replace(SMALL, decoder=decoder, phase_bias_init=3.14)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    results = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        monkeypatch.setattr(model_module, "memory_layout", lambda images, layout=layout: layout)
        torch.manual_seed(0)
        model = build_model(cfg, 32)
        seen = _block_layouts(model)
        out = model(images)
        loss = F.mse_loss(out.recon, images) + CC.weight * contrastive_loss(
            out.enc_magnitude, out.enc_phase, out.out_magnitude, out.out_phase, CC, torch.Generator().manual_seed(0))
        loss.backward()
        results[layout] = (float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}, out.complex_out.detach())
        assert len(seen) == 10 and all(m_cl == phi_cl == (layout == torch.channels_last) for _, m_cl, phi_cl in seen)
    (l0, g0, p0), (l1, g1, p1) = results[torch.contiguous_format], results[torch.channels_last]
    assert abs(l1 - l0) <= 1e-5 * abs(l0)
    # the complex output: measured 4-5e-5 on 2 threads, 1.4e-4 on one (transposed-conv decoder)
    assert float((p1 - p0).abs().max()) <= 1e-3 * float(p0.abs().max())
    for name in g0:
        if float(g0[name].norm()) < 1e-5:
            continue  # the conv magnitude biases before BatchNorm: gradient 0 up to rounding (1e-8-1e-7)
        # measured <= 2e-4 on 2 threads, and up to 2.7e-3 on one (OMP_NUM_THREADS=1: the phase biases of
        # encoder.1, through the contrastive term); a layout bug would be of order 1
        assert float((g1[name] - g0[name]).norm()) <= 5e-3 * float(g0[name].norm()), name


def test_bf16_on_the_cpu_runs_the_convolutions_channels_last_and_fp32_nchw():
    torch.manual_seed(0)
    model = build_model(SMALL, 32)
    seen = _block_layouts(model)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    model(images)
    with precision_context("bf16", torch.device("cpu")):
        model(images)
    assert [cl for _, cl, _ in seen] == [False] * 10 + [True] * 10


@pytest.mark.parametrize("fused", ["0", "1"])
def test_under_autocast_the_stacked_maps_are_written_in_its_dtype_rounded_as_its_cast(fused, monkeypatch):
    """ATen path: bit for bit torch's own products and cast. Fused kernels (ctcae_core/fused.py):
    their own float32 products, within an ulp of torch's, cast exactly as torch casts them."""
    from ctcae_core.layers import _PolarToStacked

    monkeypatch.setenv("CTCAE_FUSED", fused)
    g = torch.Generator().manual_seed(6)
    m, phi = torch.rand(4, 8, 5, 5, generator=g), 6 * torch.rand(4, 8, 5, 5, generator=g) - 3
    reference = torch.cat([m * torch.cos(phi), m * torch.sin(phi), m])
    full = _PolarToStacked.apply(m, phi)
    assert full.dtype == torch.float32
    if fused == "0":
        assert torch.equal(full, reference)
    else:
        torch.testing.assert_close(full, reference, rtol=0, atol=2.5e-7)
    with precision_context("bf16", torch.device("cpu")):
        stacked = _PolarToStacked.apply(m, phi)
    assert stacked.dtype == torch.bfloat16 and torch.equal(stacked, full.bfloat16())


def test_bf16_on_a_cpu_without_native_bf16_warns_and_names_the_fix(monkeypatch):
    import warnings

    from ctcae_core.precision import native_cpu_bf16

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False)
    native_cpu_bf16.cache_clear()  # the probe is cached per process
    with pytest.warns(UserWarning, match="without AVX512-BF16 or AMX.*use fp32 on this machine"):
        precision_context("bf16", torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    native_cpu_bf16.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision_context("bf16", torch.device("cpu"))
        precision_context("fp32", torch.device("cpu"))
    native_cpu_bf16.cache_clear()  # later tests probe the real CPU again
