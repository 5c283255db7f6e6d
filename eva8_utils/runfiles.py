"""What a run folder's files say: history.csv and steps.csv, the metrics, the differences
between a saved config and a new one, and report.md. Text in, text out; :class:`~eva8_utils.rundir.RunDir`
writes them."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .config import TrainConfig, experiment_settings, flag
from .engine import HISTORY_COLUMNS
from .errors import ConfigError

# Settings a resumed run may change: more --epochs extend a finished or stopped run (a schedule
# fixed at the start refuses that when the checkpoint is restored).
RESUME_MAY_CHANGE = ("epochs",)
IMAGE_NAMES = ("curves", "misclassified", "gradcam", "confusion_matrix", "per_class_accuracy", "samples",
               "lr_finder")


def final_metrics(result: dict[str, Any], tta: str) -> dict[str, Any]:
    """The metrics.json entries of fit's final evaluations (plain, TTA, EMA)."""
    out: dict[str, Any] = {"test_acc": result["final"]["test_acc"], "test_loss": result["final"]["test_loss"]}
    if result.get("tta") is not None:
        out.update(test_acc_tta=result["tta"]["test_acc"], test_loss_tta=result["tta"]["test_loss"], tta=tta)
    if result.get("ema_final") is not None:
        out.update(ema_test_acc=result["ema_final"]["test_acc"], ema_test_loss=result["ema_final"]["test_loss"])
    if result.get("ema_tta") is not None:
        out.update(ema_test_acc_tta=result["ema_tta"]["test_acc"])
    if result.get("warnings"):
        out["warnings"] = list(result["warnings"])
    return out


# ---------------------------------------------------------------------------------------
# File formats
# ---------------------------------------------------------------------------------------
def history_csv(history: dict[str, list]) -> str:
    cols = [c for c in history if c != "steps" and not c.startswith("_")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for i in range(len(history["epoch"])):
        w.writerow([_fmt(history[c][i]) for c in cols])
    return buf.getvalue()


def steps_csv(history: dict[str, list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "epoch", "lr", "loss"])
    for row in history["steps"]:
        w.writerow([row[0], row[1], _fmt(row[2]), _fmt(row[3])])
    return buf.getvalue()


def _fmt(v: Any) -> Any:
    return repr(float(v)) if isinstance(v, float) else v


def read_history_csv(path: str | Path) -> dict[str, list]:
    """history.csv -> dict of column lists (numbers parsed).

    Raises:
        ConfigError: the file is missing or not a history (names the file).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        out: dict[str, list] = {k: [] for k in (rows[0].keys() if rows else HISTORY_COLUMNS)}
        for r in rows:
            for k, v in r.items():
                out[k].append(int(v) if k == "epoch" else float(v))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path} is not a readable history.csv ({type(e).__name__}); is it a run folder?") from None
    if "epoch" not in out or "test_acc" not in out:
        raise ConfigError(f"{path} is not a history.csv (no epoch/test_acc columns); is it a run folder?")
    out.setdefault("steps", [])
    return out


def history_metrics(history: dict[str, list]) -> dict[str, Any]:
    """The metrics.json entries that follow from a history (last and best epoch, times)."""
    m: dict[str, Any] = {"epochs": len(history["epoch"])}
    if history["epoch"]:
        i_best = max(range(len(history["test_acc"])), key=lambda i: history["test_acc"][i])
        m.update(test_acc=history["test_acc"][-1], test_loss=history["test_loss"][-1],
                 train_acc=history["train_acc"][-1], train_loss=history["train_loss"][-1],
                 best_test_acc=history["test_acc"][i_best], best_epoch=history["epoch"][i_best])
        if history.get("ema_test_acc"):
            m.update(ema_test_acc=history["ema_test_acc"][-1], ema_test_loss=history["ema_test_loss"][-1])
    times = history.get("_epoch_times", [])
    if times:
        m.update(train_time_s=round(float(sum(times)), 3), epoch_time_s=round(float(sum(times) / len(times)), 3))
    return m


def resume_differences(saved: dict[str, Any], cfg: TrainConfig, saved_world: int = 1, world: int = 1) -> list[str]:
    """The settings ``cfg`` changes in a saved run, other than those a resume may change
    (:data:`RESUME_MAY_CHANGE`; run-control settings never count; the per-process batch size
    when the global batch stays, ``saved_world`` and ``world`` being the numbers of processes). The saved config is
    read as a resume reads it."""
    from .config import build_config

    base = {k: v for k, v in saved.items() if k not in ("resume", "overwrite", "out")}
    try:
        now = build_config(base=base).to_dict()
    except ConfigError:
        now = saved
    # Under another number of torchrun processes the per-process batch may change with the global one kept.
    same_global = int(now.get("batch_size", 0)) * saved_world == cfg.batch_size * world
    return [d for d in config_differences(now, cfg) if d.split(" ", 1)[0] not in RESUME_MAY_CHANGE
            and not (d.startswith("batch-size ") and same_global)]


def config_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Settings that differ between a saved run's config and ``cfg`` ("epochs 20 vs 10")."""
    a, b = experiment_settings(saved), experiment_settings(cfg)
    out = []
    for k, v in b.items():
        if k == "lr" and v == "auto":
            continue  # the saved config holds the LR the finder chose
        if k in a and a[k] != v:
            out.append(f"{flag(k)[2:]} {a[k]!r} there vs {v!r} here")
    return out


def report_markdown(run_dir: Path, cfg: TrainConfig, metrics: dict[str, Any], classes,
                    notes: list[str] | None = None) -> str:
    lines = [f"# Run report: {metrics.get('model', cfg.model)} on {metrics.get('dataset', cfg.dataset)}", ""]
    lines += ["## Final metrics", "", "| metric | value |", "|---|---|"]
    for key in ("test_acc", "test_acc_tta", "test_loss", "best_test_acc", "best_epoch", "ema_test_acc",
                "ema_test_acc_tta", "epochs", "train_time_s", "epoch_time_s", "train_tflops_per_s", "mfu", "device",
                "precision", "num_params",
                "misclassified_count", "analysis_weights"):
        if key in metrics:
            v = metrics[key]
            lines.append(f"| {key} | {v:.4g} |" if isinstance(v, float) else f"| {key} | {v} |")
    cam = {k: v for k, v in metrics.items() if k.startswith("cam_")}
    if cam:
        lines += ["", "## CAM checks", "", "| check | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(cam.items())]
    lines += [f"- {n}" for n in ([""] if notes else []) + (notes or []) if n]
    if metrics.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in metrics["warnings"]]
    lines += ["", "## Per-class test accuracy", "", "| class | accuracy (%) |", "|---|---|"]
    for c in classes:
        lines.append(f"| {c} | {metrics.get('per_class_acc', {}).get(c, float('nan')):.2f} |")
    lines += ["", "## Images", ""]
    for name in IMAGE_NAMES:
        if (run_dir / "images" / f"{name}.png").exists():
            lines += [f"### {name.replace('_', ' ')}", "", f"![{name}](images/{name}.png)", ""]
    defaults = TrainConfig()
    lines += ["## Config", "", "Settings that differ from the defaults (all of them are in config.yaml):", ""]
    lines += [f"- `{k}`: {v!r}" for k, v in cfg.to_dict().items() if getattr(defaults, k) != v] or ["- (none)"]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy/torch scalars to Python numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
