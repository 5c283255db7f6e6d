"""Optimizers: parameter groups, SGD/Adam/AdamW/Muon, and lookahead's slow weights."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .precision import fast_bf16

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
LOOKAHEAD_START_EPOCHS = 3  # slow weights start after this many epochs (airbench94)


def classifier_head(model: nn.Module) -> nn.Linear | None:
    """The classifier layer: the last ``nn.Linear`` in module order (None if there is none)."""
    head = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            head = m
    return head


@dataclass(frozen=True)
class GroupHints:
    """LR rules for named parameters, as a model's registry entry gives them
    (``register_model(..., param_hints=fn)``, ``fn(model) -> GroupHints``).

    Attributes:
        base_lr: parameter names that keep the base LR even if they are vectors (not ``bias_lr_scale``).
        lr_to_zero: {name: N}: the LR falls linearly to 0 over the first N epochs.
    """

    base_lr: tuple[str, ...] = ()
    lr_to_zero: dict[str, int] = field(default_factory=dict)


def param_groups(model: nn.Module, lr: float, weight_decay: float, bias_lr_scale: float = 1.0,
                 head_lr_scale: float = 1.0, muon: bool = False, hints: GroupHints | None = None) -> list[dict]:
    """Trainable parameters in up to three groups: weights (ndim > 1), the classifier head's
    weight (when ``head_lr_scale`` != 1, and always for ``muon``) and biases/norm parameters.

    A group with an LR multiplier ``s`` gets ``lr * s`` and ``weight_decay / s``, so its
    per-step decay is unchanged while it learns faster (the speed-record trick).
    Parameters named in ``hints.base_lr`` (e.g. fastnet's whitening bias) stay in the
    weights group, except under ``muon``, whose weights group (marked ``muon=True``, no
    weight decay) takes matrices only. Parameters in ``hints.lr_to_zero`` ({name: N}) get a
    group of their own with the settings of the group they would join and
    ``zero_after_epochs=N``: the :class:`~eva8_utils.engine.schedule.Schedule` lowers its LR
    linearly to 0 over the first N epochs instead of applying the run's schedule.
    """
    hints = hints or GroupHints()
    to_zero, base = dict(hints.lr_to_zero), set(hints.base_lr)
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
    x = g.to(torch.bfloat16 if fast_bf16(g.device) else torch.float32)
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
                   muon_momentum: float = 0.6, hints: GroupHints | None = None) -> torch.optim.Optimizer:
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
        hints: LR rules for named parameters (:class:`GroupHints`), e.g. from the model's registry entry.
    """
    if name == "muon":
        groups = param_groups(model, lr, weight_decay, bias_lr_scale, head_lr_scale, muon=True, hints=hints)
        return MuonSGD(groups, lr=lr, momentum=momentum, muon_momentum=muon_momentum, nesterov=nesterov and momentum > 0)
    groups = param_groups(model, lr, weight_decay, bias_lr_scale, head_lr_scale, hints=hints)
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
