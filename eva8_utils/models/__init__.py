"""Model registry: name -> constructor taking ``num_classes`` (and optional settings).

Register your own::

    from eva8_utils.models import register_model

    @register_model("mynet", cam_layer="features.3")
    def mynet(num_classes=10):
        return MyNet(num_classes)

Constructors may accept any of ``norm``, ``groups``, ``dropout``, ``width`` and
``image_size``; :func:`model_from_config` passes those a constructor accepts and
refuses a non-default setting the model cannot honour.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from ..errors import ConfigError
from .custom_resnet import CustomResNet, custom_resnet
from .fastnet import FastNet, fastnet
from .resnet import ResNet, resnet18, resnet34
from .vit import ViT, vit_tiny


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its constructor and CAM defaults."""

    name: str
    build: Callable[..., nn.Module]
    cam_layer: str | None = None                      # None: the model's ``cam_layer`` or a search
    reshape_transform: Callable | None = None         # token models: (N, T, C) -> (N, C, h, w)

    def accepts(self, option: str) -> bool:
        return option in inspect.signature(self.build).parameters


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, build: Callable[..., nn.Module] | None = None, *, cam_layer: str | None = None,
                   reshape_transform: Callable | None = None):
    """Register a constructor under ``name`` (usable as a decorator)."""
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = ModelSpec(name, fn, cam_layer, reshape_transform)
        return fn

    return add(build) if build is not None else add


register_model("resnet18", resnet18)
register_model("resnet34", resnet34)
register_model("custom_resnet", custom_resnet)
register_model("fastnet", fastnet)
register_model("vit_tiny", vit_tiny, reshape_transform=ViT.cam_reshape)

# Settings a config can pass to a constructor, with the value that means "not asked for".
_OPTION_DEFAULTS = {"norm": "batch", "groups": 8, "dropout": 0.0, "width": 1.0, "whiten_bias_epochs": 0}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"--model {name!r} is not a known model; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def create_model(name: str, num_classes: int = 10, **options: Any) -> nn.Module:
    """Build a registered model; ``options`` the constructor does not take are refused."""
    spec = get_spec(name)
    for key in options:
        if not spec.accepts(key):
            raise ConfigError(f"model {name} does not take the setting {key!r}")
    return spec.build(num_classes=num_classes, **options)


def model_from_config(cfg: Any, num_classes: int, image_size: int = 32) -> nn.Module:
    """Build ``cfg.model`` with the config's norm/groups/dropout/width and the data's size.

    Raises:
        ConfigError: a non-default setting the chosen model does not support.
    """
    spec = get_spec(cfg.model)
    options: dict[str, Any] = {}
    for key, neutral in _OPTION_DEFAULTS.items():
        value = getattr(cfg, key)
        if spec.accepts(key):
            options[key] = value
        elif value != neutral and not (key == "groups" and cfg.norm != "group"):
            users = sorted(n for n, s in MODELS.items() if s.accepts(key))
            raise ConfigError(f"--{key} {value} is not supported by {cfg.model}; models that take it: "
                              f"{', '.join(users)}")
    if spec.accepts("image_size"):
        options["image_size"] = image_size
    return spec.build(num_classes=num_classes, **options)


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
    "MODELS", "ModelSpec", "register_model", "get_spec", "create_model", "model_from_config",
    "prepare_model", "count_parameters", "ResNet", "CustomResNet", "FastNet", "ViT", "resnet18", "resnet34",
    "custom_resnet", "fastnet", "vit_tiny",
]
