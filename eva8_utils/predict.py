"""Predictions on new images with a trained checkpoint.

    eva8 predict --checkpoint RUN/checkpoints/best.pt cat.jpg photos/ [--topk 3] [--cam] [--out DIR]
    eva8 predict --checkpoint shared.pt --model mymodels:MyNet cat.jpg   # a model of your own code

A checkpoint whose model is code outside eva8_utils is refused unless ``--model`` /
``--import`` name that code (docs/checkpoints.md).

prints a table (file, top-k classes with probabilities), writes ``DIR/predictions.csv``
and, with ``--cam``, one CAM overlay PNG per image for its top class in ``DIR/cam/``.
Images are read as in training: converted to RGB, resized (bilinear) to the
checkpoint's image size, normalised with its mean/std. Every file is read before
anything is written, so an unreadable file stops the command with one line naming it
and leaves no half-written output.

Python: :func:`predict_images`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import load_model
from .data import IMAGE_EXTENSIONS, decode_image
from .errors import ConfigError, DataError
from .utils import atomic_write_text, get_device, normalize


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``paths`` (files, or folders searched recursively, sorted).

    Raises:
        DataError: a path that does not exist, a named file that is not an image, or a
            folder without images.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise DataError(f"{p} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist; give image files or folders")
    if not files:
        raise DataError("no images given; name image files or folders")
    return list(dict.fromkeys(files))  # a file named twice (also through its folder) is classified once


def _resolve(model_or_checkpoint, classes, mean, std, image_size, device):
    if isinstance(model_or_checkpoint, (str, Path)):
        model, ckpt = load_model(model_or_checkpoint, map_location=device)
    elif isinstance(model_or_checkpoint, tuple):
        model, ckpt = model_or_checkpoint
    else:
        model, ckpt = model_or_checkpoint, {}
    if not isinstance(model, nn.Module):
        raise ConfigError("predict_images needs a checkpoint path, load_model()'s (model, checkpoint) or an nn.Module")
    classes = list(classes or ckpt.get("classes") or [])
    mean, std = mean or ckpt.get("mean"), std or ckpt.get("std")
    image_size = int(image_size or ckpt.get("image_size") or 0)
    if not classes or mean is None or std is None or not image_size:
        raise ConfigError("predict_images: a bare model needs classes=, mean=, std= and image_size= "
                          "(a checkpoint carries them)")
    return model.to(device).eval(), ckpt, classes, mean, std, image_size


def predict_images(model_or_checkpoint, paths: Sequence[str | Path], *, topk: int = 3,
                   device: torch.device | str | None = None, cam: bool = False, cam_method: str = "gradcam",
                   cam_layer: str | None = None, classes: Sequence[str] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   image_size: int | None = None, batch_size: int = 256) -> list[dict[str, Any]]:
    """Classify image files.

    Args:
        model_or_checkpoint: a checkpoint path, the ``(model, checkpoint)`` pair of
            :func:`~eva8_utils.checkpoint.load_model`, or an nn.Module (then give
            ``classes``, ``mean``, ``std`` and ``image_size``). A checkpoint of a model
            that is code outside eva8_utils: load it naming that code,
            ``predict_images(load_model(path, model="mymodels:MyNet"), paths)``.
        paths: image files and/or folders (searched recursively).
        topk: how many classes per image.
        device: where to run (default: the best available).
        cam: also compute a CAM for each image's top class (``cam_method`` at
            ``cam_layer``, default: the model's layer of at least 7x7).

    Returns:
        One dict per image: ``file``, ``top`` (list of (class, probability), best first),
        and with ``cam``: ``cam`` (H, W) in [0, 1] and ``image`` (H, W, 3) in [0, 1].

    Raises:
        DataError: a missing or unreadable file (named).
        UntrustedCodeError: a checkpoint path whose model is code outside eva8_utils.
    """
    device = torch.device(device) if device is not None else get_device("auto")
    model, ckpt, classes, mean, std, size = _resolve(model_or_checkpoint, classes, mean, std, image_size, device)
    files = image_files(paths)
    images = np.stack([decode_image(f, size) for f in files])                  # (N, H, W, 3) uint8
    x_all = normalize(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), mean, std)
    k = max(1, min(int(topk), len(classes)))
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for i in range(0, len(files), batch_size):
            probs = torch.softmax(model(x_all[i:i + batch_size].to(device)).float(), dim=1).cpu()
            p, c = probs.topk(k, dim=1)
            for j in range(len(p)):
                rows.append({"file": str(files[i + j]),
                             "top": [(classes[int(ci)], float(pi)) for pi, ci in zip(p[j], c[j])]})
    if cam:
        from .cam import compute_cams, default_cam_layer

        from .models import cam_reshape_of

        ref = ckpt.get("model_ref") if isinstance(ckpt.get("model_ref"), dict) else {}
        layer = cam_layer or default_cam_layer(model, size)
        top = [classes.index(r["top"][0][0]) for r in rows]
        reshape = cam_reshape_of(model, ref.get("model") if isinstance(ref.get("model"), str) else None)
        maps = compute_cams(model, x_all.to(device), top, method=cam_method, layer=layer, reshape_transform=reshape)
        for r, m, img in zip(rows, maps, images):
            r["cam"], r["image"], r["cam_layer"] = m, img.astype(np.float32) / 255.0, layer
    return rows


def predictions_csv(rows: list[dict[str, Any]]) -> str:
    k = max(len(r["top"]) for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file"] + [f"{what}{i}" for i in range(1, k + 1) for what in ("class", "prob")])
    for r in rows:
        w.writerow([r["file"]] + [v for c, p in r["top"] for v in (c, f"{p:.6f}")])
    return buf.getvalue()


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: file and the top-k classes with probabilities."""
    width = min(max(len(r["file"]) for r in rows), 60)
    lines = [f"{'file':<{width}}  top classes"]
    for r in rows:
        name = r["file"] if len(r["file"]) <= width else "..." + r["file"][-(width - 3):]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c} {p:.3f}" for c, p in r["top"]))
    return "\n".join(lines)


def predict_cli(argv: Sequence[str]) -> int:
    from .cli import Parser, add_trust_flags, command
    from .rundir import save_figure
    from .viz import plot_cam_overlay

    p = Parser(prog=command("predict"), description="Classify image files or folders with a trained checkpoint: "
               "prints a table, writes OUT/predictions.csv and, with --cam, CAM overlays in OUT/cam/.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint of a run (e.g. RUN/checkpoints/best.pt)")
    p.add_argument("--topk", type=int, default=3, help="classes per image (default: 3)")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--cam", action="store_true", help="also save a CAM overlay PNG per image for its top class")
    p.add_argument("--cam-method", default="gradcam", help="CAM method (default: gradcam)")
    p.add_argument("--cam-layer", default=None, help="dotted layer name (default: the model's default)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default: auto)")
    add_trust_flags(p)
    a = p.parse_args(argv)
    if a.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {a.topk}")
    device = get_device(a.device)
    loaded = load_model(a.checkpoint, a.model, device, imports=a.imports)
    rows = predict_images(loaded, a.paths, topk=a.topk, device=device, cam=a.cam, cam_method=a.cam_method,
                          cam_layer=a.cam_layer)
    out = Path(a.out)
    # Everything is computed: now write (atomically, file by file).
    figures = {}
    if a.cam:
        names: dict[str, int] = {}
        for r in rows:
            stem = Path(r["file"]).stem
            names[stem] = names.get(stem, 0) + 1
            name = stem if names[stem] == 1 else f"{stem}_{names[stem]}"
            figures[out / "cam" / f"{name}.png"] = plot_cam_overlay(r["image"], r["cam"],
                                                                    f"{r['top'][0][0]} {r['top'][0][1]:.2f}")
    atomic_write_text(out / "predictions.csv", predictions_csv(rows))
    for path, fig in figures.items():
        save_figure(fig, path)
    stale = [f for f in sorted((out / "cam").glob("*.png")) if f not in figures]
    for f in stale:  # overlays of an earlier prediction into this folder: they would not match the csv
        f.unlink()
    print(table(rows))
    print(f"wrote {out / 'predictions.csv'}" + (f" and {len(figures)} CAM overlays in {out / 'cam'}" if figures else "")
          + (f"; removed {len(stale)} CAM overlays of an earlier prediction there" if stale else ""))
    return 0
