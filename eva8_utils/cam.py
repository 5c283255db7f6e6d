"""Class-activation maps through pytorch-grad-cam, and a faithfulness check.

- :func:`compute_cams`: CAMs for given images and one target class per image, by
  method name and dotted layer name. Hooks are removed after use, the model's
  train/eval mode and its parameters' ``.grad`` are restored, inputs are not
  modified, and any device works (CPU included).
- :func:`default_cam_layer`: the model's preferred layer if its map is at least
  ``min_size`` (7) pixels, else the deepest module whose output map is.
- :func:`pointing_game`: the fraction of images whose CAM maximum falls inside the
  object's box (shapes dataset); :func:`cam_pointing_game` runs it on a model next to
  three baselines (a random point, the image centre, the CAM of a wrong class).
- :func:`road_faithfulness`: pytorch-grad-cam's ROAD "most relevant first" score of the
  CAMs against random maps.

pytorch-grad-cam is imported only when a CAM is computed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .config import CAM_SMOOTH, one_of
from .checks import check_model, get_layer, layer_names  # noqa: F401  (re-exported)
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
    one_of("cam_method", method, CAM_METHODS)
    try:
        import pytorch_grad_cam
    except ImportError:
        raise UserError("CAMs need pytorch-grad-cam: pip install grad-cam") from None
    return getattr(pytorch_grad_cam, CAM_METHODS[method])


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


def default_cam_layer(model: nn.Module, image_size: int = 32, min_size: int = 7,
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

    one_of("cam_smooth", smooth, CAM_SMOOTH)
    targets = [int(t) for t in (targets.tolist() if isinstance(targets, torch.Tensor) else targets)]
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    layer = layer or default_cam_layer(model, int(images.shape[-1]))
    target_layer = get_layer(model, layer)
    if reshape_transform is None:
        reshape_transform = getattr(model, "cam_reshape", None)
    if len(images):

        check_model(model, images[:1].to(next(model.parameters()).device), None, cam_layer=layer,
                    reshape_transform=reshape_transform)  # a map of at least 5x5, before any hook is set
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


def centre_baseline(boxes: np.ndarray, height: int, width: int) -> float:
    """Pointing-game score of a map that always peaks at the image centre."""
    cy, cx = (height - 1) // 2, (width - 1) // 2
    inside = (boxes[:, 0] <= cy) & (boxes[:, 2] >= cy) & (boxes[:, 1] <= cx) & (boxes[:, 3] >= cx)
    return float(inside.mean()) if len(boxes) else float("nan")


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, int]:
    """Predicted classes (CPU) and the number of classes (the width of the logits)."""
    was_training = model.training
    model.eval()
    try:
        logits = [model(images[i:i + batch]) for i in range(0, len(images), batch)]
        return torch.cat([z.argmax(1) for z in logits]).cpu(), int(logits[0].shape[1])
    finally:
        model.train(was_training)


def cam_pointing_game(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, boxes: np.ndarray, *,
                      method: str = "gradcam", layer: str | None = None, reshape_transform: Callable | None = None,
                      max_images: int = 500, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    """Pointing game on correctly classified images, CAM for the true class, with baselines.

    Args:
        model: classifier.
        images: (N, 3, H, W) normalised test images (on the model's device).
        labels: (N,) true classes.
        boxes: (N, 4) object boxes ``(y0, x0, y1, x1)``.
        max_images: use at most this many correctly classified images (in order).
        seed: picks each image's wrong class.

    Returns:
        dict with ``score`` (true-class CAM), ``random_point`` (mean box area),
        ``centre`` (a map peaking at the image centre), ``wrong_class`` (the CAM of a
        random other class) and ``n``, all on the same images.
    """
    preds, k = _predict(model, images)
    correct = (preds == labels.cpu()).nonzero().flatten()[:max_images]
    if len(correct) == 0:
        nan = float("nan")
        return {"score": nan, "random_point": nan, "centre": nan, "wrong_class": nan, "n": 0}
    idx = correct.to(images.device)
    true = labels.cpu()[correct]
    rng = np.random.default_rng(seed)
    wrong = (true.numpy() + rng.integers(1, k, len(true))) % k  # uniformly one of the other classes
    kw = dict(method=method, layer=layer, reshape_transform=reshape_transform, batch_size=batch_size)
    cams = compute_cams(model, images[idx], true, **kw)
    cams_wrong = compute_cams(model, images[idx], wrong, **kw)
    b = np.asarray(boxes)[correct.numpy()]
    h, w = images.shape[-2:]
    return {"score": pointing_game(cams, b), "random_point": box_area_baseline(b, h, w),
            "centre": centre_baseline(b, h, w), "wrong_class": pointing_game(cams_wrong, b), "n": int(len(correct))}


def road_faithfulness(model: nn.Module, images: torch.Tensor, targets, *, method: str = "gradcam",
                      layer: str | None = None, reshape_transform: Callable | None = None, smooth: str = "none",
                      percentile: int = 80, seed: int = 0) -> dict[str, float]:
    """ROAD "most relevant first" (pytorch-grad-cam's metric) for the CAMs of ``targets``,
    and for uniformly random maps on the same images.

    The pixels above the ``percentile`` of each map are replaced by noisy linear
    imputation and the softmax probability of the target class is measured again.

    Returns:
        dict with ``score`` and ``random`` (mean change in probability: more negative means
        the removed pixels mattered more) and ``n``.
    """
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    targets = [int(t) for t in (targets.tolist() if isinstance(targets, torch.Tensor) else list(targets))]
    cams = compute_cams(model, images, targets, method=method, layer=layer, reshape_transform=reshape_transform,
                        smooth=smooth)
    random_maps = np.random.default_rng(seed).random(cams.shape).astype(np.float32)
    metric = ROADMostRelevantFirst(percentile=percentile)
    was_training = model.training
    model.eval()
    out = {}
    try:
        with torch.random.fork_rng(devices=[]):  # the imputer draws noise: keep the caller's RNG untouched
            torch.manual_seed(seed)
            x = images.detach().float()
            for name, maps in (("score", cams), ("random", random_maps)):
                scores = []
                for i in range(0, len(x), 64):
                    t = [ClassifierOutputSoftmaxTarget(c) for c in targets[i:i + 64]]
                    scores.append(np.asarray(metric(x[i:i + 64], maps[i:i + 64], t, model)).reshape(-1))
                out[name] = float(np.concatenate(scores).mean())
    finally:
        model.train(was_training)
    out["n"] = len(targets)
    return out
