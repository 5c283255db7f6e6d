"""Evaluation: the test loss and accuracy (with optional test-time augmentation), and predictions."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed as D
from ..config import TTA_MODES
from .precision import autocast


def acc_dtype(device: torch.device) -> torch.dtype:
    """The dtype of on-device counters: float64 (exact counts), float32 on MPS (no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits with test-time augmentation.

    ``flip``: mean of the image and its mirror. ``flip_translate``: half that, half the
    flip-averaged logits of the image shifted by one pixel up-left and down-right
    (reflect padding), as in the CIFAR-10 speed records.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose one of: {', '.join(TTA_MODES)}")
    out = model(x)
    if mode == "none":
        return out
    out = 0.5 * out + 0.5 * model(x.flip(-1))
    if mode == "flip":
        return out
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., 0:h, 0:w], padded[..., 2:h + 2, 2:w + 2]]
    trans = sum(0.5 * model(s) + 0.5 * model(s.flip(-1)) for s in shifted) / len(shifted)
    return 0.5 * out + 0.5 * trans


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device | str, amp_dtype: torch.dtype | None = None,
             tta: str = "none") -> dict[str, Any]:
    """Test loss (true per-sample mean of plain cross-entropy) and accuracy.

    Under torchrun each rank evaluates its shard and the sums are reduced, so every
    test image is counted exactly once. The model's train/eval mode is restored.

    Returns:
        dict with ``test_loss``, ``test_acc`` (%), ``correct`` and ``total``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    acc = acc_dtype(device)
    loss_sum = torch.zeros((), device=device, dtype=acc)
    correct = torch.zeros((), device=device, dtype=acc)
    total = torch.zeros((), device=device, dtype=acc)
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # no-op when already there
            with autocast(device, amp_dtype):
                out = tta_logits(model, x, tta)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").to(acc)
            correct += (out.argmax(1) == y).sum().to(acc)
            total += y.shape[0]
    finally:
        model.train(was_training)
    stats = D.all_reduce_sum(torch.stack([loss_sum, correct, total]))
    n = max(float(stats[2]), 1.0)
    return {"test_loss": float(stats[0]) / n, "test_acc": 100.0 * float(stats[1]) / n,
            "correct": int(round(float(stats[1]))), "total": int(round(float(stats[2])))}


@torch.no_grad()
def predict(model: nn.Module, loader, *, device: torch.device | str, amp_dtype: torch.dtype | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and labels (N,) on the CPU for every sample of a (test) loader, in order."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for x, y in loader:
            with autocast(device, amp_dtype):
                logits.append(model(x.to(device, non_blocking=True)).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def test_line(result: dict[str, Any], label: str = "Test set") -> str:
    """'Test set: Average loss: 0.4123, Accuracy: 8734/10000 (87.34%)'."""
    return (f"{label}: Average loss: {result['test_loss']:.4f}, Accuracy: "
            f"{result['correct']}/{result['total']} ({result['test_acc']:.2f}%)")
