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
from .utils import _fsync_dir, atomic_path

logger = logging.getLogger("eva8_utils")

FORMAT = "eva8_utils.checkpoint/1"


def save_checkpoint(path: str | Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Atomically write ``state`` to ``path``; with ``keep_previous`` the old file becomes ``prev.pt``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
        if keep_previous and path.exists():
            os.replace(path, path.with_name("prev.pt"))
            _fsync_dir(path.parent)


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


def save_training_state(run_dir: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, schedule,
                        scaler, epoch: int, history: dict, config: dict, meta: dict, is_best: bool,
                        lookahead=None) -> None:
    """Write ``checkpoints/last.pt`` (previous one kept as ``prev.pt``) and, if ``is_best``, ``best.pt``."""
    ckdir = Path(run_dir) / "checkpoints"
    for p in model.parameters():
        if not torch.isfinite(p).all():  # never replace a good checkpoint by broken weights
            raise RuntimeError("refusing to save non-finite weights")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    weights = model.state_dict()
    state = {
        "model": weights, "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict() if schedule is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "lookahead": lookahead.state_dict() if lookahead is not None else None,
        "epoch": int(epoch), "history": history, "config": config, "rng": rng, **meta,
    }
    save_checkpoint(ckdir / "last.pt", state, keep_previous=True)
    if is_best:
        save_checkpoint(ckdir / "best.pt", {"model": weights, "epoch": int(epoch), "config": config,
                                            "test_acc": history["test_acc"][-1], **meta})


def load_training_state(run_dir: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        schedule, scaler, model_name: str, num_classes: int,
                        map_location: str | torch.device = "cpu", lookahead=None) -> tuple[int, dict, Path]:
    """Restore model, optimizer, schedule, scaler (and lookahead) from the run's ``last.pt``
    (else ``prev.pt``).

    Returns:
        (completed epochs, history, path used).

    Raises:
        CheckpointError: no usable checkpoint, or one for another model.
    """
    ckdir = Path(run_dir) / "checkpoints"
    candidates = [ckdir / "last.pt", ckdir / "prev.pt"]
    errors = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path, map_location)
        except CheckpointError as e:
            errors.append(e)
            logger.warning("%s; trying the previous checkpoint", e)
            continue
        check_compatible(ckpt, model_name, num_classes, path)
        load_weights(model, ckpt["model"], path)
        optimizer.load_state_dict(ckpt["optimizer"])
        if schedule is not None and ckpt.get("schedule") is not None:
            try:
                schedule.load_state_dict(ckpt["schedule"])
            except ValueError as e:
                raise CheckpointError(
                    f"cannot resume {path} with these settings: {e}; keep --epochs and --scheduler "
                    f"of the run (onecycle and cosine fix their length at the start)") from None
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        if lookahead is not None and ckpt.get("lookahead") is not None:
            lookahead.load_state_dict(ckpt["lookahead"])
        if path.name == "prev.pt":
            logger.warning("resumed from the previous checkpoint %s", path)
        return int(ckpt["epoch"]), ckpt["history"], path
    if errors:
        raise errors[0]
    raise CheckpointError(f"{ckdir} holds no checkpoint to resume from; start the run without --resume")


def load_model(path: str | Path, model: nn.Module | None = None, map_location: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model from a checkpoint (``best.pt`` or ``last.pt``) for inference.

    Args:
        path: checkpoint file.
        model: the module to fill; None builds the checkpoint's registered model.

    Returns:
        (model in eval mode, checkpoint dict).
    """
    ckpt = load_checkpoint(path, map_location)
    if model is None:
        from .config import TrainConfig
        from .models import model_from_config

        cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in TrainConfig.__dataclass_fields__})
        model = model_from_config(cfg, ckpt["num_classes"], ckpt.get("image_size", 32))
    load_weights(model, ckpt["model"], path)
    return model.eval(), ckpt
