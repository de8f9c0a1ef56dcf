"""``train.precision``: the autocast that training, evaluation and the benchmarks share.

Only the convs and linears run in bf16/fp16: the complex layer casts their output back to fp32
before |psi| and arg psi, and the norms, losses, k-means and ARI see fp32 (docs/model.md). On CPUs
without AVX512-BF16 (AVX2 only) bf16 convs are emulated and far slower than fp32; with
AVX512-BF16 or AMX they are faster, in the channels-last layout the model switches to under a CPU
bf16 autocast (``model.memory_layout``): benchmarks/README.md.
"""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch

from ctcae_core.config import PRECISIONS, ConfigError

LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast of the model's linear maps for ``precision`` (fp32: nothing).

    fp16 is refused off CUDA (a ConfigError naming the device), as is an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA device (got {device}); use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not native_cpu_bf16():
        warnings.warn("bf16 on a CPU without AVX512-BF16 or AMX: its bf16 convolutions are emulated, "
                      "20-50x slower than fp32 (benchmarks/README.md); use fp32 on this machine", stacklevel=2)
    return torch.autocast(device.type, dtype=LOW_PRECISION[precision])


@functools.cache  # precision_context runs every training step; the CPU does not change
def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 convolutions natively (AVX512-BF16 or AMX), per torch's probe."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
