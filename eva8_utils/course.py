"""The course's habits: a plain loop of ``train`` / ``test`` calls in a notebook, with
plain torch objects (a model, a ``DataLoader`` of (x, y), an optimizer).

    history = new_history()
    for epoch in range(1, 21):
        tr = train_one_epoch(model, train_loader, optimizer, device, epoch)   # the tqdm bar
        te = test(model, device, test_loader)                                # "Test set: ..."
        add_epoch(history, epoch, {**tr, **te})
    plot_history(history)
    mistakes, cams = show_mistakes(model, test_loader, classes, device=device, layer="layer3")

No config object and no run folder are needed; :func:`~eva8_utils.engine.train_one_epoch`
also takes a criterion, a scheduler and callbacks (:class:`~eva8_utils.engine.Step`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn as nn
from matplotlib.figure import Figure

from . import viz
from .cam import compute_cams
from .engine import evaluate, predict, test_line

logger = logging.getLogger("eva8_utils")


def test(model: nn.Module, device: torch.device | str, test_loader, tta: str = "none") -> dict[str, Any]:
    """Evaluate ``model`` on ``test_loader`` and log the course's line
    ``Test set: Average loss: 0.4123, Accuracy: 8734/10000 (87.34%)``.

    Returns:
        :func:`~eva8_utils.engine.evaluate`'s dict (``test_loss``, ``test_acc``, ``correct``, ``total``).
    """
    result = evaluate(model, test_loader, device=device, tta=tta)
    logger.info(test_line(result))
    return result


def _images(loader, indices: Sequence[int]) -> torch.Tensor:
    """The images at ``indices`` of a (non-shuffled) loader's order."""
    wanted, found, seen = {int(i): k for k, i in enumerate(indices)}, {}, 0
    for x, _ in loader:
        for j in range(len(x)):
            if seen + j in wanted:
                found[wanted[seen + j]] = x[j].cpu()
        seen += len(x)
        if len(found) == len(wanted):
            break
    return torch.stack([found[k] for k in range(len(indices))]) if found else torch.zeros(0)


def show_mistakes(model: nn.Module, test_loader, classes: Sequence[str], *, device: torch.device | str,
                  layer: str | None = None, n: int = 10, mean: Sequence[float] = (0.0, 0.0, 0.0),
                  std: Sequence[float] = (1.0, 1.0, 1.0), method: str = "gradcam") -> tuple[Figure, Figure]:
    """The ``n`` most confident mistakes on a test loader (not shuffled), and their CAMs for the
    predicted and the true class.

    Args:
        model: the trained classifier (on ``device``).
        test_loader: yields (x, y) in a fixed order.
        classes: class names.
        device: where the model is.
        layer: the CAM layer's dotted name (None: a layer of at least 7x7).
        n: how many mistakes.
        mean, std: the normalisation of the loader's images, to show them as they are
            (the defaults fit ``ToTensor()`` without ``Normalize``).
        method: the CAM method (gradcam, gradcam++, ...).

    Returns:
        (misclassified images, CAM grid) as matplotlib Figures.
    """
    logits, labels = predict(model, test_loader, device=device)
    wrong = viz.find_misclassified(logits, labels, n)
    idx, preds = wrong["indices"], wrong["preds"]
    images, truth = _images(test_loader, idx), labels[idx]
    mistakes = viz.plot_misclassified(images, truth, preds, classes, mean, std, wrong["confidences"])
    cams_pred = compute_cams(model, images, preds, method=method, layer=layer)
    cams_true = compute_cams(model, images, truth, method=method, layer=layer)
    grid = viz.plot_cam_grid(images, cams_pred, cams_true, truth, preds, classes, mean, std, method=method,
                             layer=layer or "")
    return mistakes, grid


__all__ = ["test", "show_mistakes"]
