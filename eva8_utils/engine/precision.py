"""Precision: one rule for every face (CLI, notebook, benchmarks), the GradScaler and autocast."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

_DTYPES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Precision:
    """The numeric format of training: an autocast dtype (None = fp32), whether fp16 needs a
    GradScaler, and why it was chosen (for the log)."""

    dtype: torch.dtype | None
    scaler: bool
    reason: str

    @property
    def name(self) -> str:
        return _DTYPES[self.dtype]

    def describe(self) -> str:
        what = "fp32" if self.dtype is None else f"{self.name} autocast" + (" + GradScaler" if self.scaler else "")
        return f"{what} ({self.reason})"


def choose_precision(device: torch.device, precision: str = "auto") -> Precision:
    """The precision rule.

    ``auto``: on CUDA, bf16 on compute capability >= 8.0 (A100, L4, H100: fast bf16
    tensor cores), fp16 with a GradScaler on 7.x (T4, V100: fp16 tensor cores, no fast
    bf16; ``torch.cuda.is_bf16_supported()`` says True there because it counts emulation),
    fp32 below; bf16 on CPUs with native bf16 (AVX512-BF16/AMX), fp32 on other CPUs and
    on MPS. ``fp16`` always comes with a GradScaler (CUDA and CPU).
    """
    device = torch.device(device)
    if precision == "fp32":
        return Precision(None, False, "asked for")
    if precision == "bf16":
        return Precision(torch.bfloat16, False, "asked for")
    if precision == "fp16":
        return Precision(torch.float16, device.type in ("cuda", "cpu"), "asked for")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        cap = f"compute capability {major}.{minor}"
        if major >= 8:
            return Precision(torch.bfloat16, False, f"auto: {cap} has fast bf16")
        if major == 7:
            return Precision(torch.float16, True, f"auto: {cap} has fp16 tensor cores but no fast bf16")
        return Precision(None, False, f"auto: {cap} has no fast half precision")
    if device.type == "cpu" and cpu_has_fast_bf16():
        return Precision(torch.bfloat16, False, "auto: this CPU computes bf16 natively")
    return Precision(None, False, f"auto: no fast half precision on {device.type}")


@functools.lru_cache(maxsize=None)
def fast_bf16(device: torch.device) -> bool:
    """Whether the precision rule picks bf16 on ``device`` (asked once per device)."""
    return choose_precision(device).dtype is torch.bfloat16


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): then bf16 autocast
    roughly doubles training speed; elsewhere it would be emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler, enabled when the precision needs one (fp16) and disabled otherwise: a
    disabled scaler passes the loss and the step straight through (as in nanoGPT), so the
    training step has no ``if scaler`` branches."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type if precision.scaler else "cuda", enabled=precision.scaler)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``'s type; off for None (fp32)."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
