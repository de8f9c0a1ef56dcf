"""Fused CPU kernels for the complex layer's elementwise arithmetic, the contrastive loss's
pair-mining keys and its InfoNCE term over gathered pairs (polar_kernels.c).

On the CPU, the layer's polar maps around each linear map (m, phi) -> (m cos phi, m sin phi, m) and
(Re psi, Im psi, chi) -> (0.5 (|psi| + chi), arg psi), forward and backward, were a dozen ATen passes
over the 3x batch, with casts between the autocast dtype and float32: more time than the
convolutions (benchmarks/README.md). Each is one pass here, reading and writing the autocast
dtype directly. The ATen path in layers.py stays for CUDA, float64, unusual layouts, and machines
without a C compiler; tests/test_fused.py holds the two to each other.

The C source is compiled once per machine with the system's ``cc`` (-O3 -march=native) into
``$CTCAE_KERNEL_CACHE`` (default ``~/.cache/ctcae/kernels``), under a name that hashes the source,
the flags and the CPU, and loaded with ctypes. ``CTCAE_FUSED=0`` turns the kernels off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

Tensor = torch.Tensor
SOURCE = Path(__file__).with_name("polar_kernels.c")
# -fno-math-errno lets gcc call glibc's vector sinf/cosf/atan2f/hypotf (declared in the source);
# no -ffast-math: NaNs, infinities and signed zeros keep their meaning.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-builtin-sinf", "-fno-builtin-cosf",
         "-fPIC", "-shared", "-pthread")
_P, _I64, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


def enabled() -> bool:
    return os.environ.get("CTCAE_FUSED", "1") != "0"


def _cpu_key() -> str:
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _build(cache: Path, compiler: str) -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + compiler.encode() + _cpu_key().encode())
    lib = cache / f"polar_kernels_{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: processes that start together (Ray workers) never
    # load a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True, capture_output=True, text=True,
                       timeout=120)
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (with one warning that says why) where they cannot be built."""
    if platform.system() != "Linux":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn("ctcae_core.fused: no C compiler (cc, gcc) found; the layer runs its slower ATen path",
                      stacklevel=2)
        return None
    cache = Path(os.environ.get("CTCAE_KERNEL_CACHE") or Path.home() / ".cache" / "ctcae" / "kernels")
    try:
        lib = ctypes.CDLL(str(_build(cache, compiler)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        warnings.warn(f"ctcae_core.fused: the kernels did not build ({detail}); the layer runs its slower ATen path",
                      stacklevel=2)
        return None
    lib.ctcae_polar_fwd.argtypes = [_INT, _P, _P, _P, _I64, _INT]
    lib.ctcae_act_fwd.argtypes = [_INT, _P, _P, _P, _I64, _INT]
    lib.ctcae_act_bwd.argtypes = [_INT, _P, _P, _P, _P, _I64, _INT]
    lib.ctcae_polar_bwd.argtypes = [_INT, _P, _P, _P, _P, _P, _I64, _INT]
    lib.ctcae_mine_keys.argtypes = [_P, _P, _P, _I64, _I64, _I64, _I64, _INT, _INT]
    lib.ctcae_infonce_fwd.argtypes = [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _FLOAT, _INT]
    lib.ctcae_infonce_bwd.argtypes = [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _FLOAT, _INT]
    for fn in (lib.ctcae_polar_fwd, lib.ctcae_act_fwd, lib.ctcae_act_bwd, lib.ctcae_polar_bwd, lib.ctcae_mine_keys,
               lib.ctcae_infonce_fwd, lib.ctcae_infonce_bwd):
        fn.restype = None
    return lib


def _dense(t: Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def usable(planes_dtype: torch.dtype, *tensors: Tensor) -> bool:
    """Whether the kernels take these float32 tensors and planes of ``planes_dtype``: on the CPU,
    dense, all of one shape and one layout (the kernels walk flat memory), with the kernels built."""
    if not enabled() or planes_dtype not in (torch.float32, torch.bfloat16):
        return False
    first = tensors[0] if tensors else None
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.shape != first.shape or t.stride() != first.stride():
            return False
        if not _dense(t):
            return False
    return library() is not None


def _args(planes: Tensor) -> tuple[int, int]:
    return int(planes.dtype == torch.bfloat16), torch.get_num_threads()


def polar_forward(m: Tensor, phi: Tensor, out: Tensor) -> None:
    """out (3b, ...) in its dtype, m's layout: (m cos phi, m sin phi, m) along the batch."""
    bf16, threads = _args(out)
    library().ctcae_polar_fwd(bf16, m.data_ptr(), phi.data_ptr(), out.data_ptr(), m.numel(), threads)


def activation_forward(y: Tensor) -> tuple[Tensor, Tensor]:
    """y (3b, ...) = (Re psi, Im psi, chi) -> (0.5 (|psi| + chi), arg psi), float32 in y's layout."""
    b = y.shape[0] // 3
    m_out = torch.empty_like(y[:b], dtype=torch.float32)
    phi_out = torch.empty_like(m_out)
    bf16, threads = _args(y)
    library().ctcae_act_fwd(bf16, y.data_ptr(), m_out.data_ptr(), phi_out.data_ptr(), m_out.numel(), threads)
    return m_out, phi_out


def activation_backward(y: Tensor, g_m: Tensor, g_phi: Tensor) -> Tensor:
    """The gradient with respect to y, in y's dtype and layout."""
    g_y = torch.empty_like(y)
    bf16, threads = _args(y)
    library().ctcae_act_bwd(bf16, y.data_ptr(), g_m.data_ptr(), g_phi.data_ptr(), g_y.data_ptr(), g_m.numel(), threads)
    return g_y


def polar_backward(grad: Tensor, m: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients with respect to m and phi of :func:`polar_forward`, float32."""
    g_m, g_phi = torch.empty_like(m), torch.empty_like(phi)
    bf16, threads = _args(grad)
    library().ctcae_polar_bwd(bf16, grad.data_ptr(), m.data_ptr(), phi.data_ptr(), g_m.data_ptr(), g_phi.data_ptr(),
                              m.numel(), threads)
    return g_m, g_phi


def mining_keys_usable(unit: Tensor) -> bool:
    """Whether :func:`mining_keys` takes these unit addresses (CPU, float32)."""
    return enabled() and unit.device.type == "cpu" and unit.dtype == torch.float32 and library() is not None


def mining_keys(unit: Tensor, anchors: Tensor, bits: int, out: Tensor | None = None) -> Tensor:
    """The (b, A, n) int32 sort keys of contrastive.positions_at_ranks in one pass, from unit
    address vectors (b, d, n): the bits of the distance 1 - u_a . u_j clamped at 0, the low
    ``bits`` bits replaced by the position j, the anchor's own entry negative. Written into
    ``out`` (contiguous int32) where given."""
    b, d, n = unit.shape
    unit, anchors = unit.contiguous(), anchors.to(torch.int64).contiguous()
    keys = torch.empty(b, len(anchors), n, dtype=torch.int32) if out is None else out
    if keys.shape != (b, len(anchors), n) or keys.dtype != torch.int32 or not keys.is_contiguous():
        raise ValueError(f"mining_keys: out must be a contiguous int32 tensor of shape {(b, len(anchors), n)}")
    library().ctcae_mine_keys(unit.data_ptr(), anchors.data_ptr(), keys.data_ptr(), b, d, n, len(anchors), bits,
                              torch.get_num_threads())
    return keys


def infonce_usable(unit: Tensor) -> bool:
    """Whether :func:`infonce_forward` takes these unit phase vectors (CPU, float32)."""
    return enabled() and unit.device.type == "cpu" and unit.dtype == torch.float32 and library() is not None


def infonce_forward(unit: Tensor, idx: Tensor, anchors: Tensor, temperature: float, n_pos: int) -> tuple[Tensor, Tensor]:
    """contrastive.soft_target_infonce's rows in one pass: the (b, A) row losses, and the (b, A, K)
    coefficients d loss_row / d logit (softmax minus the soft target) that the backward needs.
    unit (b, d, n) float32, idx (b, A, K) and anchors (A,) positions."""
    b, d, n = unit.shape
    n_a, n_k = idx.shape[1], idx.shape[2]
    loss, coef = torch.empty(b, n_a), torch.empty(b, n_a, n_k)
    library().ctcae_infonce_fwd(unit.data_ptr(), idx.data_ptr(), anchors.data_ptr(), loss.data_ptr(), coef.data_ptr(),
                                b, d, n, n_a, n_k, n_pos, temperature, torch.get_num_threads())
    return loss, coef


def infonce_backward(unit: Tensor, idx: Tensor, anchors: Tensor, coef: Tensor, scale: float) -> Tensor:
    """The gradient with respect to ``unit`` of the mean of :func:`infonce_forward`'s row losses,
    given ``scale`` = (the upstream gradient) / (b A temperature): each row's coefficients, scaled,
    scattered to its pairs' and its anchor's vectors."""
    b, d, n = unit.shape
    grad = torch.zeros(b, d, n)
    library().ctcae_infonce_bwd(unit.data_ptr(), idx.data_ptr(), anchors.data_ptr(), coef.data_ptr(), grad.data_ptr(),
                                b, d, n, idx.shape[1], idx.shape[2], scale, torch.get_num_threads())
    return grad
