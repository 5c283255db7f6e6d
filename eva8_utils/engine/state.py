"""The loop's state and its callbacks: what one training epoch knows, in one object.

A :class:`Callback` overrides the events it needs; :class:`CallbackList` calls them in
order. The events, in the order the loop reaches them (fastai's names)::

    before_fit                                  once, before the first epoch of fit()
      before_epoch                              fit(): the epoch number is set
        before_train                            the training pass starts (model.train())
          before_step     x, y                  set state.stop = True to stop at this batch
          after_loss      out, loss             add to state.penalty (e.g. an L1 term)
          after_backward  gradients (unscaled)  clip them, drop frozen ones
          after_step      the optimizer stepped; state.log_now at each host sync
        after_train                             always, also on error (state.failed)
        after_validate    state.row             fit(): add columns to the epoch's row
      after_epoch         state.history         fit(): the row is in the history; save it
    after_fit

plus ``on_warning(state, text)`` whenever a callback calls :meth:`TrainState.warn`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import torch
import torch.nn as nn

from .evaluate import acc_dtype

logger = logging.getLogger("eva8_utils")

EVENTS = ("before_fit", "before_epoch", "before_train", "before_step", "after_loss", "after_backward",
          "after_step", "after_train", "after_validate", "after_epoch", "after_fit")


def wraps_ddp(model: nn.Module) -> bool:
    """Whether ``model`` is, or compiles, a DistributedDataParallel wrapper."""
    while not isinstance(model, nn.parallel.DistributedDataParallel):
        if not hasattr(model, "_orig_mod"):
            return False
        model = model._orig_mod
    return True


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def get_rng_state() -> dict:
    """The torch RNG states (CPU, and every CUDA device in use), for a mid-epoch checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class Callback:
    """Optional work on the loop's events; override what you need (every method gets the
    :class:`TrainState`)."""

    def before_fit(self, state: "TrainState") -> None: ...
    def before_epoch(self, state: "TrainState") -> None: ...
    def before_train(self, state: "TrainState") -> None: ...
    def before_step(self, state: "TrainState") -> None: ...
    def after_loss(self, state: "TrainState") -> None: ...
    def after_backward(self, state: "TrainState") -> None: ...
    def after_step(self, state: "TrainState") -> None: ...
    def after_train(self, state: "TrainState") -> None: ...
    def after_validate(self, state: "TrainState") -> None: ...
    def after_epoch(self, state: "TrainState") -> None: ...
    def after_fit(self, state: "TrainState") -> None: ...
    def on_warning(self, state: "TrainState", text: str) -> None: ...


class CallbackList:
    """Callbacks called in order; ``cbs.after_step(state)`` calls every ``after_step``."""

    def __init__(self, callbacks: Iterable[Callback | None] = ()):
        self.callbacks = [c for c in callbacks if c is not None]

    def __getattr__(self, event: str):
        if event not in EVENTS and event != "on_warning":
            raise AttributeError(event)

        methods = [getattr(c, event) for c in self.callbacks]

        def call(state: "TrainState", *args: Any) -> None:
            for method in methods:
                method(state, *args)
        setattr(self, event, call)  # looked up once: the training step calls events every batch
        return call

    def find(self, kind: type) -> Any:
        """The first callback of type ``kind`` (None if there is none)."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)


class TrainState:
    """What the loop knows: the objects it trains, the current epoch and batch, this
    epoch's running sums (on the device: read only at the host syncs) and, under
    :func:`~eva8_utils.engine.loop.fit`, the history and the models it evaluates.

    Callbacks read it and may change: ``penalty`` (after_loss), ``stop`` (before_step),
    ``row`` (after_validate), ``bar_note`` (a word for the progress bar), ``eval_models``
    (before_fit: more models to evaluate, e.g. the EMA weights).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, step: Any,
                 callbacks: CallbackList):
        self.model, self.optimizer, self.device, self.step, self.callbacks = model, optimizer, device, step, callbacks
        self.epoch, self.epochs, self.first_epoch = 1, 1, 1
        self.loader: Any = None
        self.n_batches = 0
        self.history: dict[str, list] | None = None
        self.row: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.bar_note = ""
        # name -> (model, label): evaluated after every epoch and at the end (with TTA)
        self.eval_models: dict[str, tuple[nn.Module, str]] = {"": (unwrap(model), "")}
        self.begin_epoch(1)

    # ------------------------------------------------------------------ the epoch's sums
    def begin_epoch(self, epoch: int, partial: dict | None = None) -> None:
        """Reset this epoch's sums (or take them back from a mid-epoch snapshot)."""
        self.epoch, dev = epoch, self.device
        acc = self.acc_dtype = acc_dtype(dev)
        self.loss_sum = torch.zeros((), device=dev, dtype=torch.float32)
        self.correct = torch.zeros((), device=dev, dtype=acc)
        self.penalty_sum = torch.zeros((), device=dev, dtype=torch.float32)
        self.first_bad = torch.full((), -1, device=dev, dtype=torch.int64)
        self.step_losses: list[torch.Tensor] = []
        self.lrs: list[float] = []
        self.seen = self.start = self.batch = 0
        self.penalty: torch.Tensor | None = None
        self.penalised = False
        self.x = self.y = self.out = self.loss = None
        self.stop = self.interrupted = self.failed = self.log_now = False
        self.t0, self.elapsed_before = time.perf_counter(), 0.0
        if partial:
            self.start = self.batch = int(partial["batch"])
            self.seen = int(partial["seen"])
            self.loss_sum = partial["loss_sum"].to(device=dev, dtype=torch.float32).clone()
            self.correct = partial["correct"].to(device=dev, dtype=acc).clone()
            self.penalty_sum = partial["l1_sum"].to(device=dev, dtype=torch.float32).clone()
            self.penalised = bool(partial.get("penalised", float(partial["l1_sum"]) != 0.0))
            self.lrs = [float(v) for v in partial["lrs"]]
            self.step_losses = [torch.tensor(float(v), device=dev) for v in partial["step_losses"]]
            self.elapsed_before = float(partial.get("elapsed_s", 0.0))

    def snapshot(self) -> dict:
        """The unfinished epoch, for a mid-epoch checkpoint (what ``partial`` takes back),
        with the RNG state and the epoch's time so far."""
        copy = dict(device="cpu", copy=True)  # on the CPU .cpu() would alias the live sums
        return {"batch": self.batch, "seen": self.seen, "loss_sum": self.loss_sum.detach().to(**copy),
                "correct": self.correct.detach().to(**copy), "l1_sum": self.penalty_sum.detach().to(**copy),
                "penalised": self.penalised, "lrs": list(self.lrs),
                "step_losses": [float(v) for v in self.step_losses], "rng": get_rng_state(),
                "elapsed_s": self.elapsed()}

    def elapsed(self) -> float:
        """Seconds this epoch has trained (including the part before a resume)."""
        return time.perf_counter() - self.t0 + self.elapsed_before

    def warn(self, text: str) -> None:
        """A warning worth keeping (said once by whoever finds it): logged, kept, and
        passed to every callback's ``on_warning``."""
        logger.warning("warning: %s", text)
        self.warnings.append(text)
        self.callbacks.on_warning(self, text)
