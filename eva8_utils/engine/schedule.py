"""LR schedules: every policy behind two calls, after each step and after each evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

SCHEDULERS = ("onecycle", "linear", "cosine", "step", "exponential", "plateau", "none")


@dataclass(frozen=True)
class ScheduleSettings:
    """The settings of the policies (each policy reads its own; see :class:`Schedule`)."""

    pct_start: float = 0.25          # onecycle: fraction of steps spent warming up
    div_factor: float = 10.0         # onecycle: start LR = lr / div_factor
    final_div_factor: float = 100.0  # onecycle: final LR = start LR / final_div_factor
    anneal: str = "linear"           # onecycle: linear | cos
    cycle_momentum: bool = False     # onecycle: momentum 0.95 <-> 0.85 against the LR
    warmup_epochs: float = 0.0       # all but onecycle: linear per-step warm-up
    step_size: int = 10              # step: epochs between drops
    step_gamma: float = 0.1          # step: factor at each drop
    exp_gamma: float = 0.95          # exponential: factor per epoch
    plateau_patience: int = 2        # plateau: epochs without improvement before a drop
    plateau_factor: float = 0.1      # plateau: factor at a drop
    plateau_threshold: float = 1e-4  # plateau: relative improvement that counts
    min_lr: float = 0.0              # plateau: lower bound on the LR


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
    group keeps its own base LR (see :func:`~eva8_utils.engine.optim.param_groups`); a
    group with ``zero_after_epochs=N`` falls linearly to 0 over its first N epochs instead.
    The policy's settings are the fields of :class:`ScheduleSettings`, given as keywords.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, name: str = "none", *, epochs: int,
                 steps_per_epoch: int, **settings: Any):
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
        o = self.settings = ScheduleSettings(**settings)
        self.optimizer, self.name = optimizer, name
        self.epochs, self.steps_per_epoch = epochs, max(1, steps_per_epoch)
        self.total_steps = epochs * self.steps_per_epoch
        self.warmup_steps = 0 if name == "onecycle" else int(round(o.warmup_epochs * self.steps_per_epoch))
        self.step_size, self.step_gamma, self.exp_gamma = o.step_size, o.step_gamma, o.exp_gamma
        self.pct_start, self.div_factor, self.final_div_factor = o.pct_start, o.div_factor, o.final_div_factor
        self.anneal, self.cycle_momentum = o.anneal, o.cycle_momentum
        self.steps = 0
        self.base = [g["lr"] for g in optimizer.param_groups]
        self._sched: Any = None
        if name == "plateau":
            self._sched = ReduceLROnPlateau(optimizer, mode="min", factor=o.plateau_factor,
                                            patience=o.plateau_patience, threshold=o.plateau_threshold,
                                            min_lr=o.min_lr)
            self._apply_warmup()
        else:
            self._sched = LambdaLR(optimizer, [self._group_factor(g) for g in optimizer.param_groups])
            if name == "onecycle" and o.cycle_momentum:
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
