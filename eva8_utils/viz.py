"""Every plot: plain data in, a matplotlib Figure out.

Nothing here shows or saves a figure; the runner and the notebook do. Figures are
built with :class:`matplotlib.figure.Figure` directly (not pyplot), so they hold no
global state and are freed when dropped; in Jupyter, ``display(fig)`` shows one. Single-panel
plots accept ``ax=None``. Image arguments are normalised tensors/arrays (N, 3, H, W)
and are shown de-normalised with the dataset's own mean/std.

Also the small computations the plots need: misclassified selection, confusion
matrix, per-class accuracy.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .utils import denormalize, to_hwc_numpy


def _new(ax: Axes | None = None, figsize=(6, 4)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _image_grid(n: int, ncols: int, cell: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure with a grid of axes for ``n`` images, ``ncols`` per row, all axes off."""
    nrows = max(1, int(np.ceil(n / ncols)))
    fig = Figure(figsize=(cell[0] * ncols, cell[1] * nrows), layout="constrained")
    axs = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axs:
        ax.axis("off")
    return fig, axs


def _show_images(x, mean, std) -> np.ndarray:
    """Normalised (N, 3, H, W) -> displayable (N, H, W, 3) floats in [0, 1]."""
    return to_hwc_numpy(denormalize(_as_tensor(x).float().cpu(), mean, std))


# ---------------------------------------------------------------------------------------
# Computations behind the plots
# ---------------------------------------------------------------------------------------
def find_misclassified(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, n: int = 10,
                       order: str = "confidence") -> dict[str, np.ndarray]:
    """Indices of up to ``n`` wrong predictions.

    Args:
        logits: (N, C) scores.
        labels: (N,) true classes.
        n: how many.
        order: ``confidence`` (most confident mistakes first) or ``index`` (dataset order).

    Returns:
        dict with ``indices``, ``preds``, ``confidences`` (softmax of the predicted class)
        and ``count`` (all mistakes).
    """
    logits = _as_tensor(logits).float()
    labels = _as_tensor(labels).long()
    probs = torch.softmax(logits, dim=1)
    conf, preds = probs.max(dim=1)
    wrong = (preds != labels).nonzero().flatten()
    if order == "confidence":
        wrong = wrong[torch.argsort(conf[wrong], descending=True, stable=True)]
    elif order != "index":
        raise ValueError("order must be 'confidence' or 'index'")
    sel = wrong[:n]
    return {"indices": sel.numpy(), "preds": preds[sel].numpy(), "confidences": conf[sel].numpy(),
            "count": int(len(wrong))}


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_accuracy(labels, preds, num_classes: int) -> np.ndarray:
    """Accuracy (%) of each class over all of its test images (NaN for an absent class)."""
    cm = confusion_matrix(labels, preds, num_classes)
    totals = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * np.diag(cm) / np.maximum(totals, 1), np.nan)


# ---------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------
def plot_history(history: dict) -> Figure:
    """Training/test loss and accuracy (the assignment's four panels) and the LR per step.

    Args:
        history: dict with lists ``epoch``, ``train_loss``, ``train_acc``, ``test_loss``,
            ``test_acc`` and optionally ``steps`` ([step, epoch, lr, loss] rows) or ``lr``.
    """
    fig = Figure(figsize=(15, 8), layout="constrained")
    axs = fig.subplots(2, 3)
    ep = history["epoch"]
    panels = [("train_loss", "Training Loss", "loss"), ("train_acc", "Training Accuracy", "accuracy (%)"),
              ("test_loss", "Test Loss", "loss"), ("test_acc", "Test Accuracy", "accuracy (%)")]
    for ax, (key, title, ylabel) in zip([axs[0, 0], axs[0, 1], axs[1, 0], axs[1, 1]], panels):
        ax.plot(ep, history[key], marker="o", ms=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax = axs[0, 2]
    steps = history.get("steps") or []
    if steps:
        s = np.asarray(steps, dtype=float)
        ax.plot(s[:, 0], s[:, 2])
        ax.set_xlabel("step")
        axs[1, 2].plot(s[:, 0], s[:, 3], lw=0.6, alpha=0.8)
        axs[1, 2].set_title("Training loss per step")
        axs[1, 2].set_xlabel("step")
        axs[1, 2].grid(alpha=0.3)
    else:
        ax.plot(ep, history.get("lr", [np.nan] * len(ep)), marker="o", ms=3)
        ax.set_xlabel("epoch")
        axs[1, 2].axis("off")
    ax.set_title("Learning rate")
    ax.grid(alpha=0.3)
    return fig


def plot_misclassified(images, labels, preds, classes: Sequence[str], mean, std,
                       confidences=None, ncols: int = 5) -> Figure:
    """A gallery of wrong predictions, each titled with the actual and predicted class.

    Args:
        images: (N, 3, H, W) normalised images (N is usually 10).
        labels, preds: (N,) actual and predicted classes.
        classes: class names.
        mean, std: the dataset's normalisation, used to de-normalise.
        confidences: (N,) probability of the predicted class, shown when given.
    """
    imgs = _show_images(images, mean, std)
    fig, axs = _image_grid(len(imgs), ncols, (2.4, 2.7))
    for i, ax in enumerate(axs[:len(imgs)]):
        ax.imshow(imgs[i], interpolation="nearest")
        title = f"actual: {classes[int(labels[i])]}\npredicted: {classes[int(preds[i])]}"
        if confidences is not None:
            title += f" ({float(confidences[i]):.2f})"
        ax.set_title(title, fontsize=9)
    fig.suptitle("Misclassified test images")
    return fig


def plot_cam_grid(images, cams_pred: np.ndarray, cams_true: np.ndarray, labels, preds,
                  classes: Sequence[str], mean, std, method: str = "gradcam", layer: str = "",
                  alpha: float = 0.5, pairs_per_row: int = 2) -> Figure:
    """Each image beside its CAM for the predicted class and for the true class.

    Args:
        images: (N, 3, H, W) normalised images.
        cams_pred, cams_true: (N, H, W) maps in [0, 1] for the predicted / true class.
        labels, preds: (N,) classes.
        classes, mean, std: names and normalisation.
        method, layer: shown in the title.
    """
    imgs = _show_images(images, mean, std)
    n = len(imgs)
    nrows = max(1, int(np.ceil(n / pairs_per_row)))
    ncols = 3 * pairs_per_row
    fig = Figure(figsize=(2.1 * ncols, 2.4 * nrows), layout="constrained")
    axs = np.atleast_2d(fig.subplots(nrows, ncols))
    for ax in axs.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, pairs_per_row)
        a_img, a_pred, a_true = axs[r, 3 * c], axs[r, 3 * c + 1], axs[r, 3 * c + 2]
        a_img.imshow(imgs[i], interpolation="nearest")
        a_img.set_title(f"actual: {classes[int(labels[i])]}\npredicted: {classes[int(preds[i])]}", fontsize=8)
        for ax, cam, cls in ((a_pred, cams_pred[i], preds[i]), (a_true, cams_true[i], labels[i])):
            ax.imshow(imgs[i], interpolation="nearest")
            ax.imshow(cam, cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
            ax.set_title(f"CAM for {classes[int(cls)]}", fontsize=8)
    fig.suptitle(f"{method} at {layer}: predicted class | true class" if layer else method)
    return fig


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str]) -> Figure:
    """Two panels: counts, and rows normalised to 1 (recall per true class)."""
    cm = np.asarray(cm)
    k = len(classes)
    size = max(6.0, 0.45 * k + 3)
    fig = Figure(figsize=(2 * size, size), layout="constrained")
    axs = fig.subplots(1, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for ax, data, title, fmt in ((axs[0], cm, "Confusion matrix (counts)", "d"),
                                 (axs[1], norm, "Confusion matrix (row-normalised)", ".2f")):
        im = ax.imshow(data, cmap="Blues")
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        if k <= 20:
            ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(k), classes, fontsize=8)
            hi = data.max() / 2 if data.size else 0
            for i in range(k):
                for j in range(k):
                    v = data[i, j]
                    ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                            color="white" if v > hi else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_per_class_accuracy(acc: Sequence[float], classes: Sequence[str], ax=None) -> Figure:
    """Bar chart of accuracy (%) per class."""
    k = len(classes)
    fig, ax = _new(ax, figsize=(max(6, 0.5 * k + 2), 4))
    acc = np.asarray(acc, dtype=float)
    bars = ax.bar(range(k), acc, color="tab:blue")
    ax.set_xticks(range(k), classes if k <= 40 else [""] * k, rotation=45, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Per-class test accuracy")
    if k <= 20:
        for b, v in zip(bars, acc):
            ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_samples(images, labels, classes: Sequence[str], mean, std, ncols: int = 8) -> Figure:
    """A grid of (augmented) training images with their labels."""
    imgs = _show_images(images, mean, std)
    fig, axs = _image_grid(len(imgs), ncols, (1.6, 1.8))
    for i, ax in enumerate(axs[:len(imgs)]):
        ax.imshow(imgs[i], interpolation="nearest")
        ax.set_title(classes[int(labels[i])], fontsize=8)
    fig.suptitle("Augmented training samples")
    return fig


def plot_lr_finder(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None = None,
                   ax=None, raw_losses: Sequence[float] | None = None) -> Figure:
    """Smoothed loss against LR (log scale) with the suggested LR marked (and the raw loss of
    each step, faint, when given)."""
    fig, ax = _new(ax)
    if raw_losses is not None:
        ax.plot(lrs, raw_losses, color="tab:gray", alpha=0.35, lw=0.8, label="loss per step")
    ax.plot(lrs, losses, label="smoothed")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed loss")
    ax.set_title("LR range test")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", ls="--", label=f"suggested {suggestion:.3g}")
    if suggestion is not None or raw_losses is not None:
        ax.legend()
    ax.grid(alpha=0.3, which="both")
    return fig


def image_figure(path) -> Figure:
    """A saved picture (PNG) as a Figure at its own size, e.g. to show a finished run's images again."""
    from matplotlib.image import imread

    img = imread(str(path))
    dpi = 110
    fig = Figure(figsize=(img.shape[1] / dpi, img.shape[0] / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img)
    ax.axis("off")
    return fig


def plot_cam_overlay(image: np.ndarray, cam: np.ndarray, title: str = "", alpha: float = 0.5) -> Figure:
    """An image (H, W, 3 in [0, 1]) beside its CAM overlay (H, W in [0, 1])."""
    fig = Figure(figsize=(4.2, 2.4), layout="constrained")
    axs = fig.subplots(1, 2)
    axs[0].imshow(image, interpolation="nearest")
    axs[1].imshow(image, interpolation="nearest")
    axs[1].imshow(cam, cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
    for ax in axs:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_compare(histories: Sequence[dict], labels: Sequence[str]) -> Figure:
    """Test loss and accuracy (top) and training loss and accuracy (bottom) of several runs
    against epochs, one line per run (runs may have different lengths).

    Args:
        histories: dicts with lists ``epoch``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``.
        labels: one name per run.
    """
    if len(histories) != len(labels):
        raise ValueError(f"{len(histories)} histories but {len(labels)} labels")
    fig = Figure(figsize=(12, 8), layout="constrained")
    axs = fig.subplots(2, 2)
    panels = [("test_loss", "Test Loss", "loss"), ("test_acc", "Test Accuracy", "accuracy (%)"),
              ("train_loss", "Training Loss", "loss"), ("train_acc", "Training Accuracy", "accuracy (%)")]
    for ax, (key, title, ylabel) in zip(axs.ravel(), panels):
        for h, label in zip(histories, labels):
            ax.plot(h["epoch"], h[key], marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axs[0, 1].legend()
    return fig
