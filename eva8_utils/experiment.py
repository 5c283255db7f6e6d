"""The assembly: a :class:`~eva8_utils.config.TrainConfig` in, everything a run needs out.

The CLI, the notebook and the benchmarks all build runs here; nothing else turns a
config into data loaders, a model, an optimizer or a schedule. The stages can be
called one by one (the notebook shows each one in its own cell) or at once::

    exp = Experiment(cfg)          # names checked, device, precision
    exp.load_data()                # splits and device loaders
    exp.build_model()              # seeded, built, data-initialised, moved
    exp.find_lr()                  # the LR range test, when asked (--lr-find / --lr auto)
    exp.build_optimizer()          # optimizer, schedule, scaler, lookahead, EMA

    exp = build(cfg)               # the same, in one call
    result = train(exp, run)       # fit, saving into a RunDir (or run=None: nothing saved)

:func:`run_experiment` is the whole CLI job: build, train, analyse, report.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from . import __version__
from . import distributed as D
from .config import TrainConfig, field_meta, field_names, one_of
from .data import DATASETS, DeviceLoader, Splits, load_dataset, make_loaders
from .checks import build_model_checked, check_model, memory_errors
from .engine import (LOOKAHEAD_START_EPOCHS, OPTIMIZERS, SCHEDULERS, Callback, DivergenceMonitor, EMAWeights,
                     GradClip, L1Penalty, Lookahead, LookaheadStep, Resume, Schedule, Step, StopWhen, WatchDivergence,
                     ScheduleSettings, choose_precision, fit, make_ema, make_optimizer, make_scaler, new_history, unwrap)
from .errors import ConfigError, DataError, NonFiniteLossError, OutOfMemory, TrainingInterrupted, WriteError
from .models import (MODELS, count_parameters, get_spec, import_modules, model_options, prepare_model)
from .runfiles import final_metrics
from .utils import device_description, get_device, model_summary, seed_everything

logger = logging.getLogger("eva8_utils")


# ---------------------------------------------------------------------------------------
# Names that live in registries
# ---------------------------------------------------------------------------------------
def _cam_methods() -> list[str]:
    from .cam import CAM_METHODS

    return sorted(CAM_METHODS)


REGISTRIES: dict[str, Callable[[], list[str]]] = {
    "models": lambda: sorted(MODELS),
    "datasets": lambda: sorted(DATASETS),
    "optimizers": lambda: list(OPTIMIZERS),
    "schedulers": lambda: list(SCHEDULERS),
    "cam_methods": _cam_methods,
}


def choices(name: str) -> list[str]:
    """The valid values of a config field: its own list or its registry's (empty if free)."""
    meta = field_meta(name)
    if "choices" in meta:
        return [c for c in meta["choices"] if c]
    if "registry" in meta:
        return REGISTRIES[meta["registry"]]()
    return []


def check_names(cfg: TrainConfig) -> None:
    """Check the names a config gives to registries (after importing ``cfg.imports``, which
    may register models). A model may also be ``package.module:callable``.

    Raises:
        ConfigError: an unknown name, listing the valid ones.
    """
    import_modules(cfg.imports)
    for name in field_names():
        registry = field_meta(name).get("registry")
        if registry == "models":
            get_spec(cfg.model)
        elif registry is not None:
            one_of(name, getattr(cfg, name), REGISTRIES[registry]())


def optimizer_from_config(model: nn.Module, cfg: TrainConfig, lr: float | None = None,
                          hints=None) -> torch.optim.Optimizer:
    """:func:`~eva8_utils.engine.make_optimizer` with the config's settings (``lr`` overrides ``cfg.lr``;
    ``hints``: the model's :class:`~eva8_utils.engine.GroupHints`)."""
    return make_optimizer(model, cfg.optimizer, float(cfg.lr) if lr is None else float(lr), cfg.momentum,
                          cfg.nesterov, cfg.weight_decay, cfg.bias_lr_scale, cfg.head_lr_scale, cfg.muon_momentum,
                          hints)


def schedule_from_config(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    """A :class:`~eva8_utils.engine.Schedule` with the config's settings."""
    settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ScheduleSettings)}
    return Schedule(optimizer, cfg.scheduler, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, **settings)


# ---------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------
class Experiment:
    """Everything one run needs, built from a config in stages (see the module docstring).

    Attributes (filled by the stages): ``cfg``, ``device``, ``precision``, ``splits``,
    ``train_loader``, ``test_loader``, ``model`` (the plain module), ``train_model`` (what
    is trained: DDP/compiled wrapper or the model), ``model_name``, ``optimizer``,
    ``schedule``, ``scaler``, ``lookahead``, ``ema``, ``monitor``, ``lr_result``, and the
    position to continue from (``start_epoch``, ``partial``, ``history``).
    """

    def __init__(self, cfg: TrainConfig, device: torch.device | str | None = None):
        cfg.validate()
        check_names(cfg)
        self.cfg = cfg
        self.device = D.init_from_env(get_device(cfg.device) if device is None else torch.device(device))
        self.precision = choose_precision(self.device, cfg.precision)
        if cfg.sync_bn and D.world_size() > 1 and self.device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPU); "
                              "for multi-process CPU runs use --norm group or --norm layer")
        self.splits: Splits | None = None
        self.train_loader: DeviceLoader | None = None
        self.test_loader: DeviceLoader | None = None
        self.model: nn.Module | None = None
        self.train_model: nn.Module | None = None
        self.model_name = cfg.model
        self.model_ref: dict[str, Any] | None = None
        self.spec = None
        self.optimizer = self.schedule = self.scaler = self.lookahead = self.ema = None
        self.monitor: DivergenceMonitor | None = None
        self.lr_result = None
        self.start_epoch, self.partial, self.history, self.resumed_from = 0, None, None, None

    # ------------------------------------------------------------------ stages
    def load_data(self, splits: Splits | None = None) -> Splits:
        """Load the dataset (or take ``splits``: your own arrays) and make the device loaders;
        refuse data that cannot train.

        Raises:
            DataError / ConfigError: fewer than 2 classes, a batch larger than the training
                split (per rank), a crop or cutout larger than the images, ...
        """
        cfg = self.cfg
        splits = load_dataset(cfg) if splits is None else splits
        size, n_train = splits.image_size, len(splits.y_train)
        present = len(set(splits.y_train.tolist()))
        if splits.num_classes < 2 or present < 2:
            raise DataError(f"{splits.name} has {present} class(es) in its training split; a classifier needs at "
                            f"least 2 (one folder per class)")
        per_rank = n_train // D.world_size()
        if cfg.batch_size > per_rank:
            where = f" per rank ({D.world_size()} ranks)" if D.world_size() > 1 else ""
            raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {per_rank} training images{where}; "
                              f"use at most {per_rank}")
        if cfg.cutout > size:
            raise ConfigError(f"--cutout {cfg.cutout} is larger than the {size}x{size} images; use at most {size}")
        if cfg.crop_padding >= size:
            raise ConfigError(f"--crop-padding {cfg.crop_padding} must be smaller than the image size {size}")
        self.splits = splits
        if cfg.train_transform or cfg.test_transform:
            if D.world_size() > 1:
                raise ConfigError("--train-transform/--test-transform run in one process; under torchrun use the "
                                  "package's own augmentation flags")
            from .pipelines import make_pipeline_loaders

            self.train_loader, self.test_loader = make_pipeline_loaders(splits, cfg, self.device)
        else:
            self.train_loader, self.test_loader = make_loaders(splits, cfg, self.device, D.rank(), D.world_size())
        return splits

    def build_model(self, model: nn.Module | None = None) -> nn.Module:
        """Seed, build the configured model (or take ``model``), initialise it from the data
        (e.g. fastnet's whitening) and move it to the device."""
        cfg, splits = self.cfg, self._need("splits", "load_data")
        seed_everything(cfg.seed)
        if model is None:
            self.spec = get_spec(cfg.model)
            options = model_options(cfg, splits.image_size)
            model = build_model_checked(self.spec.build, cfg.model, splits.num_classes, options)
            self.model_ref = {"model": cfg.model, "options": options, "imports": list(cfg.imports)}
            self.model_name = cfg.model
        else:
            self.model_name, self.model_ref = type(model).__name__, None
        prepare_model(model, self.train_loader, self.device, channels_last=cfg.channels_last, seed=cfg.seed)
        check_model(model, self.train_loader.batch_at([0, 1])[0], splits.num_classes, f"--model {self.model_name}",
                    cfg.cam_layer if cfg.analysis else None, self.cam_reshape)
        if cfg.sync_bn and D.world_size() > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        return model

    def find_lr(self):
        """Run the LR range test when ``lr_find`` or ``lr='auto'`` asks (not when resuming).

        With ``lr='auto'`` the suggestion becomes ``cfg.lr``; a sweep without a descent
        stops with a ConfigError. The model and RNG are left as they were.
        """
        cfg, model = self.cfg, self._need("model", "build_model")
        if not (cfg.lr_find or cfg.lr_is_auto) or cfg.resume:
            return None
        from .lr_finder import lr_range_test

        optimizer = optimizer_from_config(model, cfg, lr=1e-3, hints=self.param_hints())  # the sweep sets the LR
        result = lr_range_test(model, self.train_loader, optimizer, device=self.device, num_iter=cfg.lr_find_iters,
                               label_smoothing=cfg.label_smoothing, amp_dtype=self.precision.dtype)
        self.lr_result = result
        logger.info("LR finder: %s", result.describe())
        if cfg.lr_is_auto:
            if result.suggestion is None:
                raise ConfigError(f"--lr auto: the LR range test found no descent ({result.note}); give --lr "
                                  f"yourself, or look at the sweep with --lr-find")
            self.cfg = cfg.replace(lr=float(result.suggestion))
            logger.info("using the suggested LR %.4g (--lr auto)", result.suggestion)
        return result

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer, schedule, GradScaler, lookahead, EMA and the model to train
        (wrapped in DDP under torchrun, compiled with ``compile``)."""
        cfg, model = self.cfg, self._need("model", "build_model")
        if cfg.lr_is_auto:
            raise ConfigError("--lr auto needs the LR range test first: call find_lr() before build_optimizer()")
        steps = len(self.train_loader)
        self.optimizer = optimizer_from_config(model, cfg, hints=self.param_hints())
        self.schedule = schedule_from_config(self.optimizer, cfg, steps)
        self.scaler = make_scaler(self.device, self.precision)
        self.lookahead = Lookahead(model, start_step=LOOKAHEAD_START_EPOCHS * steps) if cfg.lookahead else None
        self.ema = make_ema(model, cfg.ema) if cfg.ema > 0 else None
        self.monitor = DivergenceMonitor(self.splits.num_classes)
        train_model: nn.Module = model
        if D.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:
            train_model = torch.compile(train_model)
        self.train_model = train_model
        return self.optimizer

    # ------------------------------------------------------------------ the loop's parts
    def param_hints(self):
        """The model's LR rules by parameter name, from its registry entry (None: none)."""
        spec = self.spec
        return spec.param_hints(self.model) if spec is not None and spec.param_hints is not None else None

    def step(self) -> Step:
        """How a training step is taken: the loss, precision, GradScaler and schedule."""
        cfg = self.cfg
        self._need("optimizer", "build_optimizer")
        return Step(criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                    amp_dtype=self.precision.dtype, scaler=self.scaler, schedule=self.schedule,
                    log_every=cfg.log_every)

    def callbacks(self, stop: Callable[[], bool] | None = None) -> list[Callback]:
        """The optional work the config asks for, in the order it must run (the model's
        own first, e.g. fastnet's frozen whitening bias; see :mod:`eva8_utils.engine.callbacks`)."""
        cfg = self.cfg
        own = self.spec.callbacks(self.model) if self.spec is not None and self.spec.callbacks else []
        return [L1Penalty(cfg.l1) if cfg.l1 > 0 else None, *own,
                GradClip(cfg.grad_clip, cfg.grad_clip_mode) if cfg.grad_clip > 0 else None,
                LookaheadStep(self.lookahead) if self.lookahead is not None else None,
                EMAWeights(self.ema) if self.ema is not None else None,
                WatchDivergence(self.monitor), StopWhen(stop) if stop is not None else None]

    # ------------------------------------------------------------------ facts
    def _need(self, attr: str, stage: str):
        value = getattr(self, attr)
        if value is None:
            raise RuntimeError(f"call {stage}() first")
        return value

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def cam_layer(self) -> str:
        """The CAM layer: ``cam_layer`` from the config, else the model's default (>= 7x7)."""
        from .cam import default_cam_layer

        preferred = self.spec.cam_layer if self.spec is not None else None
        return self.cfg.cam_layer or default_cam_layer(self.model, self.splits.image_size, preferred=preferred)

    @property
    def cam_reshape(self):
        if self.spec is not None and self.spec.reshape_transform is not None:
            return self.spec.reshape_transform
        return getattr(self.model, "cam_reshape", None)

    def header_lines(self) -> list[str]:
        """The log's header: versions, device and precision, data, model and optimisation."""
        cfg, s = self.cfg, self.splits
        ranks = f" x {D.world_size()} ranks" if D.world_size() > 1 else ""
        lines = [f"eva8_utils {__version__} | torch {torch.__version__} | python {platform.python_version()} | "
                 f"device: {device_description(self.device)}{ranks}",
                 f"precision: {self.precision.describe()}",
                 f"data: {s.name}, {len(s.y_train)} train / {len(s.y_test)} test images, {s.image_size}x"
                 f"{s.image_size}, {s.num_classes} classes; mean {_fmt3(s.mean)} std {_fmt3(s.std)}",
                 f"model: {self.model_name}, {count_parameters(self.model):,} parameters; {cfg.optimizer}, batch "
                 f"{cfg.batch_size}{f' x {D.world_size()}' if ranks else ''}, {self.steps_per_epoch} steps/epoch, "
                 f"{cfg.scheduler} schedule, lr {float(cfg.lr):.4g}, {cfg.epochs} epochs"]
        lines += [f"{split}: {loader.description}" for split, loader in (("train", self.train_loader),
                                                                            ("test", self.test_loader))]
        extras = [name for name, on in (("lookahead", cfg.lookahead), (f"EMA {cfg.ema:g}", cfg.ema > 0),
                                        (f"MixUp {cfg.mixup:g}", cfg.mixup > 0), (f"CutMix {cfg.cutmix:g}", cfg.cutmix > 0))
                  if on]
        if extras:
            lines.append("also: " + ", ".join(extras))
        return lines

    def summary(self) -> str:
        return model_summary(unwrap(self.model), self.splits.image_size)

    def run_facts(self) -> dict[str, Any]:
        """What metrics.json says about the run before any epoch."""
        return {"model": self.model_name, "dataset": self.cfg.dataset, "epochs_planned": self.cfg.epochs,
                "device": device_description(self.device), "precision": self.precision.name,
                "num_params": count_parameters(self.model), "world_size": D.world_size(), "torch": torch.__version__,
                "lr": float(self.cfg.lr), "seed": self.cfg.seed}

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint needs to be used on its own: how to rebuild the model, and the
        inputs it expects (classes, image size, normalisation)."""
        s = self.splits
        return {"model_name": self.model_name, "model_ref": self.model_ref, "num_classes": s.num_classes,
                "image_size": s.image_size, "classes": list(s.classes), "mean": list(s.mean), "std": list(s.std)}

    def history_so_far(self) -> dict[str, list]:
        if self.history is None:
            self.history = new_history()
        return self.history

    def full_test_loader(self) -> DeviceLoader:
        """The whole test split (under torchrun the test loader holds this rank's shard only)."""
        if D.world_size() == 1:
            return self.test_loader
        s = self.splits
        return DeviceLoader(s.x_test, s.y_test, batch_size=self.test_loader.batch_size, mean=s.mean, std=s.std,
                            device=self.device, channels_last=self.test_loader.channels_last)


def build(cfg: TrainConfig, *, device: torch.device | str | None = None, model: nn.Module | None = None) -> Experiment:
    """Every stage of :class:`Experiment` in order (``model``: use this module instead of ``cfg.model``)."""
    exp = Experiment(cfg, device)
    exp.load_data()
    exp.build_model(model)
    exp.find_lr()
    exp.build_optimizer()
    return exp


def train(exp: Experiment, run=None, stop: Callable[[], bool] | None = None,
          callbacks: list[Callback] | tuple = ()) -> dict[str, Any]:
    """Train an assembled experiment, saving into ``run`` (a :class:`~eva8_utils.rundir.RunDir`) if given;
    ``callbacks`` (:class:`~eva8_utils.engine.Callback`) are called too (after the run's).

    A run being resumed is restored from its checkpoint first (at the exact batch when the
    checkpoint was taken inside an epoch). A finished run is not trained again: its saved
    history and last weights are loaded and returned.

    Returns:
        :func:`~eva8_utils.engine.fit`'s result (with ``finished=True`` for a finished run).
    """
    cfg = exp.cfg
    exp._need("optimizer", "build_optimizer")
    if run is not None and not cfg.overwrite and run.finished and cfg.epochs <= run.read_metrics().get("epochs", 0):
        return load_finished(exp, run)
    if run is not None:
        if run.resuming and exp.resumed_from is None:
            run.restore(exp)
        if cfg.tensorboard:
            run.enable_tensorboard()
        if not run.started:
            run.start(exp)
    elif D.is_main():
        for line in exp.header_lines():
            logger.info("%s", line)
    saving = [run.callback(exp)] if run is not None else []
    result = fit(exp.train_model, exp.train_loader, exp.test_loader, exp.optimizer, epochs=cfg.epochs,
                 device=exp.device, step=exp.step(), callbacks=[*exp.callbacks(stop), *saving, *callbacks],
                 seed=cfg.seed, tta=cfg.tta, progress=cfg.progress,
                 resume=Resume(exp.start_epoch, exp.history_so_far(), exp.partial))
    exp.start_epoch, exp.partial, exp.history = cfg.epochs, None, result["history"]
    if run is not None:
        run.write_metrics("running", **final_metrics(result, cfg.tta))
    return result


def load_finished(exp: Experiment, run) -> dict[str, Any]:
    """A finished run: its history and last weights, no training."""
    from .checkpoint import load_checkpoint, load_weights

    m = run.read_metrics()
    logger.info("%s holds a finished run (%d epochs, test accuracy %.2f%%): showing the saved results; nothing is "
                "trained again", run.path, m.get("epochs", 0), m.get("test_acc", float("nan")))
    path = run.checkpoints / "last.pt"
    if path.is_file():
        ckpt = load_checkpoint(path, exp.device)
        load_weights(exp.model, ckpt["model"], path)
        if exp.ema is not None and ckpt.get("ema") is not None:
            exp.ema.load_state_dict(ckpt["ema"])
        if "_epoch_times" in ckpt.get("history", {}):
            exp.history = ckpt["history"]
    if exp.history is None or not exp.history.get("epoch"):
        exp.history = run.read_history()
    exp.start_epoch = len(exp.history["epoch"])

    def ev(prefix: str = "") -> dict[str, Any] | None:
        if f"{prefix}test_acc" not in m:
            return None
        total = len(exp.splits.y_test)
        return {"test_acc": m[f"{prefix}test_acc"], "test_loss": m.get(f"{prefix}test_loss", float("nan")),
                "correct": int(round(m[f"{prefix}test_acc"] * total / 100)), "total": total}

    tta = ({"test_acc": m["test_acc_tta"], "test_loss": m.get("test_loss_tta", float("nan"))}
           if "test_acc_tta" in m else None)
    return {"history": exp.history, "final": ev(), "tta": tta, "ema_final": ev("ema_"), "ema_tta": None,
            "epoch_times": exp.history.get("_epoch_times", []), "train_time_s": m.get("train_time_s", 0.0),
            "warnings": m.get("warnings", []), "finished": True}


def run_experiment(cfg: TrainConfig, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The whole job the CLI runs: assemble, train into a run folder, analyse, report.

    Everything that can be refused (config, names, data, model, checkpoint) is checked
    before the run folder is created or changed. ``--resume`` on a finished run says so
    and changes nothing.

    Returns:
        The final metrics (metrics.json).

    Raises:
        UserError: bad input (nothing written).
        NonFiniteLossError, TrainingInterrupted: training stopped; the last checkpoint
            is kept and metrics.json says why.
    """
    from .rundir import RunDir, default_run_dir

    exp = Experiment(cfg)
    run = RunDir(cfg.out or D.broadcast_object(str(default_run_dir(cfg.model))))
    run.check(cfg)
    if cfg.resume and run.finished and cfg.epochs <= run.read_metrics().get("epochs", 0):
        m = run.read_metrics()
        logger.info("%s is a finished run (%d epochs, test accuracy %.2f%%); nothing to resume, nothing changed",
                    run.path, m.get("epochs", 0), m.get("test_acc", float("nan")))
        D.cleanup()
        return m
    if not D.is_main():
        logging.getLogger("eva8_utils").setLevel(logging.WARNING)
    if cfg.tensorboard:
        run.enable_tensorboard()
    exp.load_data()
    exp.build_model()
    with memory_errors(exp, "the LR range test (--lr-find / --lr auto)"):
        exp.find_lr()
    exp.build_optimizer()
    if run.resuming:
        run.restore(exp)
    t_start = time.perf_counter()
    try:
        with memory_errors(exp, "training", run):
            result = train(exp, run, stop)
        metrics: dict[str, Any] = {}
        if D.is_main():
            metrics = analyse(exp, run, result, wall_s=time.perf_counter() - t_start)
    except TrainingInterrupted as e:
        run.fail("interrupted", e)
        logger.warning("Interrupted in epoch %d at batch %d. Completed epochs saved: %d (%s). Resume with:\n"
                       "  python -m eva8_utils.main --out %s --resume", e.epoch, e.batch, e.completed_epochs,
                       run.checkpoints / "last.pt", run.path)
        raise
    except NonFiniteLossError as e:
        run.fail("failed: non-finite loss", e)
        logger.error("%s", e)
        raise
    except (WriteError, OutOfMemory) as e:
        not_written = run.fail("failed", e)
        if not_written is None:
            raise
        raise type(e)(f"{e}; metrics.json could not be updated either ({not_written}): it still says "
                      f"running") from None
    except BaseException as e:
        if run.fail("failed", e) is not None:
            logger.warning("metrics.json could not be marked failed")
        raise
    D.cleanup()
    return metrics


def analyse(exp: Experiment, run, result: dict[str, Any], wall_s: float | None = None) -> dict[str, Any]:
    """After training: the analysis (when ``cfg.analysis``), report.md and metrics.json ``done``."""
    from .analysis import Analysis
    from .flops import training_flops

    cfg = exp.cfg
    an = Analysis(exp, run, result)
    if cfg.analysis:
        an.run_all()
    extra = {"wall_time_s": round(wall_s, 2)} if wall_s is not None else {}
    if D.world_size() == 1:  # under torchrun the copy's backward could reach DDP's hooks: not counted
        extra.update(training_flops(exp.model, exp.splits.image_size, exp.device,
                                    exp.train_loader.num_samples * len(result.get("epoch_times") or []),
                                    float(result.get("train_time_s") or 0.0)))
    metrics = an.finish(**extra)
    if cfg.analysis and cfg.readme_images:
        run.copy_images()
    logger.info("done: test accuracy %.2f%%%s; run folder %s", metrics["test_acc"],
                f" ({metrics['test_acc_tta']:.2f}% with TTA)" if "test_acc_tta" in metrics else "", run.path)
    return metrics


def analyse_run(out) -> dict[str, Any]:
    """Draw the pictures, the CAM checks and report.md of a finished run again, from its
    checkpoints/last.pt (``eva8 analyse --out RUN``): e.g. after a picture could not be
    written. Nothing is trained; metrics.json keeps its numbers and says ``done``.

    Raises:
        ConfigError: the folder holds no finished run.
    """
    from .analysis import Analysis
    from .config import build_config
    from .rundir import RunDir
    from .utils import setup_logging

    run = RunDir(out)
    saved = run.saved_config()
    if saved is None or not (run.checkpoints / "last.pt").is_file():
        raise ConfigError(f"{run.path} holds no trained run (config.yaml and checkpoints/last.pt); give the --out "
                          f"of a run")
    if not run.finished:
        raise ConfigError(f"{run.path} is a run that has not finished (status {run.status}); --resume finishes it "
                          f"and draws the pictures")
    cfg = build_config(base={**saved, "resume": False, "overwrite": False, "out": str(run.path), "progress": False,
                             "analysis": True, "readme_images": False})
    exp = Experiment(cfg)
    exp.load_data()
    exp.build_model()
    exp.build_optimizer()
    setup_logging(run.path / "log.txt")
    result = dict(load_finished(exp, run), finished=False)
    run.metrics = run.read_metrics()
    an = Analysis(exp, run, result)
    an.run_all()
    metrics = an.finish()
    logger.info("analysis redone: pictures in %s, report %s", run.path / "images", run.path / "report.md")
    return metrics


def _fmt3(v) -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in v) + ")"


__all__ = ["Experiment", "build", "train", "run_experiment", "analyse", "analyse_run", "check_names", "choices",
           "optimizer_from_config", "schedule_from_config", "REGISTRIES"]
