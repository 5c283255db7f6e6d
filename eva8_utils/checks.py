"""Checks that refuse an input before a run trains or writes anything.

- :func:`check_fits_memory`: a size that cannot fit in the machine's memory is refused
  with the estimate, instead of being killed by the OS after minutes.
- :func:`check_model`: a model (registered, ``package.module:callable`` or passed in) must
  be an ``nn.Module`` whose output on one batch is ``(N, classes)``; the CAM layer, when
  one is named, must give a map of at least :data:`MIN_CAM_SIZE` pixels on that batch.
- :func:`check_writable`: the run folder (or its nearest existing parent) can be written.
- :func:`memory_errors`: out of memory during a run becomes one line that says where
  (training, its evaluation, the LR finder) and what to try.

Each failure is a :class:`~eva8_utils.errors.UserError`: one line saying what is wrong
and what to do.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .errors import WRITE_ERRNOS, ConfigError, OutOfMemory, os_reason  # noqa: F401

MIN_CAM_SIZE = 5  # a CAM on a smaller map says little about where the evidence is


# ---------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------

def layer_names(model: nn.Module, depth: int = 2) -> list[str]:
    """Dotted names of the model's modules up to ``depth`` levels that may give a CAM a map (for
    error messages): layers with weights or sub-layers, not a linear head, dropout or flatten."""
    flat = (nn.Linear, nn.Dropout, nn.Flatten, nn.Identity)
    return [n for n, m in model.named_modules() if n and n.count(".") < depth and not isinstance(m, flat)
            and (any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.children()))]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists valid names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = layer_names(model)
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        raise ConfigError(f"--cam-layer {name!r} is not a layer of this model; valid names include: {shown}") from None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"


def check_fits_memory(needed: int, what: str, fix: str, available: int | None = None) -> None:
    """Refuse ``what`` when it needs more than the memory available now.

    Raises:
        ConfigError: ``"{what} needs about X GB of memory but Y GB are available; {fix}"``.
    """
    available = available_memory() if available is None else available
    if available is not None and needed > available:
        raise ConfigError(f"{what} needs about {_gb(needed)} of memory but {_gb(available)} are available; {fix}")


# ---------------------------------------------------------------------------------------
# Models and CAM layers
# ---------------------------------------------------------------------------------------
def describe_output(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    return f"a {type(out).__name__}"


def build_model_checked(build: Callable[..., nn.Module], name: str, num_classes: int, options: dict) -> nn.Module:
    """``build(num_classes=..., **options)``, with a one-line error when the call fails or
    returns something that is not an ``nn.Module`` (``--model os:getcwd``, ``--model
    builtins:dict``, a checkpoint's model with another model's settings)."""
    try:
        model = build(num_classes=num_classes, **options)
    except (TypeError, ValueError) as e:
        reason = str(e).splitlines()[0][:150] if str(e) else type(e).__name__
        given = ", ".join(["num_classes"] + sorted(options))
        raise ConfigError(f"--model {name}: calling it with {given} failed ({type(e).__name__}: {reason}); give a "
                          f"function or class that takes num_classes and returns an nn.Module") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {name} returned {type(model).__name__}, not an nn.Module; give a function or "
                          f"class that takes num_classes and returns an nn.Module")
    return model


@torch.no_grad()
def check_model(model: nn.Module, images: torch.Tensor, num_classes: int | None, name: str = "the model",
                cam_layer: str | None = None, reshape_transform: Callable | None = None) -> None:
    """One forward pass on ``images`` (a small normalised batch, on the model's device) in
    eval mode: the output must be ``(N, num_classes)``, and ``cam_layer`` (when given) must
    output a 4-D map (after ``reshape_transform``, for token models) of at least
    :data:`MIN_CAM_SIZE` x :data:`MIN_CAM_SIZE`. The model's mode is restored; no
    parameter or buffer changes (eval mode, no gradients).

    ``num_classes=None`` checks the CAM layer only.

    Raises:
        ConfigError: naming the model or layer, what it gave and what is needed.
    """
    reshape_transform = reshape_transform or getattr(model, "cam_reshape", None)

    captured: list = []
    handle = None
    if cam_layer:
        layer = get_layer(model, cam_layer)
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = model.training
    try:
        model.eval()
        out = model(images)
    except Exception as e:  # a model that cannot run on these images: the user's to fix
        reason = str(e).strip().splitlines()[0][:150] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{name} fails on a batch of {tuple(images.shape)} images ({type(e).__name__}: "
                          f"{reason}); check --model and --image-size") from None
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    n = images.shape[0]
    if num_classes is not None and not (isinstance(out, torch.Tensor) and out.dim() == 2 and tuple(out.shape) == (n, num_classes)):
        raise ConfigError(f"{name} returns {describe_output(out)} for {n} images, but a classifier of {num_classes} "
                          f"classes must return logits of shape ({n}, {num_classes})")
    if cam_layer:
        check_cam_output(captured[0] if captured else None, cam_layer, reshape_transform)


def check_cam_output(out, cam_layer: str, reshape_transform: Callable | None = None) -> None:
    """Refuse a CAM layer whose output is not a map of at least MIN_CAM_SIZE pixels a side."""
    fix = "name a convolutional layer whose map is at least {0}x{0} with --cam-layer, or leave it empty for the " \
          "model's default".format(MIN_CAM_SIZE)
    if out is None:
        raise ConfigError(f"--cam-layer {cam_layer!r} is not used in the forward pass; {fix}")
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if isinstance(out, torch.Tensor) and reshape_transform is not None and out.dim() == 3:
        try:
            out = reshape_transform(out)
        except Exception:
            pass
    if not (isinstance(out, torch.Tensor) and out.dim() == 4):
        raise ConfigError(f"--cam-layer {cam_layer!r} outputs {describe_output(out)}, not a 4-D map "
                          f"(N, C, H, W); {fix}")
    h, w = int(out.shape[2]), int(out.shape[3])
    if min(h, w) < MIN_CAM_SIZE:
        raise ConfigError(f"--cam-layer {cam_layer!r} outputs a {h}x{w} map, smaller than {MIN_CAM_SIZE}x"
                          f"{MIN_CAM_SIZE}: a CAM there cannot say where the evidence is; {fix}")


# ---------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------
def check_writable(path: str | Path, what: str = "--out") -> None:
    """Refuse a folder that cannot be created or written (a read-only file system, no
    permission), by creating and removing a temporary file in it or, when it does not
    exist yet, in its nearest existing parent. Nothing is left behind.

    Raises:
        ConfigError: naming the folder and the OS reason.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {path}: {probe} is a file, not a folder; choose another {what}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".eva8-write-test.", dir=probe)
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be written ({os_reason(e)} at {probe}); choose a folder you can "
                          f"write to") from None
    os.close(fd)
    os.unlink(tmp)


# ---------------------------------------------------------------------------------------
# Out of memory during a run
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def memory_errors(exp, where: str, run=None):
    """Out of memory inside becomes :class:`OutOfMemory` (one line: :func:`out_of_memory`)."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        oom = out_of_memory(e, exp, where, run)
        if oom is None:
            raise
        raise oom from None


def out_of_memory(e: BaseException, exp, where: str, run=None) -> OutOfMemory | None:
    """The one line for a batch that did not fit in memory (CUDA, MPS or the CPU), or None
    when ``e`` is another error."""
    text = str(e).lower()
    if not (isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text):
        return None
    cfg, device = exp.cfg, exp.device
    if _raised_in(e, "evaluate.py"):
        where = f"the evaluation of the test split ({where})"
    half = max(1, cfg.batch_size // 2)
    tries = f"--batch-size {half}"
    if device.type == "cuda" and exp.precision.dtype is None:
        tries += ", or --precision bf16 (fp16 on a T4/V100)"
    fits = ("the batch size is fixed for a resumed run: start again with --overwrite and the smaller batch "
            f"(or --resume with the same settings after freeing memory{_resume_from(run)})")
    if run is None:
        fits = "nothing was written"
    return OutOfMemory(f"out of memory in {where} at batch size {cfg.batch_size} ({exp.model_name}, "
                       f"{exp.precision.name} on {device.type}): try {tries}; {fits}")


def _raised_in(e: BaseException, filename: str) -> bool:
    """Whether ``e`` was raised inside a module of the engine named ``filename``."""
    tb = e.__traceback__
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename)
        if path.name == filename and path.parent.name == "engine":
            return True
        tb = tb.tb_next
    return False


def _resume_from(run) -> str:
    point = run.faults.resume_point() if run is not None else ""
    return f", which continues {point}" if point.startswith("from") else ""


__all__ = ["available_memory", "check_fits_memory", "build_model_checked", "check_model", "check_cam_output",
           "check_writable", "memory_errors", "os_reason", "out_of_memory", "MIN_CAM_SIZE"]
