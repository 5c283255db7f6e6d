"""The training loop: a step, an epoch and fit, shaped like torchvision's reference scripts.

The step is nanoGPT's: forward under autocast, loss, one GradScaler that is simply
disabled outside fp16, backward, optimizer step, scheduler step. Everything optional
(L1, clipping, frozen parameters, lookahead, EMA, the divergence warning, the bar, the
time estimate, checkpoints) is a callback (:mod:`.callbacks`, events in :mod:`.state`).

The hot path avoids host syncs: losses and correct counts accumulate on the device and
are read every ``log_every`` steps (``state.log_now``) and at the end of the epoch. A
non-finite loss is remembered on the device and reported at the next read with the
exact batch where it first happened.

Randomness: every epoch reseeds torch from ``(seed, epoch, rank)`` and the loaders draw
their permutation and augmentations from ``(seed, epoch)``, so a run resumed at an epoch
boundary repeats exactly; an epoch resumed in the middle restores the RNG state saved
with it (``partial``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed as D
from ..loader import epoch_seed
from ..errors import NonFiniteLossError, TrainingInterrupted
from .callbacks import EtaLogger, ProgressBar
from .evaluate import evaluate, test_line
from .precision import autocast
from .schedule import Schedule
from .state import Callback, CallbackList, TrainState, set_rng_state

logger = logging.getLogger("eva8_utils")

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


@dataclass
class Step:
    """How one training step is taken.

    Attributes:
        criterion: ``loss = criterion(model(x), y)`` (e.g. ``nn.CrossEntropyLoss(label_smoothing=0.1)``,
            or ``F.nll_loss`` for a model that returns log-probabilities).
        amp_dtype: autocast dtype (None = fp32).
        scaler: a GradScaler (fp16); None = a disabled one.
        schedule: a :class:`~eva8_utils.engine.schedule.Schedule` (stepped after every
            batch, and after every evaluation with the test loss), or any torch scheduler
            stepped per batch (e.g. OneCycleLR).
        log_every: steps between host syncs (bar updates, the non-finite check).
    """

    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    schedule: Any = None
    log_every: int = 10

    @property
    def grad_scaler(self) -> torch.amp.GradScaler:
        """The scaler, or a disabled one (it passes the loss and the step straight through)."""
        return self.scaler if self.scaler is not None else _disabled_scaler()


@functools.lru_cache(maxsize=1)
def _disabled_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=False)


def train_step(state: TrainState, x: torch.Tensor, y: torch.Tensor) -> None:
    """One optimizer step on the batch (x, y); its loss and accuracy go into ``state``'s sums."""
    s, step, scaler = state, state.step, state.step.grad_scaler
    s.x, s.y = x, y
    s.lrs.append(float(s.optimizer.param_groups[0]["lr"]))
    with autocast(s.device, step.amp_dtype):
        s.out = s.model(x)
        s.loss = step.criterion(s.out, y)
    s.penalty = None
    s.callbacks.after_loss(s)
    total = s.loss.float() if s.penalty is None else s.loss.float() + s.penalty
    s.optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(s.optimizer)  # the callbacks see true gradients (no-op when disabled)
    s.callbacks.after_backward(s)
    scaler.step(s.optimizer)
    scaler.update()
    if step.schedule is not None:
        step.schedule.after_batch() if isinstance(step.schedule, Schedule) else step.schedule.step()
    _record(s, total)


@torch.no_grad()
def _record(s: TrainState, total: torch.Tensor) -> None:
    bs = s.y.shape[0]
    s.seen += bs
    ld = s.loss.detach().float()
    s.step_losses.append(ld)
    s.loss_sum += ld * bs
    if s.penalty is not None:
        s.penalty_sum += s.penalty.detach()
        s.penalised = True
    pred = s.out.detach().argmax(1)
    if s.y.dim() == 2:  # soft targets: the mass of the predicted class (lam or 1-lam when mixed)
        s.correct += s.y.gather(1, pred[:, None]).sum().to(s.acc_dtype)
    else:
        s.correct += (pred == s.y).sum().to(s.acc_dtype)
    s.first_bad = torch.where((s.first_bad < 0) & ~torch.isfinite(total.detach()),
                              torch.full_like(s.first_bad, s.batch), s.first_bad)


def _check_finite(s: TrainState) -> None:
    bad = int(s.first_bad)  # a host sync
    if bad >= 0:
        raise NonFiniteLossError(s.epoch, bad, s.lrs[bad - 1 - s.start] if bad > s.start else None)


def run_epoch(state: TrainState, loader) -> dict[str, Any]:
    """One pass over ``loader`` from ``state.batch`` on (0, or a resumed batch); see :func:`train_one_epoch`."""
    s, cbs = state, state.callbacks
    s.loader, s.n_batches = loader, len(loader)
    batches = loader.iterate(s.start) if s.start else iter(loader)
    s.model.train()
    cbs.before_train(s)
    try:
        for s.batch, (x, y) in enumerate(batches, s.start + 1):
            cbs.before_step(s)
            if s.stop:
                s.interrupted, s.batch = True, s.batch - 1
                break
            train_step(s, x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True))
            s.log_now = s.batch % s.step.log_every == 0 or s.batch == s.n_batches
            if s.log_now:
                _check_finite(s)
            cbs.after_step(s)
        if s.seen:
            _check_finite(s)
    except BaseException:
        s.failed = True
        raise
    finally:
        cbs.after_train(s)
    return _epoch_result(s)


def _epoch_result(s: TrainState) -> dict[str, Any]:
    stats = D.all_reduce_sum(torch.stack([s.loss_sum.double().to(s.acc_dtype), s.correct.to(s.acc_dtype),
                                          torch.tensor(float(s.seen), device=s.device, dtype=s.acc_dtype)]))
    total_seen = max(float(stats[2]), 1.0)
    result = {"train_loss": float(stats[0]) / total_seen, "train_acc": 100.0 * float(stats[1]) / total_seen,
              "samples": int(stats[2]), "batches": len(s.lrs), "lrs": s.lrs,
              "step_losses": torch.stack(s.step_losses).tolist() if s.step_losses else [],
              "interrupted": s.interrupted, "last_batch": s.batch}
    if s.penalised:
        result["l1_loss"] = float(s.penalty_sum) / max(len(s.lrs), 1)
    return result


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device | str,
                    epoch: int = 1, *, step: Step | None = None, callbacks: Iterable[Callback] = (),
                    partial: dict | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``model`` for one pass over ``loader`` (batches of (x, y) on ``device``).

    Args:
        model: the model (possibly DDP/compiled); put in train mode here.
        loader: yields (x, y); ``y`` holds class indices, or soft targets (B, classes)
            when batches are mixed (MixUp/CutMix). A ``torch.utils.data.DataLoader`` works.
        optimizer: the optimizer.
        device: the training device.
        epoch: 1-based epoch number, for error messages and the callbacks.
        step: how a step is taken (:class:`Step`: criterion, precision, scheduler, log_every).
        callbacks: optional work (:mod:`eva8_utils.engine.callbacks`).
        partial: continue an epoch from a mid-epoch snapshot (``TrainState.snapshot``; the
            loader must offer ``iterate(start)``, as :class:`~eva8_utils.data.DeviceLoader` does).
        progress: show the course's tqdm bar.

    Returns:
        dict with ``train_loss`` (per-sample mean of the data loss), ``train_acc`` (%; under
        mixing, the target mass on the predicted class), ``samples``, ``batches``, ``lrs``
        (LR of each step), ``step_losses``, ``interrupted``, ``last_batch``, and ``l1_loss``
        (mean penalty per step) when a callback added a penalty.

    Raises:
        NonFiniteLossError: a NaN/inf loss, naming the epoch and batch.
    """
    device = torch.device(device)
    cbs = CallbackList([*callbacks, ProgressBar() if progress else None])
    state = TrainState(model, optimizer, device, step or Step(), cbs)
    state.first_epoch = state.epochs = epoch
    state.begin_epoch(epoch, partial)
    return run_epoch(state, loader)


# ---------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------
@dataclass
class Resume:
    """Where a fit continues: ``epoch`` epochs done, the ``history`` so far, and a
    mid-epoch snapshot (``partial``) of epoch ``epoch + 1`` if the run stopped inside it."""

    epoch: int = 0
    history: dict[str, list] | None = None
    partial: dict | None = None


def new_history() -> dict[str, list]:
    """Empty history: per-epoch columns plus per-step ``steps`` (step, epoch, lr, loss)."""
    h: dict[str, list] = {c: [] for c in HISTORY_COLUMNS}
    h["steps"] = []
    return h


def fit(model: nn.Module, train_loader, test_loader, optimizer: torch.optim.Optimizer, *, epochs: int,
        device: torch.device | str | None = None, step: Step | None = None, callbacks: Iterable[Callback] = (),
        seed: int = 0, tta: str = "none", resume: Resume | None = None, progress: bool = True) -> dict[str, Any]:
    """Train for ``epochs`` epochs (continuing after ``resume.epoch``), evaluating after each.

    Per epoch it logs ``EPOCH: k/n``, shows the bar, logs the ``Train set: ...`` and
    ``Test set: ...`` lines (also for every model in ``state.eval_models``, e.g. the EMA
    weights), appends to the history and calls the callbacks. After the last epoch the
    TTA accuracy (``tta``: none | flip | flip_translate) is measured and reported next to
    the plain one. ``seed`` reseeds torch at every epoch from (seed, epoch, rank).

    Returns:
        dict with ``history``, ``final`` (last plain evaluation), ``tta`` (or None), the
        same with an ``ema_`` prefix for the EMA weights, ``epoch_times``, ``train_time_s``
        of this call and ``warnings``.

    Raises:
        NonFiniteLossError: a NaN/inf loss (nothing of that epoch is saved).
        TrainingInterrupted: a callback stopped the epoch; the last completed epoch is kept.
    """
    resume = resume or Resume()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cbs = CallbackList([*callbacks, EtaLogger(), ProgressBar() if progress and D.is_main() else None])
    state = TrainState(model, optimizer, device, step or Step(), cbs)
    state.epochs, state.first_epoch = epochs, resume.epoch + 1
    state.history = resume.history if resume.history is not None else new_history()
    epoch_times: list[float] = list(state.history.get("_epoch_times", []))
    last: dict[str, dict] = {}
    cbs.before_fit(state)
    for epoch in range(resume.epoch + 1, epochs + 1):
        part = resume.partial if epoch == resume.epoch + 1 else None
        if part and part.get("rng") is not None:
            set_rng_state(part["rng"])
        else:  # dropout and other global randomness: a pure function of (seed, epoch, rank)
            torch.manual_seed(epoch_seed(seed, epoch, salt=1 + D.rank()))
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        logger.info("EPOCH: %d/%d", epoch, epochs)
        state.epoch = epoch
        cbs.before_epoch(state)
        state.begin_epoch(epoch, part)
        tr = run_epoch(state, train_loader)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = state.elapsed()
        if tr["interrupted"]:
            raise TrainingInterrupted(epoch, tr["last_batch"], epoch - 1)
        last = _validate(state, test_loader, tr, dt)
        cbs.after_validate(state)
        add_epoch(state.history, epoch, state.row)
        epoch_times.append(dt)
        state.history["_epoch_times"] = list(epoch_times)
        cbs.after_epoch(state)
        D.barrier()
    result = _final(state, test_loader, last, tta)
    cbs.after_fit(state)
    return {"history": state.history, **result, "epoch_times": epoch_times,
            "train_time_s": float(sum(epoch_times)), "warnings": list(state.warnings)}


def _evaluate_all(state: TrainState, loader, tta: str = "none") -> dict[str, dict]:
    """Evaluate every model of ``state.eval_models`` (the model, then e.g. the EMA weights)."""
    return {name: evaluate(m, loader, device=state.device, amp_dtype=state.step.amp_dtype, tta=tta)
            for name, (m, _) in state.eval_models.items()}


def _label(state: TrainState, name: str, tta: str = "none") -> str:
    what = state.eval_models[name][1]
    if tta != "none":
        return f"Test set with TTA ({tta}{', ' + what if what else ''})"
    return f"Test set ({what})" if what else "Test set"


def _validate(state: TrainState, test_loader, tr: dict[str, Any], dt: float) -> dict[str, dict]:
    """The epoch's evaluations, the plateau schedule's step, the log lines and ``state.row``."""
    results = _evaluate_all(state, test_loader)
    te = results[""]
    if isinstance(state.step.schedule, Schedule):
        state.step.schedule.after_epoch(te["test_loss"])
    logger.info("Train set: Average loss: %.4f, Accuracy: %.2f%%, last LR %.4g, %.1f s, %.0f images/s",
                tr["train_loss"], tr["train_acc"], tr["lrs"][-1] if tr["lrs"] else float("nan"), dt,
                tr["samples"] / max(dt, 1e-9))
    state.row = {**tr, **te}
    for name, res in results.items():
        logger.info(test_line(res, _label(state, name)))
        if name:
            state.row.update({f"{name}_test_loss": res["test_loss"], f"{name}_test_acc": res["test_acc"]})
    return results


def _final(state: TrainState, test_loader, last: dict[str, dict], tta: str) -> dict[str, Any]:
    """The last plain evaluations (made now for a run with nothing left to train) and the TTA ones."""
    if not last:
        last = _evaluate_all(state, test_loader)
        logger.info(test_line(last[""]))
    with_tta = _evaluate_all(state, test_loader, tta) if tta != "none" else {}
    out: dict[str, Any] = {"tta": None, "ema_final": None, "ema_tta": None}
    for name in state.eval_models:
        prefix = f"{name}_" if name else ""
        out[f"{prefix}final"] = last[name]
        if name in with_tta:
            logger.info(test_line(with_tta[name], _label(state, name, tta)))
            out[f"{prefix}tta"] = with_tta[name]
    return out


def add_epoch(history: dict[str, list], epoch: int, row: dict) -> None:
    """Append an epoch to a history (:func:`new_history`): ``row`` holds the training result
    (:func:`train_one_epoch`) and the test result (:func:`~eva8_utils.engine.evaluate`)."""
    history["epoch"].append(epoch)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        history[key].append(row[key])
    history["lr"].append(row["lrs"][-1] if row["lrs"] else float("nan"))
    for key in ("l1_loss", "ema_test_loss", "ema_test_acc"):
        if key in row:
            history.setdefault(key, []).append(row[key])
    first = len(history["steps"]) + 1
    history["steps"].extend([i, epoch, lr, loss] for i, (lr, loss) in
                            enumerate(zip(row["lrs"], row["step_losses"]), first))
