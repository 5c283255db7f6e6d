"""Checkpoints: written atomically, loaded safely.

- Every save goes to a temporary file that is flushed, fsynced and renamed, so a kill
  at any moment leaves the old file or the new one, never a torn one. ``last.pt`` is
  rotated to ``prev.pt`` first, which gives ``--resume`` a fallback.
- Every load uses ``torch.load(..., weights_only=True)``: a checkpoint holds tensors
  and plain data only, and a file that would run code on load is refused.
- A checkpoint names its model and number of classes; loading it into another model
  fails with a message that says which.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import CheckpointError
from .utils import _fsync_dir, atomic_write

logger = logging.getLogger("eva8_utils")

FORMAT = "eva8_utils.checkpoint/1"


def save_checkpoint(path: str | Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Atomically write ``state`` to ``path``; with ``keep_previous`` the old file becomes ``prev.pt``.

    The data goes through a Python file, so a failed write raises the OSError with its
    reason (ENOSPC, EDQUOT, EIO, ...); transient errors are retried (:func:`~eva8_utils.utils.atomic_write`).
    """
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            try:
                torch.save({"format": FORMAT, **state}, fh)
            except RuntimeError as e:  # the zip writer's complaint after the OSError of a write
                cause = _os_error_in(e)
                if cause is None:
                    raise
                raise cause from None
        if keep_previous and path.exists():
            os.replace(path, path.with_name("prev.pt"))
            _fsync_dir(path.parent)

    atomic_write(path, write)


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError that ``e`` was raised while handling, if any."""
    seen = e.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__context__
    return seen


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: about the size of its file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: missing, truncated/corrupt, unsafe (would run code) or not ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "GLOBAL" in str(e):  # a reference to code, refused
            raise CheckpointError(
                f"refused to load {path}: it holds objects other than tensors and plain data, "
                f"which could run code on load; use a checkpoint written by eva8_utils"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not a readable torch checkpoint); "
                              f"use another checkpoint") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        msg = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({msg}); use another checkpoint") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an eva8_utils checkpoint (no 'model' weights inside)")
    return ckpt


def check_compatible(ckpt: dict[str, Any], model_name: str, num_classes: int, path: str | Path = "checkpoint") -> None:
    """Refuse a checkpoint made for another model or number of classes."""
    ck_model, ck_classes = ckpt.get("model_name"), ckpt.get("num_classes")
    if (ck_model is not None and ck_model != model_name) or (ck_classes is not None and ck_classes != num_classes):
        raise CheckpointError(
            f"{path} holds a {ck_model} with {ck_classes} classes, but this run builds a {model_name} "
            f"with {num_classes} classes; use a checkpoint of the same model and data, or start a new run"
        )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> None:
    """``model.load_state_dict(state)`` with a one-line error on any mismatch."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)[:120]
        raise CheckpointError(f"{path} does not fit this model ({first[:150]}); check --model and --norm") from None


def load_model(path: str | Path, model: nn.Module | None = None, map_location: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model from a checkpoint (``best.pt`` or ``last.pt``) for inference.

    The checkpoint says how to rebuild its model (a registered name or
    ``package.module:callable``, its options and the modules to import); those modules
    are imported by name, and nothing in the file is unpickled as code.

    Args:
        path: checkpoint file.
        model: the module to fill (needed when the run trained a module passed in
            directly); None rebuilds the checkpoint's model.
        map_location: where the weights go.

    Returns:
        ``(model, checkpoint)``: the model in eval mode, and the checkpoint dict, whose
        ``classes``, ``mean``, ``std`` and ``image_size`` describe the inputs it expects.

    Raises:
        CheckpointError: the file is missing, corrupt, unsafe, or its model cannot be
            rebuilt (e.g. the module that defines it cannot be imported).
    """
    ckpt = load_checkpoint(path, map_location)
    if model is None:
        from .errors import ConfigError
        from .models import build_from_reference

        ref = ckpt.get("model_ref")
        cfg = ckpt.get("config") or {}
        if ref is None and cfg.get("model") and cfg.get("model") == ckpt.get("model_name"):
            ref = _reference_from_config(cfg, int(ckpt.get("image_size", 32)))  # a checkpoint of version 0.1
        if ref is None:
            raise CheckpointError(f"{path} holds a {ckpt.get('model_name', 'model')} that was passed in directly; "
                                  f"build that model yourself and pass it: load_model(path, model=...)")
        try:
            model = build_from_reference(ref, int(ckpt["num_classes"]))
        except ConfigError as e:
            raise CheckpointError(f"cannot rebuild the model of {path}: {e}") from None
    load_weights(model, ckpt["model"], path)
    return model.to(map_location).eval(), ckpt


def _reference_from_config(cfg: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The model reference of a checkpoint written before checkpoints stored one: rebuilt
    from its saved config."""
    from .config import TrainConfig
    from .models import model_options

    fields = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{k: v for k, v in cfg.items() if k in fields})
    return {"model": config.model, "options": model_options(config, image_size), "imports": list(config.imports)}
