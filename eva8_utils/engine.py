"""Training engine: optimizers, LR schedules, train_one_epoch / evaluate / fit.

Everything is passed in and results come back as dicts; nothing here prints (log
lines go through ``logging``; bars through tqdm when ``progress`` is on).

The hot path avoids host syncs: losses and correct counts accumulate on the device
and are read only when the bar is updated (every ``log_every`` steps) and at the end
of the epoch. A non-finite loss is remembered on the device and reported at the next
read with the exact batch where it first happened.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from . import distributed as D
from .data import epoch_seed
from .errors import NonFiniteLossError, TrainingInterrupted
from .utils import atomic_write_text

logger = logging.getLogger("eva8_utils")

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULERS = ("onecycle", "linear", "cosine", "step", "exponential", "plateau", "none")
LOOKAHEAD_START_EPOCHS = 3  # slow weights start after this many epochs (airbench94)
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


def _tqdm():
    with warnings.catch_warnings():  # tqdm.auto warns when ipywidgets is missing; text bars are fine
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm


# ---------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------
def classifier_head(model: nn.Module) -> nn.Linear | None:
    """The classifier layer: the last ``nn.Linear`` in module order (None if there is none)."""
    head = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            head = m
    return head


def param_groups(model: nn.Module, lr: float, weight_decay: float, bias_lr_scale: float = 1.0,
                 head_lr_scale: float = 1.0, muon: bool = False) -> list[dict]:
    """Trainable parameters in up to three groups: weights (ndim > 1), the classifier head's
    weight (when ``head_lr_scale`` != 1, and always for ``muon``) and biases/norm parameters.

    A group with an LR multiplier ``s`` gets ``lr * s`` and ``weight_decay / s``, so its
    per-step decay is unchanged while it learns faster (the speed-record trick).
    Parameters a model names in ``base_lr_params`` (e.g. fastnet's whitening bias) stay
    in the weights group, except under ``muon``, whose weights group (marked
    ``muon=True``, no weight decay) takes matrices only.
    """
    base = set(getattr(model, "base_lr_params", ()))
    head = classifier_head(model) if head_lr_scale != 1.0 or muon else None
    head_ids = {id(head.weight)} if head is not None else set()
    weights, heads, others = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in head_ids:
            heads.append(p)
        elif p.ndim > 1 or (name in base and not muon):
            weights.append(p)
        else:
            others.append(p)
    first = dict(params=weights, lr=lr, weight_decay=0.0, muon=True) if muon else \
        dict(params=weights, lr=lr, weight_decay=weight_decay)
    groups = [first,
              dict(params=heads, lr=lr * head_lr_scale, weight_decay=weight_decay / head_lr_scale),
              dict(params=others, lr=lr * bias_lr_scale, weight_decay=weight_decay / bias_lr_scale)]
    return [g for g in groups if g["params"]]


def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise a 2-D matrix (its singular values pushed toward 1) with
    the quintic Newton-Schulz iteration of Muon (Jordan et al. 2024), in bf16 where fast."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16 if g.device.type in ("cuda", "cpu") else torch.float32)
    x = x / (x.norm() + eps)  # top singular value <= 1
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return (x.T if tall else x).to(g.dtype)


class MuonSGD(torch.optim.Optimizer):
    """Muon for the weight matrices (convolution filters flattened to out x in*k*k) and SGD
    with Nesterov momentum for everything else, as airbench94_muon trains.

    Groups with ``muon=True``: the momentum buffer (Nesterov) is orthogonalised by
    :func:`newton_schulz` and applied with ``lr``; before each step the weight is rescaled
    to Frobenius norm sqrt(out) (no weight decay there). Other groups follow torch's SGD
    rule (weight decay in the gradient, momentum buffer starting at the first gradient).
    ``torch.optim.Muon`` (torch >= 2.9) accepts 2-D parameters only, so it cannot take
    convolution filters; this class works on any torch version.
    """

    def __init__(self, groups: list[dict], lr: float, momentum: float = 0.85, muon_momentum: float = 0.6,
                 nesterov: bool = True, ns_steps: int = 3):
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0, muon=False,
                                      ns_steps=ns_steps))
        for g in self.param_groups:
            if g["muon"]:
                g["momentum"] = muon_momentum

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mom, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if group["muon"]:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.zeros_like(g)
                    buf.mul_(mom).add_(g)
                    g = g.add(buf, alpha=mom) if nesterov else buf
                    p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
                    p.add_(newton_schulz(g.reshape(len(g), -1), group["ns_steps"]).view_as(p), alpha=-lr)
                    continue
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if mom:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.clone()
                    else:
                        buf.mul_(mom).add_(g)
                    g = g.add(buf, alpha=mom) if nesterov else buf
                p.add_(g, alpha=-lr)
        return loss


def make_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.1, momentum: float = 0.9,
                   nesterov: bool = True, weight_decay: float = 5e-4,
                   bias_lr_scale: float = 1.0, head_lr_scale: float = 1.0,
                   muon_momentum: float = 0.6) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam, AdamW or Muon over :func:`param_groups`.

    Args:
        model: the model whose trainable parameters are optimised.
        name: ``sgd`` | ``adam`` | ``adamw`` | ``muon`` (:class:`MuonSGD`: Muon for the
            weights except the classifier head, SGD for the head and the biases).
        lr: learning rate of the weight group (Muon's LR for ``muon``).
        momentum: SGD momentum, or Adam's beta1.
        nesterov: Nesterov momentum (SGD/Muon; needs momentum > 0).
        weight_decay: L2 penalty (decoupled for AdamW; not applied to Muon's weights).
        bias_lr_scale: LR multiplier of biases and norm parameters.
        head_lr_scale: LR multiplier of the classifier head's weight (always its own SGD
            group under ``muon``).
        muon_momentum: momentum of Muon's weights.
    """
    if name == "muon":
        groups = param_groups(model, lr, weight_decay, bias_lr_scale, head_lr_scale, muon=True)
        return MuonSGD(groups, lr=lr, momentum=momentum, muon_momentum=muon_momentum, nesterov=nesterov and momentum > 0)
    groups = param_groups(model, lr, weight_decay, bias_lr_scale, head_lr_scale)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def optimizer_from_config(model: nn.Module, cfg: Any, lr: float | None = None) -> torch.optim.Optimizer:
    """:func:`make_optimizer` with the config's settings (``lr`` overrides ``cfg.lr``)."""
    lr = float(cfg.lr) if lr is None else float(lr)
    return make_optimizer(model, cfg.optimizer, lr, cfg.momentum, cfg.nesterov, cfg.weight_decay,
                          cfg.bias_lr_scale, cfg.head_lr_scale, cfg.muon_momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the LR of the first group to ``lr``, keeping the other groups' ratios to it."""
    base = optimizer.param_groups[0]["lr"]
    for g in optimizer.param_groups:
        g["lr"] = lr * (g["lr"] / base if base > 0 else 1.0)
        if "initial_lr" in g:
            del g["initial_lr"]


# ---------------------------------------------------------------------------------------
# LR schedules
# ---------------------------------------------------------------------------------------
class Schedule:
    """Every LR policy behind two calls: :meth:`after_batch` after each optimizer step
    and :meth:`after_epoch` with the test loss after each evaluation.

    - ``onecycle``: the one-cycle policy (as torch's OneCycleLR, but valid for any number
      of steps), per batch: warm-up from lr/div_factor to lr, then down to
      lr/(div_factor*final_div_factor); optionally cycles momentum 0.95 <-> 0.85.
    - ``linear``: per-step linear decay to 0 over the run (airbench94_muon).
    - ``cosine``: per-step cosine decay to 0 over the run.
    - ``step``: multiply by ``step_gamma`` every ``step_size`` epochs.
    - ``exponential``: multiply by ``exp_gamma`` every epoch.
    - ``plateau``: :class:`ReduceLROnPlateau` on the test loss, once per epoch.
    - ``none``: constant.

    All but onecycle take a linear per-step warm-up of ``warmup_epochs``. Each param
    group keeps its own base LR (see :func:`param_groups`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, name: str = "none", *, epochs: int,
                 steps_per_epoch: int, pct_start: float = 0.25, div_factor: float = 10.0,
                 final_div_factor: float = 100.0, anneal: str = "linear", cycle_momentum: bool = False,
                 warmup_epochs: float = 0.0, step_size: int = 10, step_gamma: float = 0.1,
                 exp_gamma: float = 0.95, plateau_patience: int = 2, plateau_factor: float = 0.1,
                 plateau_threshold: float = 1e-4, min_lr: float = 0.0):
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
        self.optimizer, self.name = optimizer, name
        self.epochs, self.steps_per_epoch = epochs, max(1, steps_per_epoch)
        self.total_steps = epochs * self.steps_per_epoch
        self.warmup_steps = 0 if name == "onecycle" else int(round(warmup_epochs * self.steps_per_epoch))
        self.step_size, self.step_gamma, self.exp_gamma = step_size, step_gamma, exp_gamma
        self.pct_start, self.div_factor, self.final_div_factor = pct_start, div_factor, final_div_factor
        self.anneal, self.cycle_momentum = anneal, cycle_momentum
        self.steps = 0
        self.base = [g["lr"] for g in optimizer.param_groups]
        self._sched: Any = None
        if name == "plateau":
            self._sched = ReduceLROnPlateau(optimizer, mode="min", factor=plateau_factor,
                                            patience=plateau_patience, threshold=plateau_threshold,
                                            min_lr=min_lr)
            self._apply_warmup()
        else:
            self._sched = LambdaLR(optimizer, self._factor)
            if name == "onecycle" and cycle_momentum:
                self._set_momentum()

    def _warm(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0

    def _interp(self, a: float, b: float, t: float) -> float:
        if self.anneal == "cos":
            return b + (a - b) * 0.5 * (1 + math.cos(math.pi * t))
        return a + (b - a) * t

    def _onecycle(self, step: int) -> tuple[float, float]:
        """(LR factor, position) of the one-cycle policy: up from 1/div_factor to 1 over
        ``pct_start`` of the steps, then down to 1/(div_factor*final_div_factor) at the
        last step; position is 0..1 in the warm-up and 1..2 in the decay."""
        up = max(1, int(round(self.pct_start * self.total_steps)))
        start = 1.0 / self.div_factor
        end = start / self.final_div_factor
        if step < up:
            t = step / up
            return self._interp(start, 1.0, t), t
        t = min(1.0, (step - up) / max(1, self.total_steps - 1 - up))
        return self._interp(1.0, end, t), 1.0 + t

    def _set_momentum(self) -> None:
        """With ``cycle_momentum``: momentum 0.95 -> 0.85 while the LR rises, then back."""
        _, pos = self._onecycle(self.steps)
        m = self._interp(0.95, 0.85, pos) if pos <= 1 else self._interp(0.85, 0.95, pos - 1)
        for g in self.optimizer.param_groups:
            if "betas" in g:
                g["betas"] = (m, g["betas"][1])
            elif "momentum" in g:
                g["momentum"] = m

    def _factor(self, step: int) -> float:
        """LR multiplier for the step about to be taken (``step`` steps done so far)."""
        epoch = step // self.steps_per_epoch
        if self.name == "onecycle":
            return self._onecycle(step)[0]
        if self.name in ("cosine", "linear"):
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(max(step - self.warmup_steps, 0), span) / span
            f = 0.5 * (1 + math.cos(math.pi * t)) if self.name == "cosine" else 1.0 - t
        elif self.name == "step":
            f = self.step_gamma ** (epoch // self.step_size)
        elif self.name == "exponential":
            f = self.exp_gamma ** epoch
        else:
            f = 1.0
        return f * self._warm(step)

    def _apply_warmup(self) -> None:
        if self.warmup_steps and self.steps <= self.warmup_steps:
            for g, b in zip(self.optimizer.param_groups, self.base):
                g["lr"] = b * self._warm(self.steps)

    def after_batch(self) -> None:
        self.steps += 1
        if self.name == "plateau":
            self._apply_warmup()
        else:
            self._sched.step()
            if self.name == "onecycle" and self.cycle_momentum:
                self._set_momentum()

    def after_epoch(self, test_loss: float) -> None:
        if self.name != "plateau":
            return
        before = [g["lr"] for g in self.optimizer.param_groups]
        self._sched.step(test_loss)
        # A drop during warm-up lowers the warm-up's target as well.
        self.base = [b * (g["lr"] / lb if lb > 0 else 1.0)
                     for b, g, lb in zip(self.base, self.optimizer.param_groups, before)]

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {"name": self.name, "steps": self.steps, "base": list(self.base),
                "total_steps": self.total_steps, "sched": self._sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name or (schedule_depends_on_length(self.name)
                                               and state.get("total_steps") != self.total_steps):
            raise ValueError(f"schedule mismatch: checkpoint has {state.get('name')} over "
                             f"{state.get('total_steps')} steps, this run {self.name} over {self.total_steps}")
        self.steps, self.base = int(state["steps"]), list(state["base"])
        self._sched.load_state_dict(state["sched"])
        if self.name == "onecycle" and self.cycle_momentum:
            self._set_momentum()


def schedule_from_config(optimizer: torch.optim.Optimizer, cfg: Any, steps_per_epoch: int) -> Schedule:
    """A :class:`Schedule` with the config's settings."""
    return Schedule(optimizer, cfg.scheduler, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                    pct_start=cfg.pct_start, div_factor=cfg.div_factor,
                    final_div_factor=cfg.final_div_factor, anneal=cfg.anneal,
                    cycle_momentum=cfg.cycle_momentum, warmup_epochs=cfg.warmup_epochs,
                    step_size=cfg.step_size, step_gamma=cfg.step_gamma, exp_gamma=cfg.exp_gamma,
                    plateau_patience=cfg.plateau_patience, plateau_factor=cfg.plateau_factor,
                    plateau_threshold=cfg.plateau_threshold, min_lr=cfg.min_lr)


def schedule_depends_on_length(name: str) -> bool:
    """Whether the schedule's LR at a given step depends on the total number of epochs."""
    return name in ("onecycle", "linear", "cosine")


class Lookahead:
    """Slow weights as in airbench94 (after Zhang et al. 2019's Lookahead).

    From ``start_step`` on, every ``every`` steps the slow copy moves toward the current
    weights by ``1 - decay`` and the weights restart from it; ``decay`` grows as
    ``max_decay * progress**3`` (no averaging early, strong averaging late). At the end
    of every epoch :meth:`sync` sets the weights to the slow copy, so each evaluation and
    the final model use the slow weights. Floating-point buffers (BatchNorm statistics)
    are averaged with the weights. airbench94 starts after 3 epochs.
    """

    def __init__(self, model: nn.Module, every: int = 5, max_decay: float = 0.95 ** 5, start_step: int = 0):
        self.every, self.max_decay, self.start_step = every, max_decay, int(start_step)
        self.slow: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, progress: float) -> None:
        """Call after every optimizer step; ``step`` counts from 1, ``progress`` is in [0, 1]."""
        if step < self.start_step or step % self.every:
            return
        current = model.state_dict()
        if self.slow is None:  # the first visit takes a copy (airbench94's LookaheadState)
            self.slow = {k: v.detach().clone() for k, v in current.items() if v.is_floating_point()}
            return
        decay = self.max_decay * min(max(progress, 0.0), 1.0) ** 3
        for k, slow in self.slow.items():
            slow.lerp_(current[k], 1 - decay)
            current[k].copy_(slow)

    @torch.no_grad()
    def sync(self, model: nn.Module) -> None:
        """Set the weights to the slow copy (once there is one)."""
        if self.slow is None:
            return
        current = model.state_dict()
        for k, slow in self.slow.items():
            current[k].copy_(slow)

    def state_dict(self) -> dict:
        return {"every": self.every, "max_decay": self.max_decay, "start_step": self.start_step, "slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        self.every, self.max_decay = int(state["every"]), float(state["max_decay"])
        self.start_step = int(state.get("start_step", 0))
        slow = state.get("slow")
        self.slow = None if slow is None else {k: v.detach().clone() for k, v in slow.items()}


# ---------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------
def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = full fp32).

    ``auto``: bf16 on CUDA when supported (else fp16), bf16 on CPUs with native bf16,
    fp32 elsewhere (MPS, older CPUs).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): then bf16 autocast
    roughly doubles training speed; elsewhere it would be emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_scaler(device: torch.device, amp_dtype: torch.dtype | None):
    """A GradScaler for fp16 on CUDA, else None."""
    if amp_dtype == torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def l1_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The weights an L1 penalty applies to: trainable tensors with more than one dimension."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim > 1]


# ---------------------------------------------------------------------------------------
# One epoch of training
# ---------------------------------------------------------------------------------------
def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *,
                    device: torch.device, schedule: Schedule | None = None,
                    label_smoothing: float = 0.0, l1: float = 0.0, grad_clip: float = 0.0,
                    grad_clip_mode: str = "norm", amp_dtype: torch.dtype | None = None, scaler=None,
                    epoch: int = 1, progress: bool = True, log_every: int = 10,
                    stop: Callable[[], bool] | None = None,
                    on_step: Callable[[int], None] | None = None,
                    lookahead: Lookahead | None = None,
                    frozen: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: the model (possibly DDP/compiled); put in train mode here.
        loader: yields (x, y) batches on ``device``.
        optimizer: the optimizer.
        device: the training device.
        schedule: stepped after every batch (``after_batch``).
        label_smoothing: label smoothing of the training cross-entropy.
        l1: lambda of an L1 penalty on :func:`l1_parameters`, added to the backpropagated loss.
        grad_clip: max global grad norm (``norm``) or max |grad| (``value``); 0 = off.
        amp_dtype: autocast dtype, None for fp32.
        scaler: GradScaler for fp16.
        epoch: 1-based epoch number, for the bar and error messages.
        progress: show a tqdm bar.
        log_every: steps between bar updates / device syncs.
        stop: polled before each batch; True stops the epoch early (interrupt).
        on_step: called with the 1-based batch index after each step.
        lookahead: slow weights updated after each step (needs ``schedule`` for progress).
        frozen: parameters left unchanged this epoch (their gradient is dropped before the
            step, which works under DDP too).

    Returns:
        dict with ``train_loss`` (per-sample mean of the data loss), ``train_acc`` (%),
        ``l1_loss`` (mean penalty per step), ``samples``, ``batches``, ``lrs`` (LR of
        each step), ``step_losses`` (each step's mean data loss) and ``interrupted``.

    Raises:
        NonFiniteLossError: a NaN/inf loss, naming the epoch and batch.
    """
    model.train()
    n_batches = len(loader)
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    l1_sum = torch.zeros((), device=device, dtype=torch.float32)
    first_bad = torch.full((), -1, device=device, dtype=torch.int64)
    step_losses: list[torch.Tensor] = []
    lrs: list[float] = []
    seen = 0
    l1_params = l1_parameters(model) if l1 > 0 else []
    clip_params = [p for p in model.parameters() if p.requires_grad] if grad_clip > 0 else []
    bar = _tqdm()(total=n_batches, disable=not progress, leave=True, dynamic_ncols=True)
    interrupted, batch = False, 0
    try:
        for batch, (x, y) in enumerate(loader, 1):
            if stop is not None and stop():
                interrupted, batch = True, batch - 1
                break
            lrs.append(float(optimizer.param_groups[0]["lr"]))
            with _autocast(device, amp_dtype):
                out = model(x)
                loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            total = loss.float()
            if l1_params:
                penalty = l1 * torch.stack([p.abs().sum() for p in l1_params]).sum()
                total = total + penalty
                l1_sum += penalty.detach()
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                if clip_params:
                    scaler.unscale_(optimizer)
            else:
                total.backward()
            for p in frozen or ():
                p.grad = None
            if clip_params:
                if grad_clip_mode == "norm":
                    torch.nn.utils.clip_grad_norm_(clip_params, grad_clip)
                else:
                    torch.nn.utils.clip_grad_value_(clip_params, grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if schedule is not None:
                schedule.after_batch()
                if lookahead is not None:
                    lookahead.step(unwrap(model), schedule.steps, schedule.steps / schedule.total_steps)
            with torch.no_grad():
                bs = y.shape[0]
                seen += bs
                ld = loss.detach().float()
                step_losses.append(ld)
                loss_sum += ld * bs
                correct += (out.argmax(1) == y).sum()
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(total.detach()),
                                        torch.full_like(first_bad, batch), first_bad)
            if on_step is not None:
                on_step(batch)
            if batch % log_every == 0 or batch == n_batches:
                bad = int(first_bad)  # the one host sync per log_every steps
                if bad >= 0:
                    raise NonFiniteLossError(epoch, bad, lrs[bad - 1])
                if progress:
                    bar.set_description(
                        f"Loss={ld.item():.4f} Batch_id={batch} LR={lrs[-1]:.5f} "
                        f"Accuracy={100.0 * int(correct) / seen:.2f}", refresh=False)
                    bar.update(batch - bar.n)
    finally:
        bar.close()
    if seen and int(first_bad) >= 0:
        raise NonFiniteLossError(epoch, int(first_bad), lrs[int(first_bad) - 1])
    stats = D.all_reduce_sum(torch.stack([loss_sum.double(), correct.double(),
                                          torch.tensor(float(seen), device=device, dtype=torch.float64)]))
    total_seen = max(float(stats[2]), 1.0)
    return {
        "train_loss": float(stats[0]) / total_seen,
        "train_acc": 100.0 * float(stats[1]) / total_seen,
        "l1_loss": float(l1_sum) / max(len(lrs), 1),
        "samples": int(stats[2]),
        "batches": len(lrs),
        "lrs": lrs,
        "step_losses": torch.stack(step_losses).tolist() if step_losses else [],
        "interrupted": interrupted,
        "last_batch": batch,
    }


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------
def tta_logits(model: nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits with test-time augmentation.

    ``flip``: mean of the image and its mirror. ``flip_translate``: half that, half the
    flip-averaged logits of the image shifted by one pixel up-left and down-right
    (reflect padding), as in the CIFAR-10 speed records.
    """
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
def evaluate(model: nn.Module, loader, *, device: torch.device, amp_dtype: torch.dtype | None = None,
             tta: str = "none") -> dict[str, Any]:
    """Test loss (true per-sample mean of plain cross-entropy) and accuracy.

    Under torchrun each rank evaluates its shard and the sums are reduced, so every
    test image is counted exactly once. The model's train/eval mode is restored.

    Returns:
        dict with ``test_loss``, ``test_acc`` (%), ``correct`` and ``total``.
    """
    was_training = model.training
    model.eval()
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64
    loss_sum = torch.zeros((), device=device, dtype=acc_dtype)
    correct = torch.zeros((), device=device, dtype=acc_dtype)
    total = torch.zeros((), device=device, dtype=acc_dtype)
    try:
        for x, y in loader:
            with _autocast(device, amp_dtype):
                out = tta_logits(model, x, tta)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").to(acc_dtype)
            correct += (out.argmax(1) == y).sum().to(acc_dtype)
            total += y.shape[0]
    finally:
        model.train(was_training)
    stats = D.all_reduce_sum(torch.stack([loss_sum, correct, total]))
    n = max(float(stats[2]), 1.0)
    return {"test_loss": float(stats[0]) / n, "test_acc": 100.0 * float(stats[1]) / n,
            "correct": int(round(float(stats[1]))), "total": int(round(float(stats[2])))}


@torch.no_grad()
def predict(model: nn.Module, loader, *, device: torch.device, amp_dtype: torch.dtype | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and labels (N,) on the CPU for every sample of a (test) loader, in order."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for x, y in loader:
            with _autocast(device, amp_dtype):
                logits.append(model(x).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def test_line(result: dict[str, Any], label: str = "Test set") -> str:
    """'Test set: Average loss: 0.4123, Accuracy: 8734/10000 (87.34%)'."""
    return (f"{label}: Average loss: {result['test_loss']:.4f}, Accuracy: "
            f"{result['correct']}/{result['total']} ({result['test_acc']:.2f}%)")


# ---------------------------------------------------------------------------------------
# History files
# ---------------------------------------------------------------------------------------
def new_history() -> dict[str, list]:
    """Empty history: per-epoch columns plus per-step ``steps`` (step, epoch, lr, loss)."""
    h: dict[str, list] = {c: [] for c in HISTORY_COLUMNS}
    h["steps"] = []
    return h


def history_csv(history: dict[str, list]) -> str:
    cols = [c for c in history if c != "steps" and not c.startswith("_")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for i in range(len(history["epoch"])):
        w.writerow([_fmt(history[c][i]) for c in cols])
    return buf.getvalue()


def steps_csv(history: dict[str, list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "epoch", "lr", "loss"])
    for row in history["steps"]:
        w.writerow([row[0], row[1], _fmt(row[2]), _fmt(row[3])])
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    return repr(float(v)) if isinstance(v, float) else v


def read_history_csv(path: str | Path) -> dict[str, list]:
    """history.csv -> dict of column lists (numbers parsed)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list] = {k: [] for k in (rows[0].keys() if rows else HISTORY_COLUMNS)}
    for r in rows:
        for k, v in r.items():
            out[k].append(int(v) if k == "epoch" else float(v))
    return out


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------
def fit(model: nn.Module, train_loader, test_loader, optimizer: torch.optim.Optimizer,
        schedule: Schedule | None, cfg: Any, *, device: torch.device, run_dir: str | Path | None = None,
        scaler=None, start_epoch: int = 0, history: dict[str, list] | None = None,
        stop: Callable[[], bool] | None = None, checkpoint_meta: dict | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        lookahead: Lookahead | None = None) -> dict[str, Any]:
    """Train for ``cfg.epochs`` epochs (from ``start_epoch``), evaluating after each.

    Per epoch it logs ``EPOCH: k/n``, shows the bar, logs the ``Test set: ...`` line,
    appends to the history and, with ``run_dir``, writes ``history.csv``,
    ``steps.csv``, ``metrics.json`` and ``checkpoints/last.pt`` (+ ``best.pt`` on a new
    best test accuracy), all atomically. After the last epoch the TTA accuracy (if
    ``cfg.tta``) is measured and reported next to the plain one.

    Settings read from ``cfg``: epochs, seed, label_smoothing, l1, grad_clip,
    grad_clip_mode, precision, log_every, progress, tta, lookahead (a
    :class:`Lookahead` is made when ``cfg.lookahead`` is on and none is passed in; pass
    the resumed one when continuing a run).

    Returns:
        dict with ``history``, ``final`` (last plain evaluation), ``tta`` (or None),
        ``epoch_times`` and ``train_time_s`` of this call.

    Raises:
        NonFiniteLossError: a NaN/inf loss (nothing of that epoch is saved).
        TrainingInterrupted: ``stop()`` turned true; the last completed epoch is saved.
    """
    from .checkpoint import save_training_state

    history = history if history is not None else new_history()
    amp_dtype = autocast_dtype(device, cfg.precision)
    rank0 = D.is_main()
    run_dir = Path(run_dir) if run_dir is not None and rank0 else None
    eval_model = unwrap(model)
    if lookahead is None and getattr(cfg, "lookahead", False):
        lookahead = Lookahead(eval_model, start_step=LOOKAHEAD_START_EPOCHS * len(train_loader))
    best = max(history["test_acc"], default=-1.0)
    epoch_times: list[float] = list(history.get("_epoch_times", []))
    final = None
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        # Dropout and any other global randomness: a pure function of (seed, epoch, rank).
        torch.manual_seed(epoch_seed(cfg.seed, epoch, salt=1 + D.rank()))
        train_loader.set_epoch(epoch)
        frozen = eval_model.frozen_parameters(epoch) if hasattr(eval_model, "frozen_parameters") else []
        logger.info("EPOCH: %d/%d", epoch, cfg.epochs)
        t0 = time.perf_counter()
        tr = train_one_epoch(model, train_loader, optimizer, device=device, schedule=schedule,
                             label_smoothing=cfg.label_smoothing, l1=cfg.l1, grad_clip=cfg.grad_clip,
                             grad_clip_mode=cfg.grad_clip_mode, amp_dtype=amp_dtype, scaler=scaler,
                             epoch=epoch, progress=cfg.progress and rank0, log_every=cfg.log_every,
                             stop=stop, lookahead=lookahead, frozen=frozen)
        if lookahead is not None:
            lookahead.sync(eval_model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if tr["interrupted"]:
            raise TrainingInterrupted(epoch, tr["last_batch"], epoch - 1)
        te = evaluate(eval_model, test_loader, device=device, amp_dtype=amp_dtype)
        if schedule is not None:
            schedule.after_epoch(te["test_loss"])
        logger.info("Train set: Average loss: %.4f, Accuracy: %.2f%%, last LR %.4g, %.1f s",
                    tr["train_loss"], tr["train_acc"], tr["lrs"][-1] if tr["lrs"] else float("nan"), dt)
        logger.info(test_line(te))
        _append(history, epoch, tr, te, cfg.l1 > 0)
        epoch_times.append(dt)
        history["_epoch_times"] = list(epoch_times)
        final = te
        is_best = te["test_acc"] > best
        best = max(best, te["test_acc"])
        if run_dir is not None:
            save_training_state(run_dir, model=eval_model, optimizer=optimizer, schedule=schedule,
                                scaler=scaler, epoch=epoch, history=history, config=cfg.to_dict(),
                                meta=checkpoint_meta or {}, is_best=is_best, lookahead=lookahead)
            write_run_files(run_dir, history, cfg, status="running", device=device)
        D.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch, {**tr, **te})
    if final is None:  # nothing left to train (resumed a finished run)
        final = evaluate(eval_model, test_loader, device=device, amp_dtype=amp_dtype)
        logger.info(test_line(final))
    tta = None
    if cfg.tta != "none":
        tta = evaluate(eval_model, test_loader, device=device, amp_dtype=amp_dtype, tta=cfg.tta)
        logger.info(test_line(tta, f"Test set with TTA ({cfg.tta})"))
    if run_dir is not None:  # training is over: a notebook run's folder must not say "running"
        write_run_files(run_dir, history, cfg, status="done", device=device, extra=tta_metrics(tta, cfg.tta))
    return {"history": history, "final": final, "tta": tta, "epoch_times": epoch_times,
            "train_time_s": float(sum(epoch_times))}


def _append(history: dict[str, list], epoch: int, tr: dict, te: dict, with_l1: bool) -> None:
    history["epoch"].append(epoch)
    history["train_loss"].append(tr["train_loss"])
    history["train_acc"].append(tr["train_acc"])
    history["test_loss"].append(te["test_loss"])
    history["test_acc"].append(te["test_acc"])
    history["lr"].append(tr["lrs"][-1] if tr["lrs"] else float("nan"))
    if with_l1:
        history.setdefault("l1_loss", []).append(tr["l1_loss"])
    first = len(history["steps"]) + 1
    history["steps"].extend([i, epoch, lr, loss] for i, (lr, loss) in
                            enumerate(zip(tr["lrs"], tr["step_losses"]), first))


def tta_metrics(tta: dict[str, Any] | None, mode: str) -> dict[str, Any]:
    """The metrics.json entries of a TTA evaluation (none without one)."""
    if tta is None:
        return {}
    return {"test_acc_tta": tta["test_acc"], "test_loss_tta": tta["test_loss"], "tta": mode}


def write_run_files(run_dir: str | Path, history: dict[str, list], cfg: Any, *, status: str,
                    device: torch.device | None = None, extra: dict | None = None) -> dict:
    """Write history.csv, steps.csv and metrics.json (atomically); return the metrics."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "history.csv", history_csv(history))
    atomic_write_text(run_dir / "steps.csv", steps_csv(history))
    times = history.get("_epoch_times", [])
    metrics: dict[str, Any] = {"status": status, "model": cfg.model, "dataset": cfg.dataset,
                               "epochs": len(history["epoch"]), "epochs_planned": cfg.epochs}
    if history["epoch"]:
        i_best = max(range(len(history["test_acc"])), key=lambda i: history["test_acc"][i])
        metrics.update(test_acc=history["test_acc"][-1], test_loss=history["test_loss"][-1],
                       train_acc=history["train_acc"][-1], train_loss=history["train_loss"][-1],
                       best_test_acc=history["test_acc"][i_best], best_epoch=history["epoch"][i_best])
    if times:
        metrics.update(train_time_s=round(float(sum(times)), 3), epoch_time_s=round(float(sum(times) / len(times)), 3))
    if device is not None:
        from .utils import device_description

        metrics["device"] = device_description(device)
    metrics.update(extra or {})
    write_json(run_dir / "metrics.json", metrics)
    return metrics
