"""The optional work of the training loop, one callback each (see :mod:`.state` for the events).

Pass the ones you want to :func:`~eva8_utils.engine.loop.train_one_epoch` or
:func:`~eva8_utils.engine.loop.fit`; the assembly (``eva8_utils.experiment``) picks them
from the config. Order matters where two touch the same thing: frozen gradients are
dropped before clipping, the divergence check runs before the progress bar reads it.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Callable

import torch
import torch.nn as nn

from ..config import CLIP_MODES
from .optim import Lookahead
from .state import Callback, TrainState, unwrap, wraps_ddp

logger = logging.getLogger("eva8_utils")


def l1_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The weights an L1 penalty applies to: trainable tensors with more than one dimension."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim > 1]


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights, updated after every step.

    BatchNorm running statistics are averaged with the weights (``use_buffers=True``), so
    the averaged model needs no extra pass over the data before it is evaluated.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

class L1Penalty(Callback):
    """Adds ``weight * sum |w|`` over :func:`l1_parameters` to the backpropagated loss; its
    mean per step is the history's ``l1_loss``."""

    def __init__(self, weight: float):
        self.weight = weight

    def before_train(self, state: TrainState) -> None:
        self.params = l1_parameters(state.model)

    def after_loss(self, state: TrainState) -> None:
        penalty = self.weight * torch.stack([p.abs().sum() for p in self.params]).sum()
        state.penalty = penalty if state.penalty is None else state.penalty + penalty


class GradClip(Callback):
    """Clips the (unscaled) gradients to a max global norm (``norm``) or max |grad| (``value``)."""

    def __init__(self, max_value: float, mode: str = "norm"):
        if mode not in CLIP_MODES:
            raise ValueError(f"unknown grad_clip_mode {mode!r}; choose one of: {', '.join(CLIP_MODES)}")
        self.max_value, self.mode = max_value, mode

    def before_train(self, state: TrainState) -> None:
        self.params = [p for p in state.model.parameters() if p.requires_grad]

    def after_backward(self, state: TrainState) -> None:
        if self.mode == "norm":
            torch.nn.utils.clip_grad_norm_(self.params, self.max_value)
        else:
            torch.nn.utils.clip_grad_value_(self.params, self.max_value)


class FreezeParameters(Callback):
    """Leaves the parameters ``frozen(epoch)`` returns unchanged in that (1-based) epoch.

    Outside DDP they stop requiring a gradient for the epoch, so autograd also skips the
    backward that only fed them (e.g. fastnet's frozen whitening bias: the input gradient
    of its first convolution); under DDP, whose reducer waits for every parameter that
    requires one, their gradient is dropped before the step. The numbers are the same.
    """

    def __init__(self, frozen: Callable[[int], list[nn.Parameter]]):
        self.frozen = frozen
        self.params: list[nn.Parameter] = []
        self.skipped: list[nn.Parameter] = []

    def before_train(self, state: TrainState) -> None:
        self.params = list(self.frozen(state.epoch))
        self.skipped = [] if wraps_ddp(state.model) else [p for p in self.params if p.requires_grad]
        for p in self.skipped:
            p.requires_grad_(False)

    def after_backward(self, state: TrainState) -> None:
        for p in self.params:
            p.grad = None

    def after_train(self, state: TrainState) -> None:
        for p in self.skipped:
            p.requires_grad_(True)
        self.skipped = []


class LookaheadStep(Callback):
    """Moves :class:`~eva8_utils.engine.optim.Lookahead`'s slow weights after every step
    (its progress is the schedule's) and sets the weights to them after every epoch."""

    def __init__(self, lookahead: Lookahead):
        self.lookahead = lookahead

    def after_step(self, state: TrainState) -> None:
        schedule = state.step.schedule
        if schedule is not None:
            self.lookahead.step(unwrap(state.model), schedule.steps, schedule.steps / schedule.total_steps)

    def after_train(self, state: TrainState) -> None:
        if not state.failed:
            self.lookahead.sync(unwrap(state.model))


class EMAWeights(Callback):
    """Updates an averaged model (:func:`make_ema`) after every step; fit evaluates it next
    to the model after every epoch and at the end (``ema_*`` columns and results)."""

    def __init__(self, ema: torch.optim.swa_utils.AveragedModel):
        self.ema = ema

    def before_fit(self, state: TrainState) -> None:
        state.eval_models["ema"] = (self.ema.module, "EMA weights")

    def after_step(self, state: TrainState) -> None:
        self.ema.update_parameters(unwrap(state.model))


class StopWhen(Callback):
    """Stops the epoch at the next batch boundary once ``stop()`` turns true (Ctrl-C)."""

    def __init__(self, stop: Callable[[], bool]):
        self.stop_fn = stop

    def before_step(self, state: TrainState) -> None:
        if self.stop_fn():
            state.stop = True


# ---------------------------------------------------------------------------------------
# Divergence: noticed, said once, with what to do
# ---------------------------------------------------------------------------------------
DIVERGENCE_HINT = ("lower --lr, try --optimizer adam, or add --grad-clip; models without norm layers need "
                   "much smaller LRs than the recipes use")


class DivergenceMonitor:
    """Watches the smoothed training loss at every bar update and warns once per run.

    Two signs: the smoothed loss stays above ``factor`` x its starting value for
    ``patience`` updates in a row; or after an epoch the training accuracy is still at
    chance (at most 1.5 x 1/classes) while the loss rose during that epoch.
    """

    def __init__(self, num_classes: int | None = None, factor: float = 3.0, patience: int = 3, beta: float = 0.7):
        self.num_classes, self.factor, self.patience, self.beta = num_classes, factor, patience, beta
        self.start: float | None = None
        self.smooth: float | None = None
        self.epoch_first: float | None = None
        self.above = 0
        self.warning: str | None = None

    def update(self, loss: float) -> str | None:
        """Feed the mean loss since the last update; returns the warning the first time."""
        if not math.isfinite(loss):
            return None
        self.smooth = loss if self.smooth is None else self.beta * self.smooth + (1 - self.beta) * loss
        if self.start is None:
            self.start = self.smooth
        if self.epoch_first is None:
            self.epoch_first = self.smooth
        self.above = self.above + 1 if self.smooth > self.factor * self.start else 0
        if self.above >= self.patience:
            return self._warn(f"training is diverging: the smoothed training loss {self.smooth:.4g} has stayed "
                              f"above {self.factor:g}x its start ({self.start:.4g}) for {self.above} updates")
        return None

    def end_epoch(self, epoch: int, train_acc: float) -> str | None:
        """Call after each epoch with its training accuracy (%)."""
        first, self.epoch_first = self.epoch_first, None
        if not self.num_classes or first is None or self.smooth is None:
            return None
        chance = 100.0 / self.num_classes
        if train_acc <= 1.5 * chance and self.smooth > first:
            return self._warn(f"after epoch {epoch} the training accuracy {train_acc:.2f}% is still at chance "
                              f"({chance:.1f}%) and the loss is rising ({first:.4g} -> {self.smooth:.4g})")
        return None

    def _warn(self, text: str) -> str | None:
        if self.warning is not None:
            return None
        self.warning = f"{text}; {DIVERGENCE_HINT}"
        return self.warning

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("start", "smooth", "epoch_first", "above", "warning")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

class WatchDivergence(Callback):
    """Feeds a :class:`DivergenceMonitor` at every host sync and after every epoch; its
    warning goes through :meth:`TrainState.warn` (log, metrics.json) and the bar says
    DIVERGING? from then on."""

    def __init__(self, monitor: DivergenceMonitor):
        self.monitor = monitor

    def before_train(self, state: TrainState) -> None:
        self.window = len(state.step_losses)
        self._note(state)

    def after_step(self, state: TrainState) -> None:
        if state.log_now and len(state.step_losses) > self.window:
            said = self.monitor.update(float(torch.stack(state.step_losses[self.window:]).mean()))
            self.window = len(state.step_losses)
            if said:
                state.warn(said)
            self._note(state)

    def after_validate(self, state: TrainState) -> None:
        said = self.monitor.end_epoch(state.epoch, state.row["train_acc"])
        if said:
            state.warn(said)

    def _note(self, state: TrainState) -> None:
        state.bar_note = " DIVERGING?" if self.monitor.warning else ""


# ---------------------------------------------------------------------------------------
# What the student sees: the bar and the time estimate
# ---------------------------------------------------------------------------------------
def _tqdm():
    with warnings.catch_warnings():  # tqdm.auto warns when ipywidgets is missing; text bars are fine
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm


class ProgressBar(Callback):
    """The course's tqdm bar: ``Loss=... Batch_id=... LR=... Accuracy=...``, updated at
    every host sync (``log_now``)."""

    def before_train(self, state: TrainState) -> None:
        self.bar = _tqdm()(total=state.n_batches, initial=state.start, leave=True, dynamic_ncols=True)

    def after_step(self, state: TrainState) -> None:
        if state.log_now:
            acc = 100.0 * float(state.correct) / max(state.seen, 1)
            self.bar.set_description(f"Loss={state.step_losses[-1].item():.4f} Batch_id={state.batch} "
                                     f"LR={state.lrs[-1]:.5f} Accuracy={acc:.2f}{state.bar_note}", refresh=False)
            self.bar.update(state.batch - self.bar.n)

    def after_train(self, state: TrainState) -> None:
        self.bar.close()


class EtaLogger(Callback):
    """After the first few steps of a fit: one log line with the epoch's and the run's estimated time."""

    def __init__(self):
        self.done = False

    def before_epoch(self, state: TrainState) -> None:
        self.done = state.epoch != state.first_epoch

    def before_train(self, state: TrainState) -> None:
        if self.done:
            return
        n, self.first = state.n_batches, state.start
        self.at = self.first + max(1, min(10, (n - self.first) // 4))
        self.done = n - self.first < 4  # too short to estimate

    def after_step(self, state: TrainState) -> None:
        if self.done or state.batch < self.at:
            return
        self.done = True
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)
        per_step = (time.perf_counter() - state.t0) / (state.batch - self.first)
        epoch_s = per_step * state.n_batches
        rest = per_step * (state.n_batches - state.batch) + epoch_s * (state.epochs - state.epoch)
        logger.info("estimate after %d steps: %.2f s/step, about %s per epoch, %s to finish training "
                    "(evaluation not included)", state.batch - self.first, per_step, _duration(epoch_s),
                    _duration(rest))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
