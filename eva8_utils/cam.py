"""Class-activation maps through pytorch-grad-cam, and a faithfulness check.

- :func:`compute_cams`: CAMs for given images and one target class per image, by
  method name and dotted layer name. Hooks are removed after use, the model's
  train/eval mode and its parameters' ``.grad`` are restored, inputs are not
  modified, and any device works (CPU included).
- :func:`default_cam_layer`: the model's preferred layer if its map is at least
  ``min_size`` pixels, else the deepest module whose output map is.
- :func:`pointing_game`: the fraction of images whose CAM maximum falls inside the
  object's box (shapes dataset), with the box-area baseline a random map would score.

pytorch-grad-cam is imported only when a CAM is computed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import ConfigError, UserError

# name -> class name in pytorch_grad_cam
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}


def _cam_class(method: str):
    if method not in CAM_METHODS:
        raise ConfigError(f"--cam-method {method!r} is not valid; choose one of: {', '.join(sorted(CAM_METHODS))}")
    try:
        import pytorch_grad_cam
    except ImportError:
        raise UserError("CAMs need pytorch-grad-cam: pip install grad-cam") from None
    return getattr(pytorch_grad_cam, CAM_METHODS[method])


def layer_names(model: nn.Module, depth: int = 2) -> list[str]:
    """Dotted names of the model's modules up to ``depth`` levels (for error messages)."""
    return [n for n, _ in model.named_modules() if n and n.count(".") < depth]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists valid names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = layer_names(model)
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        raise ConfigError(f"--cam-layer {name!r} is not a layer of this model; valid names include: {shown}") from None


@torch.no_grad()
def layer_output_sizes(model: nn.Module, image_size: int | tuple[int, int] = 32,
                       device: torch.device | str | None = None) -> list[tuple[str, tuple[int, int]]]:
    """(name, (h, w)) of every module with a 4-D output, in execution order."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    device = device or next(model.parameters()).device
    sizes: list[tuple[str, tuple[int, int]]] = []
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                sizes.append((name, (int(out.shape[2]), int(out.shape[3]))))

        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, 3, h, w, device=device))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    return sizes


def default_cam_layer(model: nn.Module, image_size: int = 32, min_size: int = 8,
                      preferred: str | None = None) -> str:
    """The layer CAMs use by default.

    The preferred layer (argument, else the model's ``cam_layer`` attribute) when its
    output map is at least ``min_size`` pixels (or it is a token layer); otherwise the
    deepest module whose output map is at least ``min_size`` x ``min_size``.
    """
    preferred = preferred or getattr(model, "cam_layer", None)
    sizes = layer_output_sizes(model, image_size)
    by_name = dict(sizes)
    if preferred and (preferred not in by_name or min(by_name[preferred]) >= min_size):
        return preferred
    ok = [n for n, s in sizes if min(s) >= min_size]
    if not ok:
        raise ConfigError(f"no layer of this model has an output of at least {min_size}x{min_size} "
                          f"for {image_size}px inputs; name one with --cam-layer")
    return ok[-1]


def compute_cams(model: nn.Module, images: torch.Tensor, targets: Sequence[int] | torch.Tensor, *,
                 method: str = "gradcam", layer: str | None = None,
                 reshape_transform: Callable | None = None, smooth: str = "none",
                 batch_size: int = 64) -> np.ndarray:
    """CAMs for ``images`` (N, 3, H, W, normalised) and one target class per image.

    Args:
        model: a classifier returning logits.
        images: input batch; not modified.
        targets: class index per image (e.g. the predicted or the true class).
        method: a key of :data:`CAM_METHODS`.
        layer: dotted module name; None = :func:`default_cam_layer`.
        reshape_transform: for token models, (N, T, C) -> (N, C, h, w); None uses the
            model's ``cam_reshape`` if it has one.
        smooth: ``none`` | ``aug`` (test-time augmentation smoothing) | ``eigen``.
        batch_size: images per CAM pass.

    Returns:
        float32 array (N, H, W), each map scaled to [0, 1].
    """
    cam_cls = _cam_class(method)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if smooth not in ("none", "aug", "eigen"):
        raise ConfigError(f"--cam-smooth {smooth!r} is not valid; choose one of: aug, eigen, none")
    targets = [int(t) for t in (targets.tolist() if isinstance(targets, torch.Tensor) else targets)]
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    layer = layer or default_cam_layer(model, int(images.shape[-1]))
    target_layer = get_layer(model, layer)
    if reshape_transform is None:
        reshape_transform = getattr(model, "cam_reshape", None)
    device = next(model.parameters()).device
    was_training = model.training
    saved_grads = [(p, p.grad) for p in model.parameters()]
    out: list[np.ndarray] = []
    try:
        with torch.enable_grad(), cam_cls(model=model, target_layers=[target_layer],
                                          reshape_transform=reshape_transform) as cam:
            for i in range(0, len(images), batch_size):
                x = images[i:i + batch_size].detach().clone().to(device)
                t = [ClassifierOutputTarget(c) for c in targets[i:i + batch_size]]
                out.append(cam(input_tensor=x, targets=t, aug_smooth=smooth == "aug",
                               eigen_smooth=smooth == "eigen").astype(np.float32))
    finally:
        model.train(was_training)
        for p, g in saved_grads:
            p.grad = g
    return np.concatenate(out) if out else np.zeros((0,) + tuple(images.shape[-2:]), np.float32)


# ---------------------------------------------------------------------------------------
# Faithfulness: the pointing game
# ---------------------------------------------------------------------------------------
def cam_argmax(cams: np.ndarray) -> np.ndarray:
    """(N, H, W) maps -> (N, 2) (row, col) of each map's maximum (first one on ties)."""
    n, h, w = cams.shape
    flat = cams.reshape(n, -1).argmax(1)
    return np.stack([flat // w, flat % w], axis=1)


def pointing_game(cams: np.ndarray, boxes: np.ndarray) -> float:
    """Fraction of maps whose maximum lies inside the box ``(y0, x0, y1, x1)`` (inclusive)."""
    if len(cams) == 0:
        return float("nan")
    pts = cam_argmax(cams)
    inside = ((pts[:, 0] >= boxes[:, 0]) & (pts[:, 0] <= boxes[:, 2]) &
              (pts[:, 1] >= boxes[:, 1]) & (pts[:, 1] <= boxes[:, 3]))
    return float(inside.mean())


def box_area_baseline(boxes: np.ndarray, height: int, width: int) -> float:
    """Expected pointing-game score of a uniformly random point: the mean box area fraction."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return float(np.mean(area / (height * width)))


def cam_pointing_game(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, boxes: np.ndarray, *,
                      method: str = "gradcam", layer: str | None = None, max_images: int = 500,
                      batch_size: int = 128) -> dict[str, float]:
    """Pointing game on correctly classified images, CAM for the true class.

    Args:
        model: classifier.
        images: (N, 3, H, W) normalised test images (on the model's device).
        labels: (N,) true classes.
        boxes: (N, 4) object boxes ``(y0, x0, y1, x1)``.
        max_images: use at most this many correctly classified images (in order).

    Returns:
        dict with ``score``, ``baseline`` (box-area fraction of the same images) and ``n``.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])
    model.train(was_training)
    correct = (preds.cpu() == labels.cpu()).nonzero().flatten()[:max_images]
    if len(correct) == 0:
        return {"score": float("nan"), "baseline": float("nan"), "n": 0}
    idx = correct.to(images.device)
    cams = compute_cams(model, images[idx], labels.cpu()[correct], method=method, layer=layer,
                        batch_size=batch_size)
    b = np.asarray(boxes)[correct.numpy()]
    h, w = images.shape[-2:]
    return {"score": pointing_game(cams, b), "baseline": box_area_baseline(b, h, w), "n": int(len(correct))}
