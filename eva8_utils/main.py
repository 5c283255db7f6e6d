"""The experiment runner and CLI: config in, run folder out.

    python -m eva8_utils.main [flags]        # or: eva8 [flags]
    python -m eva8_utils.main stats --dataset folder --data-dir DIR
    torchrun --nproc_per_node=N -m eva8_utils.main [flags]

A run folder holds ``config.yaml``, ``history.csv``, ``steps.csv``, ``metrics.json``,
``log.txt``, ``summary.txt``, ``checkpoints/{last,prev,best}.pt``, ``images/*.png``
and ``report.md``. A mistake in the input is one line on stderr and exit code 2,
before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml

from . import __version__
from . import distributed as D
from .config import RECIPES, TrainConfig, build_config, field_help, load_yaml
from .errors import ConfigError, NonFiniteLossError, TrainingInterrupted, UserError
from .utils import device_description, get_device, model_summary, seed_everything, setup_logging

logger = logging.getLogger("eva8_utils")

RUN_FILES = ("config.yaml", "history.csv", "steps.csv", "metrics.json", "log.txt", "summary.txt", "report.md")
RUN_DIRS = ("checkpoints", "images")
IMAGE_NAMES = ("curves", "misclassified", "gradcam", "confusion_matrix", "per_class_accuracy", "samples",
               "lr_finder")


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2) instead of printing usage."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{message}; see --help")


def _lr_type(text: str) -> Any:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid LR {text!r}: give a number or 'auto'") from None


def build_parser() -> argparse.ArgumentParser:
    """The training CLI: one flag per TrainConfig field (``--batch-size`` for batch_size)."""
    p = _Parser(
        prog="eva8",
        description="Train an image classifier and write a run folder (curves, misclassified images, "
                    "GradCAM, confusion matrix, checkpoints). Defaults: the assignment (ResNet18 on "
                    "CIFAR-10, 20 epochs, crop+flip+cutout, SGD + OneCycle). Subcommand: 'stats' prints "
                    "a dataset's mean/std and class counts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings (flags override it)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = field_help(f.name) + f" (default: {default!r})"
        if f.name == "lr":
            p.add_argument(flag, "--max-lr", dest="lr", type=_lr_type, help=help_text)
        elif f.name == "recipe":
            p.add_argument(flag, choices=sorted(RECIPES), help=help_text)
        elif isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag, dest=f.name, type=type(default), help=help_text)
    return p


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Resolve the config of a run from command-line arguments.

    Precedence: defaults < a resumed run's saved config < recipe < ``--config`` YAML < flags.
    """
    ns = vars(build_parser().parse_args(argv))
    config_path = ns.pop("config", None)
    yaml_values = load_yaml(config_path) if config_path else {}
    base = None
    if ns.get("resume", yaml_values.get("resume", False)) and ns.get("overwrite", yaml_values.get("overwrite")):
        raise ConfigError("--resume and --overwrite contradict each other; give one of them")
    if ns.get("resume", yaml_values.get("resume", False)):
        out = ns.get("out", yaml_values.get("out", ""))
        if not out:
            raise ConfigError("--resume needs --out RUN_DIR (the run folder to continue)")
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: {out} holds no run (no config.yaml); start it without --resume")
        base = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        base = {k: v for k, v in base.items() if k not in ("resume", "overwrite", "out")}
    return build_config(yaml_values, ns, base=base)


# ---------------------------------------------------------------------------------------
# Run folder
# ---------------------------------------------------------------------------------------
def holds_run(run_dir: Path) -> bool:
    return any((run_dir / n).exists() for n in ("config.yaml", "history.csv", "checkpoints", "metrics.json"))


def clear_run(run_dir: Path) -> None:
    """Remove the files a run writes (and nothing else) from ``run_dir``."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}"


def check_run_dir(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse to overwrite a run unless --resume or --overwrite is given."""
    if cfg.resume:
        if not (run_dir / "checkpoints").is_dir():
            raise ConfigError(f"--resume: {run_dir} has no checkpoints/ to continue from; start without --resume")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; give a folder")
    if holds_run(run_dir) and not cfg.overwrite:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                          f"replace it, or choose another --out")


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Save a Figure as PNG and release it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.clear()
    return path


# ---------------------------------------------------------------------------------------
# Interrupts: the first Ctrl-C / SIGTERM stops at the next batch boundary.
# ---------------------------------------------------------------------------------------
class StopRequest:
    """A flag set by SIGINT/SIGTERM; a second SIGINT interrupts immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stop requested (%s): finishing the current batch...", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        # Under torchrun the ranks could stop at different batches; there the default
        # handling applies (the last completed epoch is on disk either way).
        if threading.current_thread() is threading.main_thread() and D.world_size() == 1:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------
def run(cfg: TrainConfig, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train and analyse one run as configured; return its final metrics.

    Everything that can be refused (config, data, model, checkpoint) is checked before
    the run folder is created or changed.

    Raises:
        UserError: bad input (nothing written).
        NonFiniteLossError, TrainingInterrupted: training stopped; the last completed
            epoch is saved in the run folder.
    """
    from .checkpoint import load_training_state
    from .data import DeviceLoader, load_dataset, make_loaders
    from .engine import (LOOKAHEAD_START_EPOCHS, Lookahead, autocast_dtype, fit, make_scaler, optimizer_from_config, schedule_from_config,
                         set_lr, tta_metrics, unwrap, write_run_files)
    from .models import count_parameters, get_spec, model_from_config, prepare_model

    cfg.validate()
    device = D.init_from_env(get_device(cfg.device))
    rank0 = D.is_main()
    run_dir = Path(cfg.out) if cfg.out else Path(D.broadcast_object(str(default_run_dir(cfg))))
    check_run_dir(cfg, run_dir)
    if cfg.sync_bn and D.world_size() > 1 and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPU); "
                          "for multi-process CPU runs use --norm group or --norm layer")
    if not rank0:
        logging.getLogger("eva8_utils").setLevel(logging.WARNING)

    # --- build everything; refuse bad input before writing --------------------------------
    seed_everything(cfg.seed)
    splits = load_dataset(cfg)
    size = splits.image_size
    if cfg.cutout > size:
        raise ConfigError(f"--cutout {cfg.cutout} is larger than the {size}x{size} images; use at most {size}")
    if cfg.crop_padding >= size:
        raise ConfigError(f"--crop-padding {cfg.crop_padding} must be smaller than the image size {size}")
    model = model_from_config(cfg, splits.num_classes, size)
    spec = get_spec(cfg.model)
    if cfg.analysis and cfg.cam_layer:
        from .cam import get_layer

        get_layer(model, cfg.cam_layer)
    train_loader, test_loader = make_loaders(splits, cfg, device, D.rank(), D.world_size())
    prepare_model(model, train_loader, device, channels_last=cfg.channels_last, data_init=not cfg.resume,
                  seed=cfg.seed)
    if cfg.sync_bn and D.world_size() > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    amp_dtype = autocast_dtype(device, cfg.precision)
    optimizer = optimizer_from_config(model, cfg, lr=1e-3 if cfg.lr_is_auto else None)

    lr_result, lr_from_finder = None, cfg.lr_is_auto
    if (cfg.lr_find or cfg.lr_is_auto) and not cfg.resume:
        from .lr_finder import lr_range_test

        lr_result = lr_range_test(model, train_loader, optimizer, device=device, num_iter=cfg.lr_find_iters,
                                  label_smoothing=cfg.label_smoothing, amp_dtype=amp_dtype)
        if cfg.lr_is_auto:
            set_lr(optimizer, lr_result.suggestion)
            cfg = cfg.replace(lr=float(lr_result.suggestion))
    schedule = schedule_from_config(optimizer, cfg, len(train_loader))
    scaler = make_scaler(device, amp_dtype)
    lookahead = (Lookahead(model, start_step=LOOKAHEAD_START_EPOCHS * len(train_loader)) if cfg.lookahead
                 else None)
    start_epoch, history = 0, None
    if cfg.resume:
        start_epoch, history, used = load_training_state(
            run_dir, model=model, optimizer=optimizer, schedule=schedule, scaler=scaler, model_name=cfg.model,
            num_classes=splits.num_classes, map_location=device, lookahead=lookahead)

    # --- from here on the run folder is written (rank 0 only) ------------------------------
    if rank0:
        if cfg.overwrite and run_dir.exists():
            clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        setup_logging(run_dir / "log.txt")
    D.barrier()
    n_params = count_parameters(model)
    logger.info("eva8_utils %s | torch %s | python %s | device: %s%s", __version__, torch.__version__,
                platform.python_version(), device_description(device),
                f" x {D.world_size()} ranks" if D.world_size() > 1 else "")
    logger.info("data: %s, %d train / %d test images, %dx%d, %d classes; mean %s std %s", splits.name,
                len(splits.y_train), len(splits.y_test), size, size, splits.num_classes,
                _fmt3(splits.mean), _fmt3(splits.std))
    logger.info("model: %s, %s parameters; %s, batch %d%s, %d steps/epoch, %s schedule, lr %s",
                cfg.model, f"{n_params:,}", cfg.optimizer, cfg.batch_size,
                f" x {D.world_size()}" if D.world_size() > 1 else "", len(train_loader), cfg.scheduler,
                f"{cfg.lr:.4g}")
    logger.info("run folder: %s", run_dir)
    if rank0 and not cfg.resume:
        summary = model_summary(unwrap(model), size)
        (run_dir / "summary.txt").write_text(summary + "\n", encoding="utf-8")
        _log_to_file_only(summary)
    if lr_result is not None:
        logger.info("LR finder: suggested LR %.4g (swept %.2g..%.2g over %d steps)%s", lr_result.suggestion,
                    lr_result.lrs[0], lr_result.lrs[-1], len(lr_result.lrs),
                    "; used as the LR (--lr auto)" if lr_from_finder else "")
    if cfg.resume:
        logger.info("resuming from %s after epoch %d", used, start_epoch)

    train_model: torch.nn.Module = model
    if D.world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        train_model = torch.compile(train_model)

    meta = {"model_name": cfg.model, "num_classes": splits.num_classes, "image_size": size,
            "classes": list(splits.classes), "mean": list(splits.mean), "std": list(splits.std)}
    t_start = time.perf_counter()
    status = "failed"
    try:
        with StopRequest() as stop_request:
            result = fit(train_model, train_loader, test_loader, optimizer, schedule, cfg, device=device,
                         run_dir=run_dir, scaler=scaler, start_epoch=start_epoch, history=history,
                         stop=stop or stop_request, checkpoint_meta=meta, lookahead=lookahead)
        status = "done"
    except TrainingInterrupted as e:
        status = "interrupted"
        logger.warning("Interrupted in epoch %d at batch %d. Completed epochs saved: %d (%s). Resume with:\n"
                       "  python -m eva8_utils.main --out %s --resume", e.epoch, e.batch, e.completed_epochs,
                       run_dir / "checkpoints" / "last.pt", run_dir)
        raise
    except NonFiniteLossError as e:
        status = "failed: non-finite loss"
        logger.error("%s", e)
        raise
    finally:
        if rank0 and status != "done" and (run_dir / "metrics.json").exists():
            _set_status(run_dir, status)
    wall = time.perf_counter() - t_start

    metrics: dict[str, Any] = {}
    if rank0:
        extra: dict[str, Any] = {
            "num_params": n_params, "wall_time_s": round(wall, 2), "lr": cfg.lr,
            "torch": torch.__version__, "world_size": D.world_size(),
            "test_acc": result["final"]["test_acc"], "test_loss": result["final"]["test_loss"],
        }
        extra.update(tta_metrics(result["tta"], cfg.tta))
        if cfg.analysis:
            full_test = test_loader
            if D.world_size() > 1:  # rank 0 analyses the whole test split, not only its shard
                full_test = DeviceLoader(splits.x_test, splits.y_test, batch_size=test_loader.batch_size,
                                         mean=splits.mean, std=splits.std, device=device)
            extra.update(analyse(unwrap(model), splits, train_loader, full_test, cfg, device, run_dir,
                                 result["history"], spec, lr_result))
        metrics = write_run_files(run_dir, result["history"], cfg, status="done", device=device, extra=extra)
        if cfg.analysis:
            write_report(run_dir, cfg, metrics, splits.classes)
            if cfg.readme_images:
                copy_readme_images(run_dir)
        logger.info("done: test accuracy %.2f%%%s; run folder %s", metrics["test_acc"],
                    f" ({metrics['test_acc_tta']:.2f}% with TTA)" if "test_acc_tta" in metrics else "", run_dir)
    D.cleanup()
    return metrics


def _fmt3(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in v) + ")"


def _log_to_file_only(text: str) -> None:
    """Write ``text`` to the log file handlers only (the console gets a one-line mention)."""
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler):
            h.stream.write(text + "\n")
            h.flush()
    logger.info("model summary written to summary.txt (parameters, output shapes, mult-adds)")


def _set_status(run_dir: Path, status: str) -> None:
    import json

    from .engine import write_json

    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        m = {}
    m["status"] = status
    write_json(run_dir / "metrics.json", m)


# ---------------------------------------------------------------------------------------
# Analysis: pictures and numbers after training
# ---------------------------------------------------------------------------------------
def analyse(model: torch.nn.Module, splits, train_loader, test_loader, cfg: TrainConfig, device: torch.device,
            run_dir: Path, history: dict, spec, lr_result=None) -> dict[str, Any]:
    """Write images/*.png and return the analysis metrics (per-class accuracy, CAM checks)."""
    from . import viz
    from .cam import cam_pointing_game, compute_cams, default_cam_layer
    from .engine import autocast_dtype, predict

    images_dir = run_dir / "images"
    amp_dtype = autocast_dtype(device, cfg.precision)
    logits, labels = predict(model, test_loader, device=device, amp_dtype=amp_dtype)
    preds = logits.argmax(1)
    k = splits.num_classes
    cm = viz.confusion_matrix(labels.numpy(), preds.numpy(), k)
    per_class = viz.per_class_accuracy(labels.numpy(), preds.numpy(), k)
    mis = viz.find_misclassified(logits, labels, n=cfg.num_images)
    mean, std = splits.mean, splits.std

    save_figure(viz.plot_history(history), images_dir / "curves.png")
    save_figure(viz.plot_confusion_matrix(cm, splits.classes), images_dir / "confusion_matrix.png")
    save_figure(viz.plot_per_class_accuracy(per_class, splits.classes), images_dir / "per_class_accuracy.png")
    train_loader.set_epoch(1)
    xs, ys = next(iter(train_loader))
    save_figure(viz.plot_samples(xs[:32].cpu(), ys[:32].cpu(), splits.classes, mean, std),
                images_dir / "samples.png")
    if lr_result is not None:
        save_figure(viz.plot_lr_finder(lr_result.lrs, lr_result.losses, lr_result.suggestion),
                    images_dir / "lr_finder.png")

    out: dict[str, Any] = {
        "per_class_acc": {c: round(float(a), 2) for c, a in zip(splits.classes, per_class)},
        "misclassified_count": mis["count"],
    }
    layer = cfg.cam_layer or default_cam_layer(model, splits.image_size, preferred=spec.cam_layer)
    out.update(cam_method=cfg.cam_method, cam_layer=layer)
    if len(mis["indices"]):
        x_mis, y_mis = test_loader.batch_at(mis["indices"])
        save_figure(viz.plot_misclassified(x_mis.cpu(), y_mis.cpu(), mis["preds"], splits.classes, mean, std,
                                           confidences=mis["confidences"]), images_dir / "misclassified.png")
        kw = dict(method=cfg.cam_method, layer=layer, reshape_transform=spec.reshape_transform,
                  smooth=cfg.cam_smooth)
        cams_pred = compute_cams(model, x_mis, mis["preds"], **kw)
        cams_true = compute_cams(model, x_mis, y_mis.cpu(), **kw)
        save_figure(viz.plot_cam_grid(x_mis.cpu(), cams_pred, cams_true, y_mis.cpu(), mis["preds"],
                                      splits.classes, mean, std, method=cfg.cam_method, layer=layer),
                    images_dir / "gradcam.png")
    else:
        logger.info("no misclassified test images: misclassified.png and gradcam.png are not drawn")
    if splits.boxes_test is not None:
        n = min(len(splits.y_test), 1000)
        x_all, y_all = test_loader.batch_at(torch.arange(n))
        pg = cam_pointing_game(model, x_all, y_all, splits.boxes_test[:n], method=cfg.cam_method, layer=layer)
        out.update(cam_pointing_game=round(pg["score"], 4), cam_pointing_baseline=round(pg["baseline"], 4),
                   cam_pointing_n=pg["n"])
        logger.info("CAM pointing game (%s at %s, true class, %d correctly classified test images): %.3f "
                    "(a random point scores %.3f)", cfg.cam_method, layer, pg["n"], pg["score"], pg["baseline"])
    worst = int(np.nanargmin(per_class))
    logger.info("per-class accuracy: lowest %s %.2f%%, highest %s %.2f%%; %d misclassified test images",
                splits.classes[worst], per_class[worst], splits.classes[int(np.nanargmax(per_class))],
                np.nanmax(per_class), mis["count"])
    return out


def write_report(run_dir: Path, cfg: TrainConfig, metrics: dict[str, Any], classes: Sequence[str]) -> None:
    """report.md: config, final metrics, per-class accuracy table and the images."""
    lines = [f"# Run report: {cfg.model} on {cfg.dataset}", ""]
    lines += ["## Final metrics", "", "| metric | value |", "|---|---|"]
    for key in ("test_acc", "test_acc_tta", "test_loss", "best_test_acc", "best_epoch", "epochs", "train_time_s",
                "epoch_time_s", "device", "num_params", "misclassified_count", "cam_pointing_game",
                "cam_pointing_baseline"):
        if key in metrics:
            v = metrics[key]
            lines.append(f"| {key} | {v:.4g} |" if isinstance(v, float) else f"| {key} | {v} |")
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
    (run_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def copy_readme_images(run_dir: Path, dest: Path = Path("image/README")) -> None:
    """Copy the run's images to ``image/README/`` (relative to the working directory)."""
    dest.mkdir(parents=True, exist_ok=True)
    for png in sorted((run_dir / "images").glob("*.png")):
        shutil.copy2(png, dest / png.name)
    logger.info("copied images to %s", dest)


# ---------------------------------------------------------------------------------------
# stats subcommand
# ---------------------------------------------------------------------------------------
def stats_main(argv: Sequence[str]) -> int:
    """``python -m eva8_utils.main stats --dataset ... [--data-dir ...]``: mean/std and class counts."""
    from .data import dataset_stats, load_dataset

    p = _Parser(prog="eva8 stats", description="Per-channel mean/std and class counts of a dataset.",
                argument_default=argparse.SUPPRESS)
    for name in ("dataset", "data_dir", "cache_dir", "image_size", "shapes_train", "shapes_test", "seed"):
        default = getattr(TrainConfig(), name)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=type(default),
                       help=field_help(name) + f" (default: {default!r})")
    cfg = build_config(flags=vars(p.parse_args(argv)))
    splits = load_dataset(cfg)
    s = dataset_stats(splits)
    print(f"dataset: {splits.name}  image size: {s['image_size']}x{s['image_size']}  classes: {len(splits.classes)}")
    print(f"train split: {s['n_train']} images, mean {_fmt3(s['mean'])}, std {_fmt3(s['std'])}")
    print(f"test split:  {s['n_test']} images, mean {_fmt3(s['test_mean'])}, std {_fmt3(s['test_std'])}")
    width = max(len(c) for c in splits.classes)
    print(f"{'class':<{width}}  {'train':>7}  {'test':>7}")
    for c, a, b in zip(splits.classes, s["train_counts"], s["test_counts"]):
        print(f"{c:<{width}}  {a:>7}  {b:>7}")
    return 0


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 3 non-finite loss, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        if argv and argv[0] == "stats":
            return stats_main(argv[1:])
        cfg = config_from_args(argv)
        run(cfg)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except NonFiniteLossError as e:
        return e.exit_code
    except TrainingInterrupted as e:
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cli() -> None:
    """Console script ``eva8``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
