"""LR range test (Smith 2017): sweep the LR exponentially, watch the smoothed loss.

The model, optimizer and RNG state are restored afterwards, bit for bit, so the test
can run right before training without changing it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .engine import _autocast, set_lr


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]          # bias-corrected exponential moving average of the loss
    suggestion: float
    raw_losses: list[float]

    def __iter__(self):  # allows: lrs, losses, suggestion = lr_range_test(...)
        return iter((self.lrs, self.losses, self.suggestion))


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """The LR where the smoothed loss falls fastest (per log-LR), before its minimum."""
    lrs_a, losses_a = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    stop = int(np.argmin(losses_a)) + 1
    if stop < 3:
        return float(lrs_a[max(stop - 1, 0)])
    grads = np.gradient(losses_a[:stop], np.log(lrs_a[:stop]))
    skip = min(len(grads) - 1, max(1, len(grads) // 10))  # the first points are noisy
    return float(lrs_a[skip + int(np.argmin(grads[skip:]))])


def lr_range_test(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, device: torch.device,
                  start_lr: float = 1e-6, end_lr: float = 10.0, num_iter: int = 100, beta: float = 0.98,
                  diverge: float = 4.0, label_smoothing: float = 0.0,
                  amp_dtype: torch.dtype | None = None) -> LRFinderResult:
    """Train for up to ``num_iter`` steps with the LR growing from ``start_lr`` to ``end_lr``.

    Stops early when the smoothed loss exceeds ``diverge`` x its best or is not finite.
    Other param groups keep their LR ratio to the first (see ``bias_lr_scale``).

    Returns:
        :class:`LRFinderResult` (lrs, smoothed losses, suggested LR inside the swept range).
    """
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    was_training = model.training
    gamma = (end_lr / start_lr) ** (1.0 / max(num_iter - 1, 1))
    lrs, smoothed, raw = [], [], []
    avg, best = 0.0, math.inf
    try:
        model.train()
        it, epoch = iter(loader), 0
        for i in range(num_iter):
            try:
                x, y = next(it)
            except StopIteration:
                epoch += 1
                loader.set_epoch(10_000 + epoch)
                it = iter(loader)
                x, y = next(it)
            lr = start_lr * gamma ** i
            set_lr(optimizer, lr)
            with _autocast(device, amp_dtype):
                loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            smoothed.append(smooth)
            raw.append(value)
            best = min(best, smooth)
            if smooth > diverge * best:
                break
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        torch.set_rng_state(rng_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    if not lrs:
        raise RuntimeError("the LR range test diverged at its first step; lower start_lr")
    return LRFinderResult(lrs, smoothed, suggest_lr(lrs, smoothed), raw)
