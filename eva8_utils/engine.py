"""Training engine: optimizers, LR schedules, precision, train_one_epoch / evaluate / fit.

The mechanism only: everything is passed in and results come back as dicts. It knows
no config object and no folder layout; whoever calls :func:`fit` (the CLI, the
notebook, a benchmark, a user) saves what it wants through :class:`FitHooks`. Nothing
here prints (log lines go through ``logging``; bars through tqdm when ``progress`` is on).

The hot path avoids host syncs: losses and correct counts accumulate on the device
and are read only when the bar is updated (every ``log_every`` steps) and at the end
of the epoch. A non-finite loss is remembered on the device and reported at the next
read with the exact batch where it first happened.

Randomness: every epoch reseeds torch from ``(seed, epoch, rank)`` and the loaders draw
their permutation and augmentations from ``(seed, epoch)``, so a run resumed at an
epoch boundary repeats exactly; an epoch resumed in the middle restores the RNG state
saved with it (see ``partial`` in :func:`train_one_epoch`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from . import distributed as D
from .config import CLIP_MODES, TTA_MODES
from .data import epoch_seed
from .errors import NonFiniteLossError, TrainingInterrupted

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
    ``muon=True``, no weight decay) takes matrices only. Parameters a model lists in
    ``lr_to_zero()`` ({name: N}, e.g. fastnet's whitening bias with ``whiten_bias_lr=
    "linear"``) get a group of their own with the settings of the group they would join
    and ``zero_after_epochs=N``: :class:`Schedule` lowers its LR linearly to 0 over the
    first N epochs instead of applying the run's schedule.
    """
    to_zero = model.lr_to_zero() if hasattr(model, "lr_to_zero") else {}
    base = set(getattr(model, "base_lr_params", ()))
    head = classifier_head(model) if head_lr_scale != 1.0 or muon else None
    head_ids = {id(head.weight)} if head is not None else set()
    weights, heads, others = [], [], []
    alone: list[tuple[str, nn.Parameter, list]] = []  # (name, parameter, the group it would join)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in head_ids:
            into = heads
        elif p.ndim > 1 or (name in base and not muon):
            into = weights
        else:
            into = others
        if name in to_zero:
            alone.append((name, p, into))
        else:
            into.append(p)
    first = dict(params=weights, lr=lr, weight_decay=0.0, muon=True) if muon else \
        dict(params=weights, lr=lr, weight_decay=weight_decay)
    groups = [first,
              dict(params=heads, lr=lr * head_lr_scale, weight_decay=weight_decay / head_lr_scale),
              dict(params=others, lr=lr * bias_lr_scale, weight_decay=weight_decay / bias_lr_scale)]
    for name, p, into in alone:
        like = next(g for g in groups if g["params"] is into)
        groups.append({**like, "params": [p], "zero_after_epochs": int(to_zero[name])})
    return [g for g in groups if g["params"]]


def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise a 2-D matrix (its singular values pushed toward 1) with
    the quintic Newton-Schulz iteration of Muon (Jordan et al. 2024), in bf16 where the
    precision rule (:func:`choose_precision`) finds it fast, else in fp32 (T4, V100, other CPUs)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16 if _fast_bf16(g.device) else torch.float32)
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
            self._sched = LambdaLR(optimizer, [self._group_factor(g) for g in optimizer.param_groups])
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

    def _to_zero(self, group: dict, step: int) -> float:
        """LR multiplier of a ``zero_after_epochs`` group: 1 at step 0, linearly down to 0 at its end."""
        span = max(1, int(group["zero_after_epochs"]) * self.steps_per_epoch)
        return max(0.0, 1.0 - step / span)

    def _group_factor(self, group: dict) -> Callable[[int], float]:
        if group.get("zero_after_epochs"):
            return lambda step: self._to_zero(group, step)
        return self._factor

    def _apply_warmup(self) -> None:
        for g, b in zip(self.optimizer.param_groups, self.base):
            if g.get("zero_after_epochs"):
                g["lr"] = b * self._to_zero(g, self.steps)
            elif self.warmup_steps and self.steps <= self.warmup_steps:
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
# Precision: one rule for every face (CLI, notebook, benchmarks)
# ---------------------------------------------------------------------------------------
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
def _fast_bf16(device: torch.device) -> bool:
    """Whether the precision rule picks bf16 on ``device`` (asked once per device)."""
    return choose_precision(device).dtype is torch.bfloat16


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): then bf16 autocast
    roughly doubles training speed; elsewhere it would be emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_scaler(device: torch.device, precision: Precision):
    """A GradScaler when the precision needs one (fp16), else None."""
    if not precision.scaler:
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _wraps_ddp(model: nn.Module) -> bool:
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


# ---------------------------------------------------------------------------------------
# One epoch of training
# ---------------------------------------------------------------------------------------
def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *,
                    device: torch.device, schedule: Schedule | None = None,
                    label_smoothing: float = 0.0, l1: float = 0.0, grad_clip: float = 0.0,
                    grad_clip_mode: str = "norm", amp_dtype: torch.dtype | None = None, scaler=None,
                    epoch: int = 1, progress: bool = True, log_every: int = 10,
                    stop: Callable[[], bool] | None = None,
                    on_step: Callable[[int, Callable[[], dict]], None] | None = None,
                    lookahead: Lookahead | None = None, ema=None,
                    frozen: list[torch.Tensor] | None = None, partial: dict | None = None,
                    monitor: DivergenceMonitor | None = None) -> dict[str, Any]:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: the model (possibly DDP/compiled); put in train mode here.
        loader: yields (x, y) batches on ``device``; ``y`` holds class indices, or soft
            targets (B, classes) when batches are mixed (MixUp/CutMix).
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
        on_step: called after each step with the 1-based batch index and a function that
            returns this epoch's progress so far (what ``partial`` takes back).
        lookahead: slow weights updated after each step (needs ``schedule`` for progress).
        ema: an averaged model (:func:`make_ema`) updated after each step.
        frozen: parameters left unchanged this epoch. Outside DDP they stop requiring a
            gradient for the epoch, so autograd also skips the backward that only fed them
            (fastnet's frozen whitening bias: the input gradient of ``block1.conv1`` and the
            GELU under it); under DDP, whose reducer waits for every parameter that requires
            one, their gradient is dropped before the step. The numbers are the same.
        partial: continue an epoch from what ``on_step``'s function returned (the loader
            must offer ``iterate(start)``, as :class:`~eva8_utils.data.DeviceLoader` does).
        monitor: a :class:`DivergenceMonitor` fed at every bar update.

    Returns:
        dict with ``train_loss`` (per-sample mean of the data loss), ``train_acc`` (%; under
        mixing, the target mass on the predicted class), ``l1_loss`` (mean penalty per
        step), ``samples``, ``batches``, ``lrs`` (LR of each step), ``step_losses`` (each
        step's mean data loss), ``interrupted``, ``last_batch`` and ``warning``.

    Raises:
        NonFiniteLossError: a NaN/inf loss, naming the epoch and batch.
    """
    model.train()
    n_batches = len(loader)
    acc = _acc_dtype(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    correct = torch.zeros((), device=device, dtype=acc)
    l1_sum = torch.zeros((), device=device, dtype=torch.float32)
    first_bad = torch.full((), -1, device=device, dtype=torch.int64)
    step_losses: list[torch.Tensor] = []
    lrs: list[float] = []
    seen, start = 0, 0
    if partial:
        start, seen = int(partial["batch"]), int(partial["seen"])
        loss_sum = partial["loss_sum"].to(device=device, dtype=torch.float32).clone()
        correct = partial["correct"].to(device=device, dtype=acc).clone()
        l1_sum = partial["l1_sum"].to(device=device, dtype=torch.float32).clone()
        lrs = [float(v) for v in partial["lrs"]]
        step_losses = [torch.tensor(float(v), device=device) for v in partial["step_losses"]]
    l1_params = l1_parameters(model) if l1 > 0 else []
    clip_params = [p for p in model.parameters() if p.requires_grad] if grad_clip > 0 else []
    bar = _tqdm()(total=n_batches, initial=start, disable=not progress, leave=True, dynamic_ncols=True)
    interrupted, batch, warning, window = False, start, None, len(step_losses)
    batches = loader.iterate(start) if start else iter(loader)
    skip = [] if _wraps_ddp(model) else [p for p in frozen or () if p.requires_grad]
    for p in skip:
        p.requires_grad_(False)

    def snapshot() -> dict:
        # copies (on the CPU .cpu() would alias the live accumulators)
        return {"batch": batch, "seen": seen, "loss_sum": loss_sum.detach().to("cpu", copy=True),
                "correct": correct.detach().to("cpu", copy=True), "l1_sum": l1_sum.detach().to("cpu", copy=True),
                "lrs": list(lrs), "step_losses": [float(v) for v in step_losses]}

    try:
        for batch, (x, y) in enumerate(batches, start + 1):
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
            if ema is not None:
                ema.update_parameters(unwrap(model))
            with torch.no_grad():
                bs = y.shape[0]
                seen += bs
                ld = loss.detach().float()
                step_losses.append(ld)
                loss_sum += ld * bs
                pred = out.detach().argmax(1)
                if y.dim() == 2:  # soft targets: the mass of the predicted class (lam or 1-lam when mixed)
                    correct += y.gather(1, pred[:, None]).sum().to(acc)
                else:
                    correct += (pred == y).sum().to(acc)
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(total.detach()),
                                        torch.full_like(first_bad, batch), first_bad)
            if batch % log_every == 0 or batch == n_batches:
                bad = int(first_bad)  # the one host sync per log_every steps
                if bad >= 0:
                    raise NonFiniteLossError(epoch, bad, lrs[bad - 1 - start] if bad > start else None)
                if monitor is not None and len(step_losses) > window:
                    said = monitor.update(float(torch.stack(step_losses[window:]).mean()))
                    window = len(step_losses)
                    if said:
                        warning = said
                        logger.warning("warning: %s", said)
                if progress:
                    flag = " DIVERGING?" if monitor is not None and monitor.warning else ""
                    bar.set_description(
                        f"Loss={ld.item():.4f} Batch_id={batch} LR={lrs[-1]:.5f} "
                        f"Accuracy={100.0 * float(correct) / max(seen, 1):.2f}{flag}", refresh=False)
                    bar.update(batch - bar.n)
            if on_step is not None:
                on_step(batch, snapshot)
    finally:
        for p in skip:
            p.requires_grad_(True)
        bar.close()
    if seen and int(first_bad) >= 0:
        bad = int(first_bad)
        raise NonFiniteLossError(epoch, bad, lrs[bad - 1 - start] if bad > start else None)
    stats = D.all_reduce_sum(torch.stack([loss_sum.double().to(acc), correct.to(acc),
                                          torch.tensor(float(seen), device=device, dtype=acc)]))
    total_seen = max(float(stats[2]), 1.0)
    train_acc = 100.0 * float(stats[1]) / total_seen
    if monitor is not None and not interrupted:
        said = monitor.end_epoch(epoch, train_acc)
        if said:
            warning = said
            logger.warning("warning: %s", said)
    return {
        "train_loss": float(stats[0]) / total_seen,
        "train_acc": train_acc,
        "l1_loss": float(l1_sum) / max(len(lrs), 1),
        "samples": int(stats[2]),
        "batches": len(lrs),
        "lrs": lrs,
        "step_losses": torch.stack(step_losses).tolist() if step_losses else [],
        "interrupted": interrupted,
        "last_batch": batch,
        "warning": warning,
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
    acc = _acc_dtype(device)
    loss_sum = torch.zeros((), device=device, dtype=acc)
    correct = torch.zeros((), device=device, dtype=acc)
    total = torch.zeros((), device=device, dtype=acc)
    try:
        for x, y in loader:
            with _autocast(device, amp_dtype):
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
# fit
# ---------------------------------------------------------------------------------------
def new_history() -> dict[str, list]:
    """Empty history: per-epoch columns plus per-step ``steps`` (step, epoch, lr, loss)."""
    h: dict[str, list] = {c: [] for c in HISTORY_COLUMNS}
    h["steps"] = []
    return h


class FitHooks:
    """What :func:`fit` tells its caller; every method is optional (override what you need).

    The run folder's hooks (``eva8_utils.rundir``) save checkpoints and files here; a
    notebook or a script can subclass this to log elsewhere.
    """

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first batch of ``epoch``."""

    def on_step(self, epoch: int, batch: int, partial: Callable[[], dict]) -> None:
        """After every optimizer step; ``partial()`` returns the unfinished epoch's state."""

    def on_epoch_end(self, epoch: int, row: dict[str, Any], history: dict[str, list]) -> None:
        """After the evaluation of ``epoch``; ``row`` holds its train and test metrics."""

    def on_warning(self, text: str) -> None:
        """A warning worth keeping (e.g. divergence), said once."""


class HookList(FitHooks):
    """Several :class:`FitHooks` called in order."""

    def __init__(self, *hooks: FitHooks | None):
        self.hooks = [h for h in hooks if h is not None]

    def on_epoch_start(self, epoch):
        for h in self.hooks:
            h.on_epoch_start(epoch)

    def on_step(self, epoch, batch, partial):
        for h in self.hooks:
            h.on_step(epoch, batch, partial)

    def on_epoch_end(self, epoch, row, history):
        for h in self.hooks:
            h.on_epoch_end(epoch, row, history)

    def on_warning(self, text):
        for h in self.hooks:
            h.on_warning(text)


def fit(model: nn.Module, train_loader, test_loader, optimizer: torch.optim.Optimizer,
        schedule: Schedule | None = None, *, epochs: int, device: torch.device | None = None,
        amp_dtype: torch.dtype | None = None, scaler=None, label_smoothing: float = 0.0, l1: float = 0.0,
        grad_clip: float = 0.0, grad_clip_mode: str = "norm", lookahead: Lookahead | None = None,
        ema=None, tta: str = "none", seed: int = 0, start_epoch: int = 0, partial: dict | None = None,
        history: dict[str, list] | None = None, hooks: FitHooks | None = None,
        stop: Callable[[], bool] | None = None, progress: bool = True, log_every: int = 10,
        num_classes: int | None = None, monitor: DivergenceMonitor | None = None) -> dict[str, Any]:
    """Train for ``epochs`` epochs (continuing after ``start_epoch``), evaluating after each.

    Per epoch it logs ``EPOCH: k/n``, shows the bar, logs the ``Train set: ...`` and
    ``Test set: ...`` lines, appends to the history and calls the hooks. After the first
    steps of the run it logs an estimate of the epoch's and the run's time. After the
    last epoch the TTA accuracy (``tta``) is measured and reported next to the plain one.

    Args:
        model: the model to train (possibly DDP/compiled); evaluated unwrapped.
        train_loader, test_loader: batches on ``device`` (see ``eva8_utils.data.DeviceLoader``).
        optimizer, schedule: as made by ``make_optimizer`` / :class:`Schedule`.
        epochs: the total number of epochs of the run.
        device: the training device (default: where the model's parameters are).
        amp_dtype, scaler: autocast dtype (None = fp32) and GradScaler (fp16).
        label_smoothing, l1, grad_clip, grad_clip_mode: see :func:`train_one_epoch`.
        lookahead: slow weights (:class:`Lookahead`), synced after every epoch.
        ema: averaged weights (:func:`make_ema`), evaluated after every epoch.
        tta: test-time augmentation of the final evaluation: none | flip | flip_translate.
        seed: reseeds torch at every epoch from (seed, epoch, rank).
        start_epoch: epochs already done; ``partial`` continues epoch ``start_epoch + 1``
            from the middle (with the torch RNG state saved in ``partial["rng"]``).
        history: the history so far (resumed runs).
        hooks: :class:`FitHooks` to call.
        stop: polled before each batch; True stops at the batch boundary.
        progress, log_every: the tqdm bar and how often it (and the host) syncs.
        num_classes: enables the "still at chance" divergence check.
        monitor: a resumed :class:`DivergenceMonitor` (one is made otherwise).

    Returns:
        dict with ``history``, ``final`` (last plain evaluation), ``tta`` (or None),
        ``ema_final`` / ``ema_tta`` (with ``ema``), ``epoch_times``, ``train_time_s`` of
        this call and ``warnings``.

    Raises:
        NonFiniteLossError: a NaN/inf loss (nothing of that epoch is saved).
        TrainingInterrupted: ``stop()`` turned true; the last completed epoch is kept.
    """
    if grad_clip_mode not in CLIP_MODES:
        raise ValueError(f"unknown grad_clip_mode {grad_clip_mode!r}; choose one of: {', '.join(CLIP_MODES)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    hooks = hooks or FitHooks()
    history = history if history is not None else new_history()
    eval_model = unwrap(model)
    monitor = monitor or DivergenceMonitor(num_classes)
    epoch_times: list[float] = list(history.get("_epoch_times", []))
    warnings_said: list[str] = [monitor.warning] if monitor.warning else []
    final, ema_final = None, None
    for epoch in range(start_epoch + 1, epochs + 1):
        part = partial if epoch == start_epoch + 1 else None
        if part and part.get("rng") is not None:
            set_rng_state(part["rng"])
        else:  # dropout and other global randomness: a pure function of (seed, epoch, rank)
            torch.manual_seed(epoch_seed(seed, epoch, salt=1 + D.rank()))
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        frozen = eval_model.frozen_parameters(epoch) if hasattr(eval_model, "frozen_parameters") else []
        logger.info("EPOCH: %d/%d", epoch, epochs)
        hooks.on_epoch_start(epoch)
        t0 = time.perf_counter()
        before = part.get("elapsed_s", 0.0) if part else 0.0
        eta = _EtaLogger(device, t0, len(train_loader), epochs - epoch + 1, part) if epoch == start_epoch + 1 else None

        def on_step(batch: int, snapshot: Callable[[], dict], epoch=epoch, eta=eta, t0=t0, before=before) -> None:
            if eta is not None:
                eta(batch)
            hooks.on_step(epoch, batch, lambda: {**snapshot(), "rng": get_rng_state(),
                                                 "elapsed_s": time.perf_counter() - t0 + before})

        tr = train_one_epoch(model, train_loader, optimizer, device=device, schedule=schedule,
                             label_smoothing=label_smoothing, l1=l1, grad_clip=grad_clip,
                             grad_clip_mode=grad_clip_mode, amp_dtype=amp_dtype, scaler=scaler, epoch=epoch,
                             progress=progress and D.is_main(), log_every=log_every, stop=stop, on_step=on_step,
                             lookahead=lookahead, ema=ema, frozen=frozen, partial=part, monitor=monitor)
        if tr["warning"]:
            warnings_said.append(tr["warning"])
            hooks.on_warning(tr["warning"])
        if lookahead is not None:
            lookahead.sync(eval_model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0 + before
        if tr["interrupted"]:
            raise TrainingInterrupted(epoch, tr["last_batch"], epoch - 1)
        te = evaluate(eval_model, test_loader, device=device, amp_dtype=amp_dtype)
        if schedule is not None:
            schedule.after_epoch(te["test_loss"])
        logger.info("Train set: Average loss: %.4f, Accuracy: %.2f%%, last LR %.4g, %.1f s",
                    tr["train_loss"], tr["train_acc"], tr["lrs"][-1] if tr["lrs"] else float("nan"), dt)
        logger.info(test_line(te))
        row = {**tr, **te}
        if ema is not None:
            ema_final = evaluate(ema.module, test_loader, device=device, amp_dtype=amp_dtype)
            logger.info(test_line(ema_final, "Test set (EMA weights)"))
            row.update(ema_test_loss=ema_final["test_loss"], ema_test_acc=ema_final["test_acc"])
        _append(history, epoch, row, l1 > 0)
        epoch_times.append(dt)
        history["_epoch_times"] = list(epoch_times)
        final = te
        hooks.on_epoch_end(epoch, row, history)
        D.barrier()
    if final is None:  # nothing left to train (a finished run)
        final = evaluate(eval_model, test_loader, device=device, amp_dtype=amp_dtype)
        logger.info(test_line(final))
        if ema is not None:
            ema_final = evaluate(ema.module, test_loader, device=device, amp_dtype=amp_dtype)
    tta_result, ema_tta = None, None
    if tta != "none":
        tta_result = evaluate(eval_model, test_loader, device=device, amp_dtype=amp_dtype, tta=tta)
        logger.info(test_line(tta_result, f"Test set with TTA ({tta})"))
        if ema is not None:
            ema_tta = evaluate(ema.module, test_loader, device=device, amp_dtype=amp_dtype, tta=tta)
            logger.info(test_line(ema_tta, f"Test set with TTA ({tta}, EMA weights)"))
    return {"history": history, "final": final, "tta": tta_result, "ema_final": ema_final, "ema_tta": ema_tta,
            "epoch_times": epoch_times, "train_time_s": float(sum(epoch_times)), "warnings": warnings_said}


class _EtaLogger:
    """After the first few steps of a run: one log line with the epoch's and the run's estimated time."""

    def __init__(self, device: torch.device, t0: float, n_batches: int, epochs_left: int, partial: dict | None):
        self.device, self.t0, self.n, self.epochs_left = device, t0, n_batches, epochs_left
        self.first = int(partial["batch"]) if partial else 0
        self.at = self.first + max(1, min(10, (n_batches - self.first) // 4))
        self.done = n_batches - self.first < 4  # too short to estimate

    def __call__(self, batch: int) -> None:
        if self.done or batch < self.at:
            return
        self.done = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        per_step = (time.perf_counter() - self.t0) / (batch - self.first)
        epoch_s = per_step * self.n
        rest = per_step * (self.n - batch) + epoch_s * (self.epochs_left - 1)
        logger.info("estimate after %d steps: %.2f s/step, about %s per epoch, %s to finish training "
                    "(evaluation not included)", batch - self.first, per_step, _duration(epoch_s), _duration(rest))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


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


def _append(history: dict[str, list], epoch: int, row: dict, with_l1: bool) -> None:
    history["epoch"].append(epoch)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        history[key].append(row[key])
    history["lr"].append(row["lrs"][-1] if row["lrs"] else float("nan"))
    if with_l1:
        history.setdefault("l1_loss", []).append(row["l1_loss"])
    for key in ("ema_test_loss", "ema_test_acc"):
        if key in row:
            history.setdefault(key, []).append(row[key])
    first = len(history["steps"]) + 1
    history["steps"].extend([i, epoch, lr, loss] for i, (lr, loss) in
                            enumerate(zip(row["lrs"], row["step_losses"]), first))
