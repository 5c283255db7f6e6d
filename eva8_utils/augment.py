"""Batched image augmentation on the training device, with per-sample randomness.

Every transform is a pure function of a batch and explicit per-sample parameters, so
that it can be tested exactly; :func:`sample_params` draws those parameters for a
whole epoch at once from a seeded :class:`torch.Generator` (on the CPU, so that CPU
and GPU runs see the same augmentations), and :func:`apply` runs the pipeline:

    [0,1] floats -> colour (grayscale, brightness/contrast) -> normalise
    -> affine (shift/scale/rotate) -> pad + random crop -> horizontal flip -> cutout
    -> batch mixing (MixUp / CutMix, with soft targets)

Geometric ops and cutout work on normalised images, so their fill value 0 is the
dataset mean (the classic CIFAR cutout).

Shapes: images are (B, C, H, W); parameters are 1-D tensors of length B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run on the training split, and how strong they are."""

    crop_padding: int = 4          # pixels of padding per side before the random crop (0 = off)
    pad_mode: str = "zeros"        # zeros (= dataset mean after normalisation) | reflect
    flip: str = "random"           # random (p = 0.5 per sample) | alternate (see DeviceLoader) | none
    cutout: int = 16               # side of the cutout square in pixels (0 = off)
    cutout_p: float = 1.0          # probability of cutout per sample
    cutout_holes: int = 1          # squares per sample (albumentations' CoarseDropout: num_holes)
    cutout_min: int = 0            # > 0: each square's side is drawn from [cutout_min, cutout] per hole
    cutout_fill: float = -1.0      # the squares' grey level in [0, 1] (0 = black); -1 = the dataset mean
    affine_p: float = 0.0          # probability of shift/scale/rotate per sample
    affine_shift: float = 0.0625   # max shift, fraction of the side
    affine_scale: float = 0.1      # max relative zoom
    affine_rotate: float = 15.0    # max rotation, degrees
    grayscale_p: float = 0.0       # probability of grayscale per sample
    jitter_p: float = 0.0          # probability of brightness/contrast jitter per sample
    brightness: float = 0.2        # max brightness change (fraction)
    contrast: float = 0.2          # max contrast change (fraction)
    low_res_size: int = 0          # progressive resizing: side of the early epochs' images (0 = off)
    low_res_epochs: int = 0        # ... for this many epochs
    low_res_mode: str = "resize"   # ... resize the whole image | crop a random window of that side
    mixup: float = 0.0             # MixUp Beta(alpha, alpha) parameter (0 = off)
    cutmix: float = 0.0            # CutMix Beta(alpha, alpha) parameter (0 = off)
    mix_p: float = 1.0             # probability that a batch is mixed
    mix_classes: int = 0           # width of mixed batches' soft targets (0 = the largest label + 1)

    @classmethod
    def from_config(cls, cfg: Any, **values: Any) -> "AugmentConfig":
        """Take the matching fields from a :class:`~eva8_utils.config.TrainConfig` (and ``values``)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}, **values)

    @property
    def colour(self) -> bool:
        return self.grayscale_p > 0 or self.jitter_p > 0

    @property
    def mixing(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mix_p > 0


# ---------------------------------------------------------------------------------------
# Parameter sampling
# ---------------------------------------------------------------------------------------
def sample_params(n: int, aug: AugmentConfig, size: tuple[int, int],
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw independent augmentation parameters for ``n`` samples.

    Args:
        n: number of samples (positions in the epoch).
        aug: the augmentation settings.
        size: image (H, W) in pixels.
        generator: a CPU generator; the same state gives the same parameters.

    Returns:
        Dict of CPU tensors of length ``n``; only enabled augmentations have entries.
    """
    h, w = size
    g = generator
    p: dict[str, torch.Tensor] = {}

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=g) * (hi - lo) + lo

    if aug.grayscale_p > 0:
        p["gray"] = torch.rand(n, generator=g) < aug.grayscale_p
    if aug.jitter_p > 0:
        p["jitter"] = torch.rand(n, generator=g) < aug.jitter_p
        p["brightness"] = uniform(1 - aug.brightness, 1 + aug.brightness)
        p["contrast"] = uniform(1 - aug.contrast, 1 + aug.contrast)
    if aug.affine_p > 0:
        p["affine"] = torch.rand(n, generator=g) < aug.affine_p
        p["shift_x"] = uniform(-aug.affine_shift, aug.affine_shift)
        p["shift_y"] = uniform(-aug.affine_shift, aug.affine_shift)
        p["scale"] = uniform(1 - aug.affine_scale, 1 + aug.affine_scale)
        p["angle"] = uniform(-aug.affine_rotate, aug.affine_rotate)
    if aug.crop_padding > 0:
        p["crop_y"] = torch.randint(0, 2 * aug.crop_padding + 1, (n,), generator=g)
        p["crop_x"] = torch.randint(0, 2 * aug.crop_padding + 1, (n,), generator=g)
    if aug.flip == "random":
        p["flip"] = torch.rand(n, generator=g) < 0.5
    if aug.cutout > 0:
        holes = (n,) if aug.cutout_holes == 1 else (n, aug.cutout_holes)
        p["cutout"] = torch.rand(n, generator=g) < aug.cutout_p
        p["cut_y"] = torch.randint(0, h, holes, generator=g)
        p["cut_x"] = torch.randint(0, w, holes, generator=g)
        if aug.cutout_min > 0:
            p["cut_size"] = torch.randint(aug.cutout_min, aug.cutout + 1, holes, generator=g)
    return p


def slice_params(params: dict[str, torch.Tensor], index: slice | torch.Tensor,
                 device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The parameters of a subset of samples, optionally moved to ``device``."""
    return {k: (v[index].to(device, non_blocking=True) if device is not None else v[index])
            for k, v in params.items()}


# ---------------------------------------------------------------------------------------
# Transforms with explicit parameters
# ---------------------------------------------------------------------------------------
def _bcast(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace masked samples of [0,1] RGB images by their luma (ITU-R 601), 3 channels."""
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    return torch.where(_bcast(mask), gray.expand_as(x), x)


def brightness_contrast(x: torch.Tensor, mask: torch.Tensor, brightness: torch.Tensor,
                        contrast: torch.Tensor) -> torch.Tensor:
    """Scale brightness, then contrast around each image's mean luma; [0,1] in and out."""
    b = brightness.to(x.dtype).view(-1, 1, 1, 1)
    c = contrast.to(x.dtype).view(-1, 1, 1, 1)
    y = x * b
    luma = (0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
    y = ((y - luma) * c + luma).clamp(0, 1)
    return torch.where(_bcast(mask), y, x)


def affine(x: torch.Tensor, mask: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor,
           scale: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Shift (fraction of the side), zoom and rotate (degrees) masked samples.

    Bilinear sampling; pixels from outside the image are 0 (the mean after normalising).
    """
    rad = angle.to(x.dtype) * (math.pi / 180)
    cos, sin = torch.cos(rad) / scale.to(x.dtype), torch.sin(rad) / scale.to(x.dtype)
    # affine_grid maps output coords to input coords in [-1, 1]; a shift of s (fraction
    # of the side) moves content by +s, i.e. samples the input at -2s.
    theta = torch.stack([
        torch.stack([cos, -sin, -2 * shift_x.to(x.dtype)], dim=1),
        torch.stack([sin, cos, -2 * shift_y.to(x.dtype)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where(_bcast(mask), y, x)


def crop(x: torch.Tensor, padding: int, offset_y: torch.Tensor, offset_x: torch.Tensor,
         pad_mode: str = "zeros") -> torch.Tensor:
    """Pad by ``padding`` and crop the original size at per-sample offsets in [0, 2*padding].

    ``out[b, :, i, j] == padded[b, :, i + offset_y[b], j + offset_x[b]]``, so an offset of
    ``padding`` returns the image unchanged.
    """
    mode = "constant" if pad_mode == "zeros" else "reflect"
    return window(F.pad(x, (padding,) * 4, mode=mode), x.shape[-2:], offset_y, offset_x)


def window(x: torch.Tensor, size: tuple[int, int], offset_y: torch.Tensor, offset_x: torch.Tensor) -> torch.Tensor:
    """A ``size`` (h, w) window of each image at per-sample offsets (its top-left corner).

    ``out[b, :, i, j] == x[b, :, i + offset_y[b], j + offset_x[b]]``; offsets lie in
    ``[0, H - h]`` and ``[0, W - w]``.
    """
    b, c = x.shape[:2]
    h, w = size
    rows = (offset_y.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (offset_x.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return x[bi, ci, rows, cols]


def crop_flip_u8(x: torch.Tensor, padding: int, offset_y: torch.Tensor | None, offset_x: torch.Tensor | None,
                 flip: torch.Tensor | None) -> torch.Tensor:
    """:func:`crop` with reflect padding, then :func:`hflip`, as one gather on the uint8 batch.

    The same pixels as normalising first and then padding, cropping and mirroring (reflect
    padding and mirroring only move values), at a fraction of the memory traffic: the
    training loader's fast path. ``offset_y``/``offset_x`` may be None (no crop; then
    ``padding`` is ignored), and so may ``flip``.
    """
    b, c, h, w = x.shape
    dev = x.device

    def reflect(t: torch.Tensor, n: int) -> torch.Tensor:  # torch's 'reflect': -1 -> 1, n -> n - 2
        t = t.abs()
        return torch.where(t > n - 1, 2 * (n - 1) - t, t)

    rows = torch.arange(h, device=dev).view(1, h).expand(b, h)
    cols = torch.arange(w, device=dev).view(1, w).expand(b, w)
    if flip is not None:
        cols = torch.where(flip.view(b, 1), w - 1 - cols, cols)
    if offset_y is not None:
        rows = reflect(rows + (offset_y.view(b, 1) - padding), h)
        cols = reflect(cols + (offset_x.view(b, 1) - padding), w)
    src = (rows.view(b, h, 1) * w + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, src).view(b, c, h, w)


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror masked samples left-right."""
    return torch.where(_bcast(mask), x.flip(3), x)


def cutout_mask(shape: tuple[int, int, int, int], size: int | torch.Tensor, center_y: torch.Tensor,
                center_x: torch.Tensor, apply_mask: torch.Tensor) -> torch.Tensor:
    """Boolean (B,1,H,W) mask of the squares of the applied samples.

    ``center_y``/``center_x``: (B,) one square per sample, or (B, K) K squares; ``size``: one
    side for all, or a side per square (same shape as the centres). A square spans rows
    ``[cy - size//2, cy - size//2 + size)`` (same for columns), clipped at the border.
    """
    b, _, h, w = shape
    dev = center_y.device
    side = (size if isinstance(size, torch.Tensor) else torch.full_like(center_y, size)).view(b, -1, 1, 1)
    y0 = center_y.view(b, -1, 1, 1) - side // 2
    x0 = center_x.view(b, -1, 1, 1) - side // 2
    ys = torch.arange(h, device=dev).view(1, 1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, 1, w)
    m = ((ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side)).any(1)
    return (m & apply_mask.view(b, 1, 1)).unsqueeze(1)


def cutout(x: torch.Tensor, size: int | torch.Tensor, center_y: torch.Tensor, center_x: torch.Tensor,
           apply_mask: torch.Tensor, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Fill the (clipped) squares of each applied sample with ``fill``: 0 is the dataset mean of
    normalised images; a (1, C, 1, 1) tensor gives each channel its own (normalised) value."""
    mask = cutout_mask(tuple(x.shape), size, center_y, center_x, apply_mask)
    if isinstance(fill, torch.Tensor):
        return torch.where(mask, fill.to(x.dtype), x)
    return x.masked_fill(mask, fill)


# ---------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------
def apply_colour(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Colour transforms on [0,1] float images."""
    if "gray" in params:
        x = grayscale(x, params["gray"])
    if "jitter" in params:
        x = brightness_contrast(x, params["jitter"], params["brightness"], params["contrast"])
    return x


def apply_geometric(x: torch.Tensor, params: dict[str, torch.Tensor], aug: AugmentConfig,
                    fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Geometric transforms and cutout (its squares filled with ``fill``) on normalised images."""
    if "affine" in params:
        x = affine(x, params["affine"], params["shift_x"], params["shift_y"], params["scale"], params["angle"])
    if "crop_y" in params:
        x = crop(x, aug.crop_padding, params["crop_y"], params["crop_x"], aug.pad_mode)
    if "flip" in params:
        x = hflip(x, params["flip"])
    if "cutout" in params:
        x = cutout(x, params.get("cut_size", aug.cutout), params["cut_y"], params["cut_x"], params["cutout"], fill)
    return x


# ---------------------------------------------------------------------------------------
# Batch mixing: MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019)
# ---------------------------------------------------------------------------------------
def sample_mix_params(n_batches: int, aug: AugmentConfig, size: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """Per-batch mixing parameters, drawn from ``seed`` (NumPy: it samples Beta laws).

    Returns arrays of length ``n_batches``: ``apply`` (bool), ``cutmix`` (bool: CutMix,
    else MixUp; with both enabled each batch picks one with p=0.5), ``lam`` (the weight of
    the batch itself; for CutMix, 1 - the pasted box's area fraction after clipping) and
    the box ``y0, y1, x0, x1`` (CutMix) around its centre ``cy, cx``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    apply = rng.random(n_batches) < aug.mix_p
    if aug.mixup > 0 and aug.cutmix > 0:
        use_cut = rng.random(n_batches) < 0.5
    else:
        use_cut = np.full(n_batches, aug.cutmix > 0)
    lam_mix = rng.beta(aug.mixup, aug.mixup, n_batches) if aug.mixup > 0 else np.ones(n_batches)
    lam_cut = rng.beta(aug.cutmix, aug.cutmix, n_batches) if aug.cutmix > 0 else np.ones(n_batches)
    # The box: side sqrt(1 - lam) of the image, centred uniformly, clipped at the border.
    cy, cx = rng.integers(0, h, n_batches), rng.integers(0, w, n_batches)
    r = np.sqrt(1.0 - lam_cut)
    bh, bw = (h * r).astype(np.int64), (w * r).astype(np.int64)
    y0, y1 = np.clip(cy - bh // 2, 0, h), np.clip(cy - bh // 2 + bh, 0, h)
    x0, x1 = np.clip(cx - bw // 2, 0, w), np.clip(cx - bw // 2 + bw, 0, w)
    lam_box = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    lam = np.where(apply, np.where(use_cut, lam_box, lam_mix), 1.0)
    return {"apply": apply, "cutmix": use_cut & apply, "lam": lam, "y0": y0, "y1": y1, "x0": x0, "x1": x1,
            "cy": cy, "cx": cx}


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, params: dict[str, Any]) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Mix a batch with itself rolled by one sample (the partner of sample i is i - 1).

    Args:
        x: (B, C, H, W) images.
        y: (B,) class indices.
        num_classes: width of the soft targets.
        params: one batch's entries of :func:`sample_mix_params` (scalars).

    Returns:
        The mixed images and soft targets (B, num_classes) whose rows sum to 1: ``lam`` on
        the sample's class and ``1 - lam`` on its partner's.
    """
    target = F.one_hot(y, num_classes).to(torch.float32)
    if not bool(params["apply"]):
        return x, target
    lam = float(params["lam"])
    xr, tr = x.roll(1, 0), target.roll(1, 0)
    if bool(params["cutmix"]):
        y0, y1, x0, x1 = (int(params[k]) for k in ("y0", "y1", "x0", "x1"))
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = xr[:, :, y0:y1, x0:x1]
    else:
        x = x * lam + xr * (1.0 - lam)
    return x, target * lam + tr * (1.0 - lam)
