"""After training: predictions on the test split, the pictures, the CAM checks, the report.

:class:`Analysis` is what the CLI runs after training (:meth:`Analysis.run_all`) and what
the notebook calls cell by cell (one figure per method). With a run folder each figure
is saved into ``images/``; on a finished run that is being looked at again (the notebook
re-run), each method shows the saved picture instead and nothing is written.

CAM checks, in ``metrics.json`` and ``report.md``:

- datasets with object boxes (shapes): the pointing game (the share of correctly
  classified test images whose CAM maximum falls inside the object's box) for the true
  class, next to three baselines on the same images: a random point (the mean box
  area), the image centre, and the CAM of a wrong class;
- every dataset: ROAD "most relevant first" (pytorch-grad-cam's metric; the CAM's top
  20% pixels are replaced by noisy linear imputation) as the change in the softmax
  probability of the explained class, on the misclassified images (predicted class)
  and on a fixed sample of correctly classified ones, next to the same score for a
  random map. A more negative change than the random map's means that the CAM found
  pixels the model relies on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from . import viz
from .engine import predict

logger = logging.getLogger("eva8_utils")

ROAD_PERCENTILE = 80      # ROAD removes the CAM's top 100 - 80 = 20% pixels
ROAD_CORRECT_SAMPLE = 200  # correctly classified test images in the ROAD check
POINTING_MAX_IMAGES = 500


class Analysis:
    """The analysis of one trained experiment.

    Args:
        exp: an assembled, trained :class:`~eva8_utils.experiment.Experiment`.
        run: its :class:`~eva8_utils.rundir.RunDir` (None: figures are only returned).
        result: what training returned (``fit``'s dict); decides which weights are
            analysed: the EMA weights when they scored better than the plain ones.
    """

    def __init__(self, exp, run=None, result: dict[str, Any] | None = None):
        self.exp, self.run, self.result = exp, run, result or {}
        self.cfg = exp.cfg
        self.saved = bool(self.result.get("finished")) and run is not None
        self.model, self.weights = exp.model, "final"
        ema_final, final = self.result.get("ema_final"), self.result.get("final")
        if exp.ema is not None and ema_final is not None and final is not None \
                and ema_final["test_acc"] > final["test_acc"]:
            self.model, self.weights = exp.ema.module, "EMA"
        self.metrics: dict[str, Any] = {}
        self._pred: tuple[torch.Tensor, torch.Tensor] | None = None
        self._mis: dict[str, Any] | None = None

    # ------------------------------------------------------------------ data
    def predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, C) and labels (N,) of the whole test split, in the training precision."""
        if self._pred is None:
            self._pred = predict(self.model, self.exp.full_test_loader(), device=self.exp.device,
                                 amp_dtype=self.exp.precision.dtype)
        return self._pred

    def misclassified_set(self) -> dict[str, Any]:
        """The ``num_images`` most confident mistakes (see :func:`viz.find_misclassified`)."""
        if self._mis is None:
            logits, labels = self.predictions()
            self._mis = viz.find_misclassified(logits, labels, n=self.cfg.num_images)
        return self._mis

    def _figure(self, name: str, make) -> Figure | None:
        if self.saved:
            path = self.run.path / "images" / f"{name}.png"
            return viz.image_figure(path) if path.is_file() else None
        fig = make()
        if fig is not None and self.run is not None:
            self.run.save_figure(name, fig)
        return fig

    # ------------------------------------------------------------------ figures
    def samples(self) -> Figure | None:
        """32 augmented training images of epoch 1, as the model sees them."""
        def make():
            loader, s = self.exp.train_loader, self.exp.splits
            loader.set_epoch(1)
            xs, ys = next(iter(loader))
            if ys.dim() == 2:  # mixed batches: show the dominant label
                ys = ys.argmax(1)
            return viz.plot_samples(xs[:32].cpu(), ys[:32].cpu(), s.classes, s.mean, s.std)
        return self._figure("samples", make)

    def curves(self) -> Figure | None:
        return self._figure("curves", lambda: viz.plot_history(self.exp.history_so_far()))

    def lr_finder(self) -> Figure | None:
        r = self.exp.lr_result
        if r is None and not self.saved:
            return None
        return self._figure("lr_finder", lambda: viz.plot_lr_finder(r.lrs, r.losses, r.suggestion,
                                                                    raw_losses=r.raw_losses))

    def misclassified(self) -> Figure | None:
        def make():
            mis, s = self.misclassified_set(), self.exp.splits
            if not len(mis["indices"]):
                logger.info("no misclassified test images: misclassified.png and gradcam.png are not drawn")
                return None
            x, y = self.exp.full_test_loader().batch_at(mis["indices"])
            return viz.plot_misclassified(x.cpu(), y.cpu(), mis["preds"], s.classes, s.mean, s.std,
                                          confidences=mis["confidences"])
        return self._figure("misclassified", make)

    def gradcam(self) -> Figure | None:
        """CAMs of the misclassified images, for the predicted and for the true class."""
        def make():
            from .cam import compute_cams

            mis, s = self.misclassified_set(), self.exp.splits
            if not len(mis["indices"]):
                return None
            x, y = self.exp.full_test_loader().batch_at(mis["indices"])
            kw = self.cam_args()
            cams_pred = compute_cams(self.model, x, mis["preds"], **kw)
            cams_true = compute_cams(self.model, x, y.cpu(), **kw)
            return viz.plot_cam_grid(x.cpu(), cams_pred, cams_true, y.cpu(), mis["preds"], s.classes, s.mean, s.std,
                                     method=self.cfg.cam_method, layer=kw["layer"])
        return self._figure("gradcam", make)

    def confusion_matrix(self) -> Figure | None:
        def make():
            logits, labels = self.predictions()
            cm = viz.confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), self.exp.splits.num_classes)
            return viz.plot_confusion_matrix(cm, self.exp.splits.classes)
        return self._figure("confusion_matrix", make)

    def per_class_accuracy(self) -> Figure | None:
        def make():
            return viz.plot_per_class_accuracy(self._per_class(), self.exp.splits.classes)
        return self._figure("per_class_accuracy", make)

    def _per_class(self) -> np.ndarray:
        logits, labels = self.predictions()
        return viz.per_class_accuracy(labels.numpy(), logits.argmax(1).numpy(), self.exp.splits.num_classes)

    # ------------------------------------------------------------------ CAM checks
    def cam_args(self) -> dict[str, Any]:
        return dict(method=self.cfg.cam_method, layer=self.exp.cam_layer, reshape_transform=self.exp.cam_reshape,
                    smooth=self.cfg.cam_smooth)

    def cam_checks(self) -> dict[str, Any]:
        """The pointing game with its baselines (datasets with boxes) and the ROAD scores."""
        if self.saved:
            return {k: v for k, v in self.run.read_metrics().items() if k.startswith("cam_")}
        if any(k.startswith("cam_") for k in self.metrics):  # computed once
            return {k: v for k, v in self.metrics.items() if k.startswith("cam_")}
        from .cam import cam_pointing_game, road_faithfulness

        exp, out = self.exp, {}
        loader, s = exp.full_test_loader(), exp.splits
        kw = self.cam_args()
        if s.boxes_test is not None:
            n = min(len(s.y_test), 2 * POINTING_MAX_IMAGES)
            x, y = loader.batch_at(torch.arange(n))
            pg = cam_pointing_game(self.model, x, y, s.boxes_test[:n], method=kw["method"], layer=kw["layer"],
                                   reshape_transform=kw["reshape_transform"], max_images=POINTING_MAX_IMAGES,
                                   seed=self.cfg.seed)
            out.update(cam_pointing_game=round(pg["score"], 4), cam_pointing_random_point=round(pg["random_point"], 4),
                       cam_pointing_centre=round(pg["centre"], 4), cam_pointing_wrong_class=round(pg["wrong_class"], 4),
                       cam_pointing_n=pg["n"])
            logger.info("CAM pointing game (%s at %s, true class, %d correctly classified test images): %.3f; "
                        "baselines: random point %.3f, image centre %.3f, CAM of a wrong class %.3f", kw["method"],
                        kw["layer"], pg["n"], pg["score"], pg["random_point"], pg["centre"], pg["wrong_class"])
        logits, labels = self.predictions()
        preds = logits.argmax(1)
        mis = self.misclassified_set()
        correct = (preds == labels).nonzero().flatten()
        rng = np.random.default_rng(self.cfg.seed)
        sample = np.sort(rng.permutation(correct.numpy())[:ROAD_CORRECT_SAMPLE])
        for name, idx, targets in (("mis", mis["indices"], mis["preds"]), ("correct", sample, labels.numpy()[sample])):
            if not len(idx):
                continue
            x, _ = loader.batch_at(idx)
            r = road_faithfulness(self.model, x, targets, percentile=ROAD_PERCENTILE, seed=self.cfg.seed, **kw)
            out.update({f"cam_road_{name}": round(r["score"], 4), f"cam_road_{name}_random": round(r["random"], 4),
                        f"cam_road_{name}_n": r["n"]})
        if "cam_road_correct" in out:
            logger.info("CAM ROAD (most relevant 20%% removed; change in the class probability, lower = more faithful):"
                        " misclassified %s (random map %s), correct %.3f (random map %.3f)",
                        _f3(out.get("cam_road_mis")), _f3(out.get("cam_road_mis_random")), out["cam_road_correct"],
                        out["cam_road_correct_random"])
        self.metrics.update(out)
        return out

    # ------------------------------------------------------------------ all of it
    def run_all(self) -> dict[str, Any]:
        """Every figure and check (what the CLI does after training)."""
        for make in (self.curves, self.samples, self.lr_finder, self.misclassified, self.gradcam,
                     self.confusion_matrix, self.per_class_accuracy):
            make()
        self.cam_checks()
        return self.metrics

    def finish(self, **extra: Any) -> dict[str, Any]:
        """metrics.json ``done`` (per-class accuracy, mistakes, CAM checks, which weights)
        and report.md; on a finished run being looked at again, the saved metrics."""
        if self.saved:
            return self.run.read_metrics()
        exp, cfg = self.exp, self.cfg
        values: dict[str, Any] = dict(extra)
        if self.result.get("final") is not None:
            from .runfiles import final_metrics

            values.update(final_metrics(self.result, cfg.tta))
        notes = []
        if cfg.analysis:
            self.cam_checks()
            per_class = self._per_class()
            mis = self.misclassified_set()
            values.update(per_class_acc={c: round(float(a), 2) for c, a in zip(exp.splits.classes, per_class)},
                          misclassified_count=mis["count"], cam_method=cfg.cam_method, cam_layer=exp.cam_layer,
                          analysis_weights=self.weights, **self.metrics)
            worst = int(np.nanargmin(per_class))
            logger.info("per-class accuracy: lowest %s %.2f%%, highest %s %.2f%%; %d misclassified test images",
                        exp.splits.classes[worst], per_class[worst], exp.splits.classes[int(np.nanargmax(per_class))],
                        np.nanmax(per_class), mis["count"])
            if self.weights == "EMA":
                notes.append(f"The pictures and checks use the EMA weights, which scored "
                             f"{self.result['ema_final']['test_acc']:.2f}% against {self.result['final']['test_acc']:.2f}% "
                             f"for the final weights.")
            if "cam_road_correct" in self.metrics:
                notes.append("ROAD: the change in the softmax probability of the explained class after the CAM's "
                             "top 20% pixels are replaced by noisy linear imputation; lower than the random map's "
                             "means the CAM points at pixels the model uses.")
        if self.run is None:
            return values
        metrics = self.run.finish(**values)
        if cfg.analysis:
            self.run.write_report(cfg, exp.splits.classes, notes)
        return metrics


def _f3(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


__all__ = ["Analysis", "ROAD_PERCENTILE"]
