"""Training FLOPs, and how much of the card's arithmetic a run used (MFU).

MFU (model FLOPs utilisation) = the FLOPs the model needs per second of training, over the
card's dense bf16/fp16 tensor-core peak. FLOPs are counted by ``torch.utils.flop_counter``
on one training step (forward and backward), a multiply-add counting as 2 FLOPs; the
optimizer step, augmentation and evaluation count for nothing, so MFU says how busy the
model kept the card, not how much arithmetic happened.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn as nn

logger = logging.getLogger("eva8_utils")

# Dense bf16/fp16 tensor-core peak of a card, in TFLOP/s (the vendor's datasheet, without
# sparsity), by a part of its name; the first match counts (PCIe before SXM).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
    ("V100", 125.0), ("T4", 65.0),
)


def train_flops_per_image(model: nn.Module, image_size: int, channels: int = 3) -> float:
    """FLOPs of one training step (forward + backward) per image, counted on a CPU copy of
    ``model`` (the model itself is not touched: no gradients, no BatchNorm statistics)."""
    from torch.utils.flop_counter import FlopCounterMode

    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    twin = copy.deepcopy(inner).float().cpu().train()
    x = torch.zeros(2, channels, image_size, image_size)  # 2 images: BatchNorm needs more than one value
    counter = FlopCounterMode(display=False)
    with counter:
        twin(x).float().sum().backward()
    return counter.get_total_flops() / 2


def peak_tflops(device: torch.device) -> float | None:
    """The card's dense bf16/fp16 peak from :data:`PEAK_TFLOPS`, or None (a CPU, an unknown card)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in PEAK_TFLOPS if part in name), None)


def utilisation(flops_per_image: float, images: int, seconds: float, peak: float | None,
                devices: int = 1) -> dict[str, Any]:
    """metrics.json's ``train_gflops_per_image``, ``train_tflops_per_s`` and, on a known card,
    ``mfu`` (a fraction of ``devices`` cards' peak)."""
    out: dict[str, Any] = {"train_gflops_per_image": round(flops_per_image / 1e9, 4)}
    if seconds > 0 and images > 0:
        achieved = flops_per_image * images / seconds / 1e12
        out["train_tflops_per_s"] = round(achieved, 3)
        if peak:
            out["mfu"] = round(achieved / (peak * devices), 4)
    return out


def training_flops(model: nn.Module, image_size: int, device: torch.device, images: int, seconds: float,
                   devices: int = 1) -> dict[str, Any]:
    """:func:`utilisation` of a finished training (``images`` trained in ``seconds`` on ``devices``
    cards), logged; empty when the model cannot be counted (the run's other numbers stand)."""
    try:
        per_image = train_flops_per_image(model, image_size)
    except Exception as e:  # a model its CPU copy cannot run
        logger.info("training FLOPs not counted (%s: %s)", type(e).__name__, str(e).splitlines()[0][:100] if str(e) else "")
        return {}
    peak = peak_tflops(device)
    out = utilisation(per_image, images, seconds, peak, devices)
    if "train_tflops_per_s" in out:
        mfu = f", MFU {100 * out['mfu']:.1f}% of {peak:g} TFLOP/s (bf16 peak)" if "mfu" in out else ""
        logger.info("training: %.3g GFLOP per image (forward + backward), %.3g TFLOP/s%s", per_image / 1e9,
                    out["train_tflops_per_s"], mfu)
    return out
