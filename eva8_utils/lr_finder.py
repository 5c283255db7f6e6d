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

from .engine import autocast, set_lr


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]          # bias-corrected exponential moving average of the loss
    suggestion: float | None     # None when the sweep shows no descent
    raw_losses: list[float]
    note: str = ""               # why there is no suggestion, or a warning about it

    def __iter__(self):  # allows: lrs, losses, suggestion = lr_range_test(...)
        return iter((self.lrs, self.losses, self.suggestion))

    def describe(self) -> str:
        swept = f"swept {self.lrs[0]:.2g}..{self.lrs[-1]:.2g} over {len(self.lrs)} steps"
        if self.suggestion is None:
            return f"no suggestion ({self.note}; {swept})"
        return f"suggested LR {self.suggestion:.4g} (steepest descent of the smoothed loss; {swept})" + (
            f"; warning: {self.note}" if self.note else "")


MIN_DROP = 0.02  # the smoothed loss must fall at least 2% below its start to count as a descent


def suggest_lr(lrs: list[float], losses: list[float], min_drop: float = MIN_DROP) -> tuple[float | None, str]:
    """The LR where the smoothed loss falls fastest per log-LR, within the descent before
    its minimum (the "steepest descent" rule).

    Returns:
        ``(suggestion, note)``: the suggestion is None when the curve shows no descent
        (the minimum sits in the first points, or the loss never falls ``min_drop`` below
        its start); the note says why, or warns when the suggestion is at an edge.
    """
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if len(lr) < 5:
        return None, f"only {len(lr)} points before the loss diverged"
    i_min = int(np.argmin(loss))
    start = float(np.median(loss[: max(3, len(loss) // 20)]))
    if i_min < 3:
        return None, f"the loss was lowest at the start of the sweep (LR {lr[i_min]:.2g}) and only rose after it"
    if loss[i_min] > start * (1 - min_drop):
        return None, (f"the smoothed loss never fell {min_drop:.0%} below its start ({start:.4g} -> lowest "
                      f"{loss[i_min]:.4g})")
    grads = np.gradient(loss[: i_min + 1], np.log(lr[: i_min + 1]))
    skip = max(1, (i_min + 1) // 10)  # the first points of an EMA are noisy
    i = skip + int(np.argmin(grads[skip:]))
    note = ""
    if i in (0, len(lr) - 1):
        note = f"the suggestion is at the {'start' if i == 0 else 'end'} of the sweep; widen the swept range"
    elif i >= i_min:
        note = "the steepest descent is at the minimum itself; the suggestion may be too high"
    return float(lr[i]), note


def lr_range_test(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, device: torch.device,
                  start_lr: float = 1e-6, end_lr: float = 10.0, num_iter: int = 100, beta: float = 0.98,
                  diverge: float = 4.0, label_smoothing: float = 0.0,
                  amp_dtype: torch.dtype | None = None) -> LRFinderResult:
    """Train for up to ``num_iter`` steps with the LR growing from ``start_lr`` to ``end_lr``.

    Stops early when the smoothed loss exceeds ``diverge`` x its best or is not finite.
    Other param groups keep their LR ratio to the first (see ``bias_lr_scale``).

    Returns:
        :class:`LRFinderResult` (lrs, smoothed losses, the suggested LR or None, a note).
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
            with autocast(device, amp_dtype):
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
        return LRFinderResult([start_lr], [float("nan")], None, [float("nan")],
                              "the loss was not finite at the first step; lower start_lr")
    suggestion, note = suggest_lr(lrs, smoothed)
    return LRFinderResult(lrs, smoothed, suggestion, raw, note)
