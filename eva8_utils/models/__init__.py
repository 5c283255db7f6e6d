"""Model registry: name -> constructor taking ``num_classes`` (and optional settings).

Register your own (then ``--import mymodels --model mynet``)::

    from eva8_utils.models import register_model

    @register_model("mynet", cam_layer="features.3")
    def mynet(num_classes=10):
        return MyNet(num_classes)

or name any callable directly: ``--model mymodels:MyNet``. Constructors may accept any
of ``norm``, ``groups``, ``dropout``, ``width``, ``whiten_bias_epochs``,
``whiten_bias_lr`` and ``image_size``; :func:`model_options` passes those a constructor accepts and refuses a
non-default setting the model cannot honour. Checkpoints store the name (or
reference), the options and the modules to import, and :func:`build_from_reference`
rebuilds the model from them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from ..errors import ConfigError
from .custom_resnet import CustomResNet, custom_resnet
from .fastnet import FastNet, fastnet, fastnet_callbacks, fastnet_param_hints
from .resnet import ResNet, resnet18, resnet34
from .vit import ViT, vit_tiny


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its constructor, CAM defaults and the training callbacks it needs
    (e.g. fastnet's frozen whitening bias), built for each model: ``callbacks(model) -> list``."""

    name: str
    build: Callable[..., nn.Module]
    cam_layer: str | None = None                      # None: the model's ``cam_layer`` or a search
    reshape_transform: Callable | None = None         # token models: (N, T, C) -> (N, C, h, w)
    callbacks: Callable[[nn.Module], list] | None = None
    param_hints: Callable[[nn.Module], Any] | None = None    # model -> engine.GroupHints (LR rules by name)

    def accepts(self, option: str) -> bool:
        try:
            return option in inspect.signature(self.build).parameters
        except (TypeError, ValueError):  # a builtin without a signature (builtins:dict): takes nothing we know
            return False


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, build: Callable[..., nn.Module] | None = None, *, cam_layer: str | None = None,
                   reshape_transform: Callable | None = None, callbacks: Callable[[nn.Module], list] | None = None,
                   param_hints: Callable[[nn.Module], Any] | None = None):
    """Register a constructor under ``name`` (usable as a decorator); ``callbacks(model)``
    returns the :class:`~eva8_utils.engine.Callback` objects its training needs and
    ``param_hints(model)`` the :class:`~eva8_utils.engine.GroupHints` of its parameters."""
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = ModelSpec(name, fn, cam_layer, reshape_transform, callbacks, param_hints)
        return fn

    return add(build) if build is not None else add


register_model("resnet18", resnet18)
register_model("resnet34", resnet34)
register_model("custom_resnet", custom_resnet)
register_model("fastnet", fastnet, callbacks=fastnet_callbacks, param_hints=fastnet_param_hints)
register_model("vit_tiny", vit_tiny, reshape_transform=ViT.cam_reshape)

# Settings a config can pass to a constructor, with the value that means "not asked for".
_OPTION_DEFAULTS = {"norm": "batch", "groups": 8, "dropout": 0.0, "width": 1.0, "whiten_bias_epochs": 0,
                    "whiten_bias_lr": "schedule"}
# A setting of a part that other models do not have (the fast recipe sets it; --recipe fast
# --model resnet18 must still work): ignored by models that do not take it.
_IGNORED_WHEN_ABSENT = ("whiten_bias_epochs", "whiten_bias_lr")


def import_modules(names: list[str] | tuple[str, ...], what: str = "--import") -> None:
    """Import modules by name (they may register models). The current folder is searched
    too, as ``python -m`` does, so ``eva8 --import mymodels`` finds ./mymodels.py.

    Raises:
        ConfigError: a module cannot be imported (one line naming it and why).
    """
    import importlib
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or an error raised while the module runs
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__
            raise ConfigError(f"{what} {name}: cannot import it ({reason}); put the module on PYTHONPATH or in "
                              f"the current folder") from None


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered name or of a ``package.module:callable`` reference.

    Raises:
        ConfigError: unknown name, a module that cannot be imported, or no such callable.
    """
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        import_modules([module], what=f"--model {name}:")
        import importlib

        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise ConfigError(f"--model {name}: module {module} has no attribute {attr!r}; give "
                                  f"package.module:callable")
        if not callable(obj):
            raise ConfigError(f"--model {name}: {attr} is not callable; give a function or class that takes "
                              f"num_classes and returns an nn.Module")
        return ModelSpec(name, obj, getattr(obj, "cam_layer", None), getattr(obj, "cam_reshape", None),
                         getattr(obj, "callbacks", None))
    raise ConfigError(f"--model {name!r} is not valid; choose one of: {', '.join(sorted(MODELS))} (or give "
                      f"package.module:callable, or --import the module that registers it)")


def cam_reshape_of(model: nn.Module, name: str | None) -> Callable | None:
    """The CAM reshape of a loaded model: its own ``cam_reshape``, else its spec's, looked up
    without importing anything (a module named by ``name`` is used only if already imported)."""
    import sys

    if getattr(model, "cam_reshape", None) is not None:
        return model.cam_reshape
    if not name:
        return None
    if name in MODELS:
        return MODELS[name].reshape_transform
    if ":" in name and name.partition(":")[0] in sys.modules:
        try:
            return get_spec(name).reshape_transform
        except ConfigError:
            return None
    return None


def create_model(name: str, num_classes: int = 10, **options: Any) -> nn.Module:
    """Build a registered model; ``options`` the constructor does not take are refused."""
    spec = get_spec(name)
    for key in options:
        if not spec.accepts(key):
            raise ConfigError(f"model {name} does not take the setting {key!r}")
    return _build(spec, num_classes, options)


def _build(spec: ModelSpec, num_classes: int, options: dict[str, Any]) -> nn.Module:
    from ..checks import build_model_checked

    return build_model_checked(spec.build, spec.name, num_classes, options)


def model_options(cfg: Any, image_size: int = 32) -> dict[str, Any]:
    """The constructor settings of ``cfg.model`` from the config (norm/groups/dropout/width/...).

    Raises:
        ConfigError: a non-default setting the chosen model does not support.
    """
    spec = get_spec(cfg.model)
    options: dict[str, Any] = {}
    for key, neutral in _OPTION_DEFAULTS.items():
        value = getattr(cfg, key)
        if spec.accepts(key):
            options[key] = value
        elif value != neutral and key not in _IGNORED_WHEN_ABSENT and not (key == "groups" and cfg.norm != "group"):
            users = sorted(n for n, s in MODELS.items() if s.accepts(key))
            raise ConfigError(f"--{key.replace('_', '-')} {value} is not supported by {cfg.model}; models that "
                              f"take it: {', '.join(users)}")
    if spec.accepts("image_size"):
        options["image_size"] = image_size
    return options


def build_from_reference(ref: dict[str, Any], num_classes: int) -> nn.Module:
    """Rebuild a model from a reference in the shape a checkpoint stores (``model``,
    ``options``, ``imports``): the modules are imported by name, never unpickled. This
    runs the code the reference names: give it only a reference you trust
    (:func:`~eva8_utils.checkpoint.load_model` checks a checkpoint's first)."""
    import_modules(ref.get("imports") or [], what="checkpoint: --import")
    spec = get_spec(ref["model"])
    return _build(spec, num_classes, dict(ref.get("options") or {}))


def prepare_model(model: nn.Module, train_loader: Any, device: Any, channels_last: bool = True,
                  data_init: bool = True, max_init_images: int = 5000, seed: int = 0) -> nn.Module:
    """Get a freshly built model ready to train.

    Runs the model's ``data_init`` (e.g. fastnet's patch whitening) on a seeded,
    class-balanced random sample of up to ``max_init_images`` un-augmented training
    images (never the first N: a class-sorted folder would give one class only), moves
    it to ``device`` and, on CUDA/CPU, to channels_last memory format. Skip
    ``data_init`` when loading weights.
    """
    import torch

    if data_init and hasattr(model, "data_init"):
        from ..data import balanced_indices

        idx = balanced_indices(train_loader.labels.cpu().numpy(), max_init_images, seed)
        model.data_init(train_loader.batch_at(torch.from_numpy(idx))[0].cpu())
    model.to(device)
    if channels_last and torch.device(device).type in ("cuda", "cpu"):
        model.to(memory_format=torch.channels_last)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "MODELS", "ModelSpec", "register_model", "get_spec", "cam_reshape_of", "create_model", "model_options",
    "build_from_reference", "import_modules",
    "prepare_model", "count_parameters", "ResNet", "CustomResNet", "FastNet", "ViT", "resnet18", "resnet34",
    "custom_resnet", "fastnet", "vit_tiny",
]
