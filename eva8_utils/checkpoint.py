"""Checkpoints: written atomically, loaded safely.

- Every save goes to a temporary file that is flushed, fsynced and renamed, so a kill
  at any moment leaves the old file or the new one, never a torn one. ``last.pt`` is
  rotated to ``prev.pt`` first, which gives ``--resume`` a fallback.
- Every load uses ``torch.load(..., weights_only=True)``: a checkpoint holds tensors
  and plain data only, and a file that would run code on load is refused.
- A checkpoint is data: it may name the code that builds its model (a registered name,
  ``package.module:callable``, modules to import), but :func:`load_model` runs code
  outside eva8_utils only when the caller names the same code (``model=``/``imports=``;
  ``--model``/``--import`` on the command line). The options stored for the
  constructor are plain values it takes, checked before anything is built.
- A checkpoint names its model and number of classes; loading it into another model
  fails with a message that says which.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from .errors import CheckpointError, ConfigError, UntrustedCodeError
from .utils import _fsync_dir, atomic_write

logger = logging.getLogger("eva8_utils")

FORMAT = "eva8_utils.checkpoint/1"

# How torch words a weights_only refusal of a file that names code (a global, a call, an
# object): torch >= 2.4 says "Unsupported global: GLOBAL x" (later "unsupported GLOBAL x
# whose module ... is blocked"), torch 2.3 "Unsupported class x"; a REDUCE/NEWOBJ of a
# function or class not allowed is "Trying to call reduce ..." / "Trying to instantiate ...".
# Every weights_only failure starts with "Weights only load failed", garbage included
# ("Unsupported operand"), so that prefix alone means corrupt, not refused.
_REFUSAL_WORDING = ("unsupported global", "unsupported class", "trying to call reduce", "trying to instantiate",
                    "can only create new object", "can only build", "is blocked")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
MAX_CLASSES = 100_000


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
        if any(w in str(e).lower() for w in _REFUSAL_WORDING):  # a reference to code, refused
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


def load_model(path: str | Path, model: nn.Module | str | None = None, map_location: str | torch.device = "cpu",
               *, imports: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model from a checkpoint (``best.pt`` or ``last.pt``) for inference.

    A checkpoint names how to rebuild its model: a registered name, or code outside
    eva8_utils (``package.module:callable``, modules to import). Nothing in the file is
    unpickled as code, and code outside eva8_utils is imported and called only when you
    name the same code here; a classmate's checkpoint of their own model loads with
    ``load_model(path, model="mymodels:MyNet")`` or ``load_model(path, imports=["mymodels"])``.

    Args:
        path: checkpoint file.
        model: None rebuilds a checkpoint of a registered model; a string names (and so
            trusts) the checkpoint's model: a registered name or ``package.module:callable``;
            an nn.Module is filled with the weights (for a run that trained a module
            passed in directly).
        map_location: where the weights go.
        imports: modules you trust to import (e.g. ones that register the model); the
            checkpoint's own list of imports must be among them.

    Returns:
        ``(model, checkpoint)``: the model in eval mode, and the checkpoint dict, whose
        ``classes``, ``mean``, ``std`` and ``image_size`` describe the inputs it expects.

    Raises:
        UntrustedCodeError: the checkpoint names code outside eva8_utils that ``model`` /
            ``imports`` do not name (nothing is imported).
        CheckpointError: the file is missing, corrupt, unsafe, or its model cannot be
            rebuilt (options the constructor does not take, a module that cannot be
            imported, weights of other shapes).
    """
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(model, nn.Module):
        ref = trusted_reference(ckpt, path, model, imports)
        model = _rebuild(ref, ckpt, path)
    load_weights(model, ckpt["model"], path)
    return model.to(map_location).eval(), ckpt


def trusted_reference(ckpt: dict[str, Any], path: str | Path = "checkpoint", model: str | None = None,
                      imports: Sequence[str] = ()) -> dict[str, Any]:
    """The checkpoint's model reference (``model``, ``options``, ``imports``), checked:
    well-formed, and naming no code outside eva8_utils that the caller did not name.
    Imports nothing.

    Raises:
        UntrustedCodeError: code the caller did not name.
        CheckpointError: a malformed reference, or one for another model than ``model``.
    """
    from .models import MODELS

    imports = [imports] if isinstance(imports, str) else list(imports or [])
    for name in imports:
        _check_module_name(name, "--import", "")
    if model is not None:
        if not isinstance(model, str) or (":" in model and not _is_reference(model)):
            raise ConfigError(f"--model {model!r} is not a model name or package.module:callable")
    ref = _claimed_reference(ckpt, path)
    name, wanted = ref["model"], ref["imports"]
    if model is not None and model != name:
        raise CheckpointError(f"{path} holds the model {name}, not {model}; drop --model or give --model {name}")
    outside = ([f"--model {name}"] if ":" in name and model != name else []) + \
              [f"--import {m}" for m in wanted if m not in imports]
    if outside:
        code = " and ".join(([f"model {name}"] if ":" in name else []) + ([f"imports {', '.join(wanted)}"]
                                                                           if wanted else []))
        api = ", ".join(([f"model={name!r}"] if ":" in name else []) + ([f"imports={wanted!r}"] if wanted else []))
        raise UntrustedCodeError(f"refused to load {path}: its model is built by code outside eva8_utils ({code}), "
                                 f"which would run on load; if you trust that code, name it: {' '.join(outside)} "
                                 f"(Python: load_model(path, {api}))")
    if ":" not in name and name not in MODELS and not wanted:
        raise CheckpointError(f"{path} holds a model {name!r} that is not registered; --import the module that "
                              f"registers it (Python: load_model(path, imports=[...]))")
    return ref


def _is_reference(name: str) -> bool:
    module, _, attr = name.partition(":")
    return bool(_DOTTED.match(module)) and bool(_DOTTED.match(attr))


def _check_module_name(name: Any, what: str, path: str | Path) -> None:
    """A module name must be a plain dotted name: from the file, refused; from the caller, a usage mistake."""
    if isinstance(name, str) and _DOTTED.match(name):
        return
    if path:
        raise CheckpointError(f"{path} names the module {str(name)[:80]!r} to {what}, which is not a dotted name "
                              f"(package.module); refused")
    raise ConfigError(f"{what} {str(name)[:80]!r} is not a module name; give package.module")


def _claimed_reference(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """What the file says builds its model, in the shape of ``model_ref``; ``options`` is
    None for a checkpoint written before checkpoints stored them (rebuilt from its config)."""
    ref = ckpt.get("model_ref")
    if ref is None:
        cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        if not cfg.get("model") or cfg.get("model") != ckpt.get("model_name"):
            raise CheckpointError(f"{path} holds a {ckpt.get('model_name', 'model')} that was passed in directly; "
                                  f"build that model yourself and pass it: load_model(path, model=...)")
        imports = cfg.get("imports") or []
        ref = {"model": cfg["model"], "options": None, "imports": [imports] if isinstance(imports, str) else imports}
    if not isinstance(ref, dict) or not isinstance(ref.get("model"), str) or not ref["model"]:
        raise CheckpointError(f"{path} has a malformed model reference (no model name); use another checkpoint")
    name, imports, options = ref["model"], ref.get("imports") or [], ref.get("options")
    if len(name) > 200 or not name.isprintable() or " " in name:
        raise CheckpointError(f"{path} names the model {name[:80]!r}, which is not a model name; refused")
    if ":" in name and not _is_reference(name):
        raise CheckpointError(f"{path} names the model {name[:80]!r}, which is not package.module:callable; refused")
    if not isinstance(imports, (list, tuple)) or len(imports) > 100:
        raise CheckpointError(f"{path} has a malformed list of imports; use another checkpoint")
    for m in imports:
        _check_module_name(m, "import", path)
    if options is not None and not isinstance(options, dict):
        raise CheckpointError(f"{path} has malformed model options (not a mapping); use another checkpoint")
    return {"model": name, "options": options, "imports": list(imports)}


def _plain(value: Any, inner: bool = False) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return not inner and isinstance(value, (list, tuple)) and all(_plain(v, True) for v in value)


def _num_classes(ckpt: dict[str, Any], path: str | Path) -> int:
    n, classes = ckpt.get("num_classes"), ckpt.get("classes")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CLASSES:
        raise CheckpointError(f"{path} gives num_classes={n!r}; a checkpoint needs a number of classes from 1 to "
                              f"{MAX_CLASSES}: use another checkpoint")
    if not isinstance(classes, (list, tuple)) or len(classes) != n or not all(isinstance(c, str) for c in classes):
        count = len(classes) if isinstance(classes, (list, tuple)) else "no"
        raise CheckpointError(f"{path} gives num_classes={n} but {count} class names; use another checkpoint")
    return n


def _rebuild(ref: dict[str, Any], ckpt: dict[str, Any], path: str | Path) -> nn.Module:
    """Build a checked (trusted) reference's model: imports, options checked against the
    constructor, shapes checked against the weights before the model is allocated."""
    from .models import _build, get_spec, import_modules

    num_classes = _num_classes(ckpt, path)
    try:
        import_modules(ref["imports"], what=f"{path}: --import")
        spec = get_spec(ref["model"])
        options = ref["options"]
        if options is None:
            options = _reference_from_config(ckpt["config"], ckpt.get("image_size", 32))["options"]
    except ConfigError as e:
        raise CheckpointError(f"cannot rebuild the model of {path}: {e}") from None
    for key, value in options.items():
        if key == "num_classes" or not isinstance(key, str) or not spec.accepts(key):
            raise CheckpointError(f"{path} passes the option {key!r} to {ref['model']}, which does not take it; "
                                  f"use another checkpoint")
        if not _plain(value):
            raise CheckpointError(f"{path} passes {key}={type(value).__name__} to {ref['model']}; options must be "
                                  f"numbers, strings, booleans, None or lists of those")
    state = ckpt.get("model") if isinstance(ckpt.get("model"), dict) else {}
    try:
        with torch.device("meta"):  # sizes only: nothing allocated yet
            probe = spec.build(num_classes=num_classes, **options)
        shapes = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    except Exception:  # a constructor that cannot run on the meta device: the weights check comes after
        shapes = None
    if shapes is not None:
        held = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        wrong = next((k for k in shapes if held.get(k) != shapes[k]), None) or next(
            (k for k in held if k not in shapes), None)
        if wrong is not None:
            raise CheckpointError(f"{path} does not fit its own model ({ref['model']} with its options gives "
                                  f"{wrong} {shapes.get(wrong, 'no such weight')}, the file holds "
                                  f"{held.get(wrong, 'none')}); use another checkpoint")
    try:
        return _build(spec, num_classes, options)
    except ConfigError as e:
        raise CheckpointError(f"cannot rebuild the model of {path}: {e}") from None
    except Exception as e:  # the constructor refused the file's options
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__
        raise CheckpointError(f"cannot rebuild the model of {path} from its options ({reason}); use another "
                              f"checkpoint") from None


def _reference_from_config(cfg: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The model reference of a checkpoint written before checkpoints stored one: rebuilt
    from its saved config."""
    from .config import TrainConfig
    from .models import model_options

    fields = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{k: v for k, v in cfg.items() if k in fields})
    return {"model": config.model, "options": model_options(config, int(image_size)), "imports": list(config.imports)}
