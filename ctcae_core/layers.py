"""Complex-valued layers of the CAE, carried as real (magnitude, phase) tensor pairs.

A complex activation z = m e^{i phi} travels as two real tensors ``(m, phi)`` of the same shape,
which keeps every kernel real (faster on CPU than torch's complex kernels, and no complex
autograd). One function, :func:`apply_complex`, holds the layer arithmetic of docs/model.md; the
Conv, ConvTranspose and Linear wrappers only supply the real linear map ``f``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctcae_core import fused

Tensor = torch.Tensor
PHASE_EPS = 1e-8  # |Im psi| below this is set to eps before arg(), so atan2 gradients stay finite


def is_channels_last(x: Tensor) -> bool:
    """A 4-d tensor laid out channels-last (and not also plain contiguous, as 1x1 maps can be)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _guarded_im(im: Tensor) -> Tensor:
    """Im psi as the angle sees it: entries with |Im psi| < PHASE_EPS set to +PHASE_EPS."""
    return torch.where(im.abs() < PHASE_EPS, PHASE_EPS, im)  # one pass, in im's layout


class _PolarToStacked(torch.autograd.Function):
    """(m, phi) -> cat([m cos phi, m sin phi, m]) along the batch; saves only m and phi."""

    @staticmethod
    def forward(ctx, m: Tensor, phi: Tensor) -> Tensor:
        ctx.save_for_backward(m, phi)
        b = m.shape[0]
        # Written in place into one buffer: no torch.cat copy of the three parts. Under autocast
        # the buffer has the low precision the next map casts its input to, so that cast is fused
        # into these writes (the same rounding, one pass less over the 3x batch).
        fmt = torch.channels_last if is_channels_last(m) else torch.contiguous_format
        dtype = torch.result_type(m, phi)
        if torch.is_autocast_enabled(m.device.type):
            dtype = torch.get_autocast_dtype(m.device.type)
        out = torch.empty((3 * b, *m.shape[1:]), dtype=dtype, device=m.device, memory_format=fmt)
        if _fusable(out, m, phi):
            fused.polar_forward(m, phi, out)
            return out
        torch.mul(m, torch.cos(phi), out=out[:b])
        torch.mul(m, torch.sin(phi), out=out[b : 2 * b])
        out[2 * b :].copy_(m)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        m, phi = ctx.saved_tensors
        b = m.shape[0]
        if _fusable(grad, m, phi):
            return fused.polar_backward(grad, m, phi)
        # Under autocast grad arrives in bf16/fp16: cast once (exact), not once per product.
        grad = grad.to(torch.result_type(m, phi))
        g_re, g_im, g_m = grad[:b], grad[b : 2 * b], grad[2 * b :]
        c, s = torch.cos(phi), torch.sin(phi)
        return g_re * c + g_im * s + g_m, m * (g_im * c - g_re * s)


class _ComplexActivation(torch.autograd.Function):
    """cat([Re psi, Im psi, chi]) -> (0.5 (|psi| + chi), arg psi), exactly as the paper's code.

    The guard is on the angle only: |psi| comes from the raw psi (gradient psi / |psi|, and 0
    where |psi| = 0, as torch's ``abs`` of a complex zero), and arg psi from a copy whose entries
    with |Im psi| < eps are set to +eps (no gradient to Im psi through the angle there, the
    gradient to Re psi kept). At initialisation every phase sits at 0 or pi and these guarded
    entries carry the whole phase gradient, so the semantics matter (docs/model.md).

    Takes the linear map's output in its own dtype (bf16/fp16 under autocast; the arithmetic is
    float32, and the gradient goes back in that dtype). Saves only that input and recomputes
    |psi| in backward: less activation memory than the same arithmetic left to autograd.
    """

    @staticmethod
    def forward(ctx, y: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(y)
        if _fusable(y):
            return fused.activation_forward(y)
        b = y.shape[0] // 3
        out = _at_least_fp32(y)
        re, im, chi = out[:b], out[b : 2 * b], out[2 * b :]
        return 0.5 * (torch.hypot(re, im) + chi), torch.atan2(_guarded_im(im), re)

    @staticmethod
    def backward(ctx, g_m: Tensor, g_phi: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        if _fusable(y, g_m, g_phi):
            return fused.activation_backward(y, g_m, g_phi)
        b = y.shape[0] // 3
        out = _at_least_fp32(y)
        re, im = out[:b], out[b : 2 * b]
        # |psi|: d|psi|/d(re, im) = (re, im) / |psi|, 0 at |psi| = 0.
        r = torch.hypot(re, im)
        half_gm_over_r = torch.where(r > 0, 0.5 * g_m / r, 0.0)
        # arg of the guarded copy: d/d re = -im_g / r_g^2; d/d im = re / r_g^2 where not guarded.
        guarded = im.abs() < PHASE_EPS
        im_g = torch.where(guarded, PHASE_EPS, im)
        g_phi_over_r2 = g_phi / (re * re + im_g * im_g)
        grad = torch.empty_like(out)
        torch.sub(half_gm_over_r * re, g_phi_over_r2 * im_g, out=grad[:b])
        torch.add(half_gm_over_r * im, (g_phi_over_r2 * re).masked_fill_(guarded, 0.0), out=grad[b : 2 * b])
        torch.mul(g_m, 0.5, out=grad[2 * b :])
        return grad.to(y.dtype)


def _at_least_fp32(y: Tensor) -> Tensor:
    """bf16/fp16 to float32 (exact); float32 and float64 as they are."""
    return y.to(torch.promote_types(y.dtype, torch.float32))


def _fusable(stacked: Tensor, *polar: Tensor) -> bool:
    """Whether the fused CPU kernels (ctcae_core/fused.py) take a 3x-batch tensor and its polar
    pair: each third of ``stacked`` laid out as the float32 polar tensors."""
    if stacked.device.type != "cpu" or stacked.shape[0] % 3:  # fused.usable checks CTCAE_FUSED
        return False
    third = stacked[: stacked.shape[0] // 3]
    if not (stacked.is_contiguous() or is_channels_last(stacked)) or third.numel() == 0:
        return False
    if polar and third.stride() != polar[0].stride():
        return False
    return fused.usable(stacked.dtype, *polar)


def apply_complex(
    f: Callable[[Tensor], Tensor], m: Tensor, phi: Tensor, magnitude_bias: Tensor, phase_bias: Tensor
) -> tuple[Tensor, Tensor]:
    """One complex layer for a bias-free real linear map ``f``.

    psi = f(Re z) + i f(Im z); chi = f(|z|); m' = 0.5 (|psi| + b_m) + 0.5 (chi + b_m);
    phi' = arg(psi) + b_phi. The three maps share one call of ``f`` on a 3x batch.
    m, phi: (b, ...) real; returns (m', phi') float32 before the norm and ReLU.
    """
    # Under autocast f runs in bf16/fp16; the polar arithmetic (|psi|, arg psi) stays fp32.
    m_out, phi_out = _ComplexActivation.apply(f(_PolarToStacked.apply(m, phi)))
    return m_out + magnitude_bias, phi_out + phase_bias


def wrap_phase(m: Tensor, phi: Tensor) -> Tensor:
    """arg(m e^{i phi}) in (-pi, pi], computed as the paper's code does where m == 0.

    Where m > 0 this is phi wrapped to (-pi, pi]. Where m == 0 (a unit the ReLU switched off) the
    paper's code takes ``angle()`` of the complex zero ``m * exp(1j * phi)``, whose signed zeros
    give 0 or pi depending on the signs of m, cos phi and sin phi; the contrastive loss sees those
    values (its cosine similarity of phase vectors is far from indifferent to them at the
    symmetric start), so they are reproduced here, without gradient (``angle``'s gradient at 0 is
    0), by real ops over the whole tensor: the complex product written out, (m cos y - 0 sin y,
    m sin y + 0 cos y) with y = 0 + phi, the imaginary part of ``1j * phi`` (which turns a phase of
    -0 into +0). tests/test_model.py checks it bit for bit, signed zeros included, against torch's
    complex ops; it avoids their masked gather and scatter, which cost more than the rest of the
    forward's elementwise work on the small profiles (benchmarks/README.md).
    """
    # Only out-of-range phases are wrapped: phi + pi would round the tiny phases of the symmetric
    # start (1e-8) to the float spacing at pi (2.4e-7), which angle() does not.
    inside = (phi > -math.pi) & (phi <= math.pi)
    wrapped = torch.where(inside, phi, torch.remainder(phi + math.pi, 2 * math.pi) - math.pi)
    with torch.no_grad():
        md, y = m.detach(), phi.detach() + 0.0
        c, s = torch.cos(y), torch.sin(y)
        dead = torch.atan2(md * s + 0.0 * c, md * c - 0.0 * s)  # 0.0 * c: a zero with c's sign
    return torch.where(m > 0, wrapped, dead)


_SUB_PIXELS = ((0, 0), (0, 1), (1, 0), (1, 1))


class _SubPixels(torch.autograd.Function):
    """(n, 4 c, h + 1, w + 1) -> (n, c, 2h, 2w): sub-pixel (a, b) of the output is channel group
    2a + b of the input, shifted by (a, b).

    Each group is written once, straight to its strided place (no stack, then pixel_shuffle,
    copy). Backward gathers the four groups into one gradient buffer; autograd's own backward of
    the four slice assignments would zero and add a full-size buffer per group.
    """

    @staticmethod
    def forward(ctx, y: Tensor, c: int, channels_last: bool) -> Tensor:
        n, _, h1, w1 = y.shape
        h, wd = h1 - 1, w1 - 1
        if channels_last:  # keep the layout (docs/model.md, "Precision and layout")
            out = y.new_empty((n, h, 2, wd, 2, c)).permute(0, 5, 1, 2, 3, 4)
        else:
            out = y.new_empty((n, c, h, 2, wd, 2))
        for i, (a, b) in enumerate(_SUB_PIXELS):
            out[:, :, :, a, :, b] = y[:, i * c : (i + 1) * c, a : a + h, b : b + wd]
        ctx.c, ctx.y_shape, ctx.channels_last = c, y.shape, channels_last
        return out.view(n, c, 2 * h, 2 * wd)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        c, (n, _, h1, w1) = ctx.c, ctx.y_shape
        h, wd = h1 - 1, w1 - 1
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        g_y = torch.empty(ctx.y_shape, dtype=grad.dtype, device=grad.device, memory_format=fmt).zero_()
        g = grad.view(n, c, h, 2, wd, 2)
        for i, (a, b) in enumerate(_SUB_PIXELS):
            g_y[:, i * c : (i + 1) * c, a : a + h, b : b + wd] = g[:, :, :, a, :, b]
        return g_y, None, None


def _biases(n_out: int, fan_in: int, shape: tuple[int, ...]) -> tuple[nn.Parameter, nn.Parameter]:
    bound = 1.0 / math.sqrt(fan_in)
    magnitude_bias = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
    phase_bias = nn.Parameter(torch.zeros(shape))
    return magnitude_bias, phase_bias


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ComplexConv2d(nn.Module):
    """Complex conv with TF-style SAME padding; ``upsample=True`` first repeats pixels x2 (nearest)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, upsample: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, bias=False)
        self.kernel_size, self.stride, self.upsample = kernel_size, stride, upsample
        self.magnitude_bias, self.phase_bias = _biases(out_ch, in_ch * kernel_size**2, (1, out_ch, 1, 1))

    def _f(self, x: Tensor) -> Tensor:  # (3b, c, h, w)
        ph = same_padding(x.shape[-2], self.kernel_size, self.stride)
        pw = same_padding(x.shape[-1], self.kernel_size, self.stride)
        if ph[0] == ph[1] and pw[0] == pw[1]:
            return F.conv2d(x, self.conv.weight, None, self.stride, (ph[0], pw[0]))
        return self.conv(F.pad(x, (pw[0], pw[1], ph[0], ph[1])))

    def _f_upsampled(self, x: Tensor) -> Tensor:  # (3b, cin, h, w) -> (3b, cout, 2h, 2w)
        """conv3x3(nearest_upsample_x2(x)) without forming the upsampled map.

        Each of the four output sub-pixel grids sees a 2x2 window of the low-resolution input
        with summed taps (rows: (w0, w1 + w2) above-and-at, (w0 + w1, w2) at-and-below; the same
        for columns): 16 instead of 36 multiply-adds per input pixel and channel pair, identical
        result up to rounding.
        """
        w = self.conv.weight  # (cout, cin, 3, 3)
        cout = w.shape[0]
        rows = (torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2))
        kernels = []
        for kr in rows:  # (cout, cin, 2, 3)
            kernels.append(torch.stack([kr[..., 0], kr[..., 1] + kr[..., 2]], -1))
            kernels.append(torch.stack([kr[..., 0] + kr[..., 1], kr[..., 2]], -1))
        # One conv for the four sub-pixel kernels; sub-pixel (a, b) reads its window shifted by (a, b).
        # The conv pads by itself (no padded copy of x); _SubPixels puts each grid in its place.
        y = F.conv2d(x, torch.cat(kernels, 0), padding=1)  # (3b, 4 cout, h + 1, w + 1)
        return _SubPixels.apply(y, cout, is_channels_last(x))

    def forward(self, m: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        if self.upsample:
            if self.kernel_size == 3:
                # f is linear and nearest upsampling commutes with the pointwise m cos(phi), so the
                # complex layer runs on the low-resolution (m, phi) with f = conv o upsample.
                return apply_complex(self._f_upsampled, m, phi, self.magnitude_bias, self.phase_bias)
            # Nearest upsampling of (m, phi) equals nearest upsampling of Re and Im.
            m = F.interpolate(m, scale_factor=2, mode="nearest")
            phi = F.interpolate(phi, scale_factor=2, mode="nearest")
        return apply_complex(self._f, m, phi, self.magnitude_bias, self.phase_bias)


class ComplexConvTranspose2d(nn.Module):
    """Complex transposed conv (kernel 3, stride 2, padding 1, output padding 1): doubles h and w."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, kernel_size, stride, padding=1, output_padding=1, bias=False)
        # The paper's code takes the fan-in of a transposed conv as out_ch * k * k; kept for parity.
        self.magnitude_bias, self.phase_bias = _biases(out_ch, out_ch * kernel_size**2, (1, out_ch, 1, 1))

    def forward(self, m: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        return apply_complex(self.conv, m, phi, self.magnitude_bias, self.phase_bias)


class ComplexLinear(nn.Module):
    """Complex fully connected layer on (b, d) pairs."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias=False)
        self.magnitude_bias, self.phase_bias = _biases(out_features, in_features, (1, out_features))

    def forward(self, m: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        return apply_complex(self.fc, m, phi, self.magnitude_bias, self.phase_bias)


class ComplexBlock(nn.Module):
    """A complex layer, then norm (BatchNorm2d or LayerNorm) and ReLU on the magnitude."""

    def __init__(self, layer: nn.Module, norm: nn.Module):
        super().__init__()
        self.layer, self.norm = layer, norm

    def forward(self, m: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        m, phi = self.layer(m, phi)
        return F.relu(self.norm(m)), phi
