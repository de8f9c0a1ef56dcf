"""The complex autoencoder with the CAE / CAE++ / CtCAE toggles (docs/model.md, "Autoencoder")."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn

from ctcae_core.config import ModelConfig
from ctcae_core.layers import ComplexBlock, ComplexConv2d, ComplexConvTranspose2d, ComplexLinear, wrap_phase

Tensor = torch.Tensor


class ModelOutput(NamedTuple):
    """What ``forward`` returns; no loss and no clustering happen inside the model."""

    recon: Tensor  # (b, c, h, w) reconstruction
    out_magnitude: Tensor  # (b, c, h, w) |z| of the decoder's last complex layer
    out_phase: Tensor  # (b, c, h, w) arg z in (-pi, pi]; where |z| = 0 the paper's angle() of a signed zero
    enc_magnitude: Tensor  # (b, c', h', w') last encoder conv layer
    enc_phase: Tensor  # (b, c', h', w')

    @property
    def complex_out(self) -> Tensor:  # (b, c, h, w) complex64
        return torch.polar(self.out_magnitude, self.out_phase)


def memory_layout(images: Tensor) -> torch.memory_format:
    """The layout the convolutions run in: channels-last under a bf16 autocast on the CPU, else NCHW.

    oneDNN's bf16 convolutions (AVX512-BF16, AMX) are several times faster on channels-last maps
    than on NCHW ones, which it reorders at every call; in fp32 NCHW is kept (measured no faster
    channels-last, benchmarks/README.md). Layout changes no value beyond the convolutions' rounding.
    """
    if images.device.type == "cpu" and images.dim() == 4 and torch.is_autocast_enabled("cpu"):
        return torch.channels_last
    return torch.contiguous_format


def encoder_shapes(cfg: ModelConfig, resolution: int) -> list[tuple[int, int, int]]:
    """(channels, h, w) after each encoder conv for a square input."""
    shapes, size = [], resolution
    for ch, s in zip(cfg.enc_channels, cfg.enc_strides):
        size = -(-size // s)
        shapes.append((ch, size, size))
    return shapes


class ComplexAutoEncoder(nn.Module):
    """Complex conv encoder -> complex linear bottleneck -> mirrored complex conv decoder."""

    def __init__(self, cfg: ModelConfig, resolution: int):
        super().__init__()
        self.cfg, self.resolution = cfg, resolution
        shapes = encoder_shapes(cfg, resolution)
        chans = (cfg.in_channels,) + tuple(cfg.enc_channels)
        self.encoder = nn.ModuleList(
            ComplexBlock(ComplexConv2d(chans[i], chans[i + 1], cfg.enc_kernels[i], cfg.enc_strides[i]), nn.BatchNorm2d(chans[i + 1]))
            for i in range(len(cfg.enc_channels))
        )
        self.enc_out_shape = shapes[-1]
        flat = math.prod(self.enc_out_shape)
        self.enc_linear = ComplexBlock(ComplexLinear(flat, cfg.linear_dim), nn.LayerNorm(cfg.linear_dim))
        self.dec_linear = ComplexBlock(ComplexLinear(cfg.linear_dim, flat), nn.LayerNorm(flat))

        dec_chans = tuple(reversed(cfg.enc_channels)) + (cfg.in_channels,)
        layers = []
        for i, (k, s) in enumerate(zip(reversed(cfg.enc_kernels), reversed(cfg.enc_strides))):
            cin, cout = dec_chans[i], dec_chans[i + 1]
            if s == 1:
                layer: nn.Module = ComplexConv2d(cin, cout, k, 1)
            elif cfg.decoder == "upsample":
                layer = ComplexConv2d(cin, cout, k, 1, upsample=True)
            else:
                layer = ComplexConvTranspose2d(cin, cout, k, 2)
            layers.append(ComplexBlock(layer, nn.BatchNorm2d(cout)))
        self.decoder = nn.ModuleList(layers)
        if cfg.phase_bias_init > 0:
            for module in self.modules():
                if isinstance(module, (ComplexConv2d, ComplexConvTranspose2d, ComplexLinear)):
                    nn.init.uniform_(module.phase_bias, -cfg.phase_bias_init, cfg.phase_bias_init)
        self.out_conv = None
        if cfg.out_conv:
            self.out_conv = nn.Conv2d(cfg.in_channels, cfg.in_channels, 1)
            nn.init.constant_(self.out_conv.weight, 1.0)
            nn.init.constant_(self.out_conv.bias, 0.0)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> ModelOutput:
        """images: (b, c, h, w) in [0, 1]; any batch size."""
        b = images.shape[0]
        layout = memory_layout(images)
        images = images.contiguous(memory_format=layout)
        m = images
        if self.cfg.phase_init == "zero":
            phi = torch.zeros_like(images)
        else:  # as the paper's code: phases uniform in [0, 1)
            phi = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        if self.training and self.cfg.phase_noise > 0:
            noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            phi = phi + self.cfg.phase_noise * noise
        for block in self.encoder:
            m, phi = block(m, phi)
        enc_m, enc_phi = m, phi
        m, phi = self.enc_linear(m.reshape(b, -1), phi.reshape(b, -1))
        m, phi = self.dec_linear(m, phi)
        m = m.reshape(b, *self.enc_out_shape).contiguous(memory_format=layout)
        phi = phi.reshape(b, *self.enc_out_shape).contiguous(memory_format=layout)
        for block in self.decoder:
            m, phi = block(m, phi)
        if m.shape[-2:] != images.shape[-2:]:
            # Odd sizes: the decoder doubles what the encoder halved with rounding up; crop back.
            m, phi = m[..., : images.shape[-2], : images.shape[-1]], phi[..., : images.shape[-2], : images.shape[-1]]
        recon = m
        if self.out_conv is not None:
            recon = self.out_conv(recon)
        if self.cfg.out_sigmoid:
            recon = torch.sigmoid(recon)
        return ModelOutput(recon, m, wrap_phase(m, phi), enc_m, wrap_phase(enc_m, enc_phi))


def build_model(cfg: ModelConfig, resolution: int) -> ComplexAutoEncoder:
    return ComplexAutoEncoder(cfg, resolution)
