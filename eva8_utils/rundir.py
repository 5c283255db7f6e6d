"""The run folder and its one owner, :class:`RunDir`.

A run folder holds::

    config.yaml      the resolved config (resume reads it)
    log.txt          header, per-epoch lines, warnings, final metrics
    summary.txt      the model summary (torchinfo)
    history.csv      one row per epoch
    steps.csv        one row per optimizer step (step, epoch, lr, loss)
    metrics.json     status (running -> done | failed | interrupted) and the numbers
    checkpoints/     last.pt (end of every epoch and every --checkpoint-minutes inside
                     one), prev.pt (the one before), best.pt (best test accuracy)
    images/          the analysis pictures
    report.md        config, metrics, per-class table and the pictures
    tensorboard/     with --tensorboard

``RunDir`` refuses to replace a run unless asked (resume or overwrite), writes every
file atomically (temp file + rename in the same folder: no hard links, which works on
Google Drive's file system too) and is the single writer of ``metrics.json``: its
status reads ``done`` only after the analysis has finished, and ``failed`` with the
error when anything raises. The CLI and the notebook both go through it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from . import distributed as D
from .checkpoint import check_compatible, load_checkpoint, load_weights, save_checkpoint, state_bytes
from .checks import check_writable
from .config import TrainConfig, experiment_settings
from .engine import Callback, TrainState, new_history
from .errors import CheckpointError, ConfigError, WriteError, os_reason
from .runfiles import (IMAGE_NAMES, _plain, config_differences, final_metrics, history_csv,  # noqa: F401
                       history_metrics, read_history_csv, report_markdown, resume_differences, steps_csv)
from .utils import atomic_write, atomic_write_text, setup_logging
from .writefaults import WriteFaults

logger = logging.getLogger("eva8_utils")

RUN_FILES = ("config.yaml", "history.csv", "steps.csv", "metrics.json", "log.txt", "summary.txt", "report.md")
RUN_DIRS = ("checkpoints", "images", "tensorboard")
# A temporary file of an atomic write (utils.atomic_path: ".NAME.XXXXXXXX.tmp"), left by a kill.
_TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def default_run_dir(model_name: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{model_name.replace(':', '.').replace('/', '.')}"


class RunDir:
    """One run folder: what it holds, and every write to it.

    Args:
        path: the folder.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics: dict[str, Any] = {}
        self.resuming = False
        self.started = False
        self.mode = "new run"              # or: starting over, resuming, finished: showing it (open_for)
        self.restart = False               # a run stopped before its first checkpoint: start its config again
        self.wall_before = 0.0             # wall time of a resumed run before this process (seconds)
        self._process_start: float | None = None
        self._writer = None                # TensorBoard SummaryWriter (lazily)
        self.faults = WriteFaults(self.path)  # what a failed write says, and the epoch to resume from

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, status={self.status!r})"

    # ------------------------------------------------------------------ what is there
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def holds_run(self) -> bool:
        return any((self.path / n).exists() for n in ("config.yaml", "history.csv", "checkpoints", "metrics.json"))

    @property
    def status(self) -> str:
        """``empty`` (no run), ``done``, ``running`` (or killed), ``interrupted``, ``failed...``
        or ``unknown`` (files but no readable metrics.json)."""
        if not self.holds_run():
            return "empty"
        m = self.read_metrics()
        return str(m.get("status", "unknown")) if m else "unknown"

    @property
    def finished(self) -> bool:
        return self.status == "done"

    def read_metrics(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def saved_config(self) -> dict[str, Any] | None:
        """The run's config.yaml as a dict, or None."""
        p = self.path / "config.yaml"
        if not p.is_file():
            return None
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            raise ConfigError(f"{p} is not readable YAML; repair it or start the run again with --overwrite") from None
        return data if isinstance(data, dict) else None

    def has_checkpoint(self) -> bool:
        return any((self.checkpoints / n).is_file() for n in ("last.pt", "prev.pt"))

    def other_files(self) -> list[str]:
        """Names in the folder that are not a run's (hidden files aside), sorted."""
        if not self.path.is_dir():
            return []
        own = set(RUN_FILES) | set(RUN_DIRS)
        return sorted(p.name for p in self.path.iterdir() if p.name not in own and not p.name.startswith("."))

    def read_history(self) -> dict[str, list]:
        """history.csv and steps.csv back into a history dict."""
        history = read_history_csv(self.path / "history.csv")
        steps = self.path / "steps.csv"
        if steps.is_file():
            with open(steps, newline="", encoding="utf-8") as fh:
                history["steps"] = [[int(r["step"]), int(r["epoch"]), float(r["lr"]), float(r["loss"])]
                                    for r in csv.DictReader(fh)]
        return history

    # ------------------------------------------------------------------ opening
    def check(self, cfg: TrainConfig) -> None:
        """The CLI's rules: refuse to replace a run unless ``--resume`` or ``--overwrite``.

        Sets :attr:`resuming`. Raises ConfigError with the fix.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} is a file; give a folder")
        if cfg.resume:
            saved = self.saved_config()
            if saved is None and not self.has_checkpoint():
                raise ConfigError(f"--resume: {self.path} has no checkpoint to continue from; start without --resume")
            world = int(self.read_metrics().get("world_size", 1) or 1)
            diff = resume_differences(saved, cfg, world, D.world_size()) if saved is not None else []
            if diff:
                raise ConfigError(f"--resume: {self.path} was started with other settings ({'; '.join(diff[:4])}); a "
                                  f"resumed run keeps the settings in its config.yaml: drop those flags, or start a "
                                  f"new run in another --out")
            if not self.has_checkpoint() and not self.finished:
                self.restart = True
                logger.info("%s holds a run that stopped before its first checkpoint: starting its config from the "
                            "beginning", self.path)
            else:
                self.resuming = True
            if not self.finished:
                check_writable(self.path)
            return
        if self.holds_run() and not cfg.overwrite:
            raise ConfigError(f"{self.path} already holds a run; pass --resume to continue it, --overwrite to "
                              f"replace it, or choose another --out")
        others = self.other_files()
        if others and not self.holds_run() and not cfg.overwrite:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise ConfigError(f"--out {self.path} holds other files ({shown}) and no run; choose a new or empty "
                              f"folder, or pass --overwrite to write the run among them (only a run's own files "
                              f"are ever replaced)")
        check_writable(self.path)

    def open_for(self, cfg: TrainConfig, overwrite: bool = False) -> TrainConfig:
        """The notebook's rules: never replace a run silently.

        - empty folder: a new run with ``cfg``;
        - ``overwrite``: the old run's files are removed when training starts;
        - an unfinished run with the same settings: it is resumed from its last checkpoint;
        - a finished run with the same settings: nothing is trained again (:attr:`finished`);
        - a run with other settings: ConfigError naming the differences.

        Returns:
            The config to use (the saved one when the run is resumed or finished).
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"RUN_DIR {self.path} is a file; give a folder")
        others = self.other_files()
        if others and not self.holds_run() and not overwrite:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise ConfigError(f"RUN_DIR {self.path} holds other files ({shown}) and no run; choose a new or empty "
                              f"RUN_DIR, or set OVERWRITE = True to write the run among them (only a run's own "
                              f"files are ever replaced)")
        check_writable(self.path, "RUN_DIR")
        if overwrite or not self.holds_run():
            self.mode = "starting over (OVERWRITE)" if overwrite and self.holds_run() else "new run"
            return cfg.replace(overwrite=overwrite and self.holds_run(), resume=False, out=str(self.path))
        saved = self.saved_config()
        if saved is None:
            raise ConfigError(f"{self.path} holds files of a run but no config.yaml; set OVERWRITE = True to start "
                              f"again or choose another RUN_DIR")
        diff = config_differences(saved, cfg)
        if diff:
            raise ConfigError(f"{self.path} holds a run with other settings ({'; '.join(diff[:4])}); set "
                              f"OVERWRITE = True to replace it, or choose another RUN_DIR")
        if not self.finished:
            if not self.has_checkpoint():
                self.mode = "starting its config from the beginning (the run stopped before its first checkpoint)"
                return cfg.replace(overwrite=True, resume=False, out=str(self.path))  # nothing worth keeping
            self.resuming, self.mode = True, "resuming"
        else:
            self.mode = "finished: showing it"
        from .config import build_config

        keep = {k: getattr(cfg, k) for k in ("progress", "device", "data_dir", "cache_dir", "log_every")}
        return build_config(flags=keep, base={**saved, "resume": self.resuming, "overwrite": False,
                                              "out": str(self.path)})

    # ------------------------------------------------------------------ resuming
    def restore(self, exp) -> None:
        """Load the last checkpoint (else the one before) into an assembled experiment:
        model, optimizer, schedule, scaler, lookahead, EMA, divergence monitor, history,
        and the position (epoch, and batch for a checkpoint taken inside an epoch).

        Raises:
            CheckpointError: no usable checkpoint, or one for another model or schedule.
        """
        errors = []
        for path in (self.checkpoints / "last.pt", self.checkpoints / "prev.pt"):
            if not path.exists():
                continue
            try:
                ckpt = load_checkpoint(path, exp.device)
            except CheckpointError as e:
                errors.append(e)
                logger.warning("%s; trying the previous checkpoint", e)
                continue
            check_compatible(ckpt, exp.model_name, exp.splits.num_classes, path)
            load_weights(exp.model, ckpt["model"], path)
            exp.optimizer.load_state_dict(ckpt["optimizer"])
            if exp.schedule is not None and ckpt.get("schedule") is not None:
                try:
                    exp.schedule.load_state_dict(ckpt["schedule"])
                except ValueError as e:
                    raise CheckpointError(
                        f"cannot resume {path} with these settings: {e}; keep --epochs and --scheduler "
                        f"of the run (onecycle, linear and cosine fix their length at the start)") from None
            for name in ("scaler", "lookahead", "ema", "monitor"):
                obj, state = getattr(exp, name), ckpt.get(name)
                if obj is not None and state is not None:
                    obj.load_state_dict(state)
                elif obj is not None and name == "ema":
                    raise CheckpointError(f"{path} has no EMA weights; resume without --ema or start again")
            if path.name == "prev.pt":
                logger.warning("resumed from the previous checkpoint %s", path)
            exp.start_epoch, exp.partial = int(ckpt["epoch"]), ckpt.get("partial")
            self.faults.saved(exp.start_epoch, exp.partial)
            exp.history = ckpt["history"]
            exp.resumed_from = path
            self.metrics = self.read_metrics()
            # the wall time up to this checkpoint (saved with it), never less than its training time
            trained = float(sum(exp.history.get("_epoch_times", [])))
            self.wall_before = max(float(ckpt.get("wall_time_s") or 0.0), trained)
            return
        if errors:
            raise errors[0]
        raise CheckpointError(f"{self.checkpoints} holds no checkpoint to resume from; start the run without --resume")

    # ------------------------------------------------------------------ writing
    def start(self, exp) -> None:
        """Create (or clear, with overwrite) the folder and write config.yaml, the log's
        header and summary.txt; metrics.json says ``running``. Rank 0 only writes."""
        from .data import commit_cache

        cfg = exp.cfg
        self._process_start = time.perf_counter()
        if D.is_main():
            if (cfg.overwrite or self.restart) and self.path.exists():
                self.clear()
            self.remove_temporary_files()
            commit_cache(exp.splits)  # the data is accepted: now its decoded images may be cached
            self.faults.estimate(exp)
            with self.faults.guard(self.path):
                self.path.mkdir(parents=True, exist_ok=True)
            self._write_text("config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            with self.faults.guard(self.path / "log.txt"):
                setup_logging(self.path / "log.txt")
        D.barrier()
        for line in exp.header_lines():
            logger.info("%s", line)
        logger.info("run folder: %s", self.path)
        if self.resuming:
            logger.info("resuming from %s after epoch %d%s", exp.resumed_from, exp.start_epoch,
                        f", batch {exp.partial['batch']} of epoch {exp.start_epoch + 1}" if exp.partial else "")
            self.write_history(exp.history_so_far())  # history.csv says what the checkpoint holds
        elif D.is_main():
            summary = exp.summary()
            self._write_text("summary.txt", summary + "\n")
            _log_to_file_only(summary)
        self.started = True
        if not self.resuming:
            self.metrics = {}
        self.write_metrics("running", **exp.run_facts())

    def wall_time(self) -> float:
        """Seconds of wall time of the run so far, the time before a resume included."""
        now = time.perf_counter() - self._process_start if self._process_start is not None else 0.0
        return self.wall_before + now

    def remove_temporary_files(self) -> list[Path]:
        """Remove the temporary files that a kill inside an atomic write left
        (``.last.pt.XXXXXXXX.tmp``) in the run folder, checkpoints/ and images/."""
        removed = []
        for folder in (self.path, self.checkpoints, self.path / "images"):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.is_file() and _TEMP_FILE.match(p.name):
                        p.unlink(missing_ok=True)
                        removed.append(p)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted write, e.g. %s", len(removed),
                        removed[0])
        return removed

    def clear(self) -> None:
        """Remove the files a run writes (and nothing else) from the folder."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    def write_metrics(self, status: str, **values: Any) -> dict[str, Any]:
        """The one writer of metrics.json: merge ``values`` and set the status."""
        self.metrics.update(values)
        self.metrics["status"] = status
        if D.is_main() and self.path.is_dir():
            self._write_text("metrics.json", json.dumps(_plain(self.metrics), indent=2, sort_keys=True) + "\n")
        return dict(self.metrics)

    def _write_text(self, name: str, text: str) -> None:
        """RUN/name, atomically; a failure is a :class:`WriteError` that says how to continue."""
        with self.faults.guard(self.path / name):
            atomic_write_text(self.path / name, text)

    def write_history(self, history: dict[str, list]) -> None:
        if not D.is_main():
            return
        texts = (history_csv(history), steps_csv(history))
        self._write_text("history.csv", texts[0])
        self._write_text("steps.csv", texts[1])
        self.faults.csv_written(texts)
        self.metrics.update(history_metrics(history))

    def save_epoch(self, exp, epoch: int, history: dict[str, list], is_best: bool) -> None:
        """The end of an epoch: history.csv and steps.csv, checkpoints/last.pt, best.pt, then
        metrics.json. When one of the files cannot be written, the others are put back as
        they were after the previous epoch, so that history.csv and the checkpoints agree on
        the last finished epoch (--resume continues from there)."""
        if not D.is_main():
            return
        csv_before, saved_before, metrics_before = self.faults.csv_texts, self.faults.saved_at, dict(self.metrics)
        try:
            self.write_history(history)
            self.save_state(exp, epoch, is_best=is_best)
        except WriteError as e:
            self.metrics = metrics_before
            raise self.faults.roll_back(e, csv_before, saved_before) from None
        self.write_metrics("running")

    def save_state(self, exp, epoch: int, *, partial: dict | None = None, is_best: bool = False) -> None:
        """checkpoints/last.pt (the previous one kept as prev.pt) and, when ``is_best``, best.pt."""
        if not D.is_main():
            return
        for p in exp.model.parameters():
            if not torch.isfinite(p).all():  # never replace a good checkpoint by broken weights
                raise RuntimeError("refusing to save non-finite weights")
        meta = exp.checkpoint_meta()
        weights = exp.model.state_dict()
        state = {
            "model": weights, "optimizer": exp.optimizer.state_dict(),
            "schedule": exp.schedule.state_dict() if exp.schedule is not None else None,
            "epoch": int(epoch), "partial": partial, "history": exp.history_so_far(),
            "config": exp.cfg.to_dict(), "wall_time_s": round(self.wall_time(), 3), **meta,
        }
        for name in ("scaler", "lookahead", "ema", "monitor"):
            obj = getattr(exp, name)
            state[name] = obj.state_dict() if obj is not None else None
        self.faults.checkpoint_bytes = state_bytes(state)
        with self.faults.guard(self.checkpoints / "last.pt"):
            save_checkpoint(self.checkpoints / "last.pt", state, keep_previous=True)
        self.faults.saved(int(epoch), partial)
        if is_best:
            best = {"model": weights, "epoch": int(epoch), "config": exp.cfg.to_dict(),
                    "test_acc": state["history"]["test_acc"][-1], **meta}
            if exp.ema is not None:
                best["ema"] = exp.ema.state_dict()
            with self.faults.guard(self.checkpoints / "best.pt"):
                save_checkpoint(self.checkpoints / "best.pt", best)

    def callback(self, exp) -> "SaveRun":
        """The :class:`~eva8_utils.engine.Callback` that saves this run as it trains."""
        return SaveRun(self, exp)

    def finish(self, **values: Any) -> dict[str, Any]:
        """After the analysis: metrics.json says ``done``. A ``wall_time_s`` of this process
        gets the time before the resume added (a resumed run)."""
        if "wall_time_s" in values:
            values["wall_time_s"] = round(self.wall_before + float(values["wall_time_s"]), 2)
        metrics = self.write_metrics("done", **values)
        if self._writer is not None:
            self._tb_hparams(metrics)
            self._writer.close()
            self._writer = None
        return metrics

    def fail(self, status: str, error: BaseException | str | None = None) -> str | None:
        """metrics.json says ``status`` (failed..., interrupted) with the error, if the folder exists.

        Returns:
            None, or why metrics.json could not be written (the OS reason).
        """
        if not self.path.is_dir() or not D.is_main():
            return None
        values = {} if error is None else {"error": _error_line(error)}
        try:
            self.write_metrics(status, **values)
        except WriteError as e:
            return e.reason
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return None

    def save_figure(self, name: str, fig, dpi: int = 110) -> Path:
        """images/NAME.png (and the TensorBoard image, with --tensorboard); the Figure is kept."""
        path = self.path / "images" / f"{name}.png"
        if D.is_main():
            try:
                save_figure(fig, path, dpi)
            except OSError as e:
                self._not_written(path, e)
                return path
            if self.tensorboard is not None:
                self.tensorboard.add_figure(f"images/{name}", fig, close=False)
        return path

    def write_report(self, cfg: TrainConfig, classes, notes: list[str] | None = None) -> None:
        """report.md: final metrics, CAM checks, per-class accuracy, the images and the config."""
        if D.is_main():
            path = self.path / "report.md"
            try:
                atomic_write_text(path, report_markdown(self.path, cfg, self.metrics, classes, notes))
            except OSError as e:
                self._not_written(path, e)
                with contextlib.suppress(WriteError):
                    self.write_metrics(self.metrics.get("status", "done"))

    def _not_written(self, path: Path, e: OSError) -> None:
        """A picture or the report that cannot be written after training: a warning (in the
        log and metrics.json); the run goes on and ends done."""
        text = (f"{path.relative_to(self.path)} could not be written ({os_reason(e)}); training and checkpoints "
                f"are saved: redo the pictures and the report later with: eva8 analyse --out {self.path}")
        logger.warning("%s", text)
        self.metrics.setdefault("warnings", []).append(text)

    def copy_images(self, dest: str | Path = "image/README") -> None:
        """Copy the run's images (e.g. to image/README/, relative to the working directory)."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for png in sorted((self.path / "images").glob("*.png")):
            shutil.copy2(png, dest / png.name)
        logger.info("copied images to %s", dest)

    # ------------------------------------------------------------------ TensorBoard
    tensorboard_enabled = False

    @property
    def tensorboard(self):
        """A SummaryWriter into RUN/tensorboard when enabled (:meth:`enable_tensorboard`)."""
        if not self.tensorboard_enabled or not D.is_main():
            return None
        if self._writer is None:
            self._writer = make_summary_writer(self.path / "tensorboard")
        return self._writer

    def enable_tensorboard(self) -> None:
        """Check that TensorBoard is installed (one-line error if not) and turn it on."""
        make_summary_writer(None)
        self.tensorboard_enabled = True

    def _tb_hparams(self, metrics: dict[str, Any]) -> None:
        cfg = self.saved_config() or {}
        hparams = {k: v for k, v in experiment_settings(cfg).items() if isinstance(v, (int, float, str, bool))}
        final = {f"hparam/{k}": float(metrics[k]) for k in ("test_acc", "test_loss", "test_acc_tta", "best_test_acc")
                 if isinstance(metrics.get(k), (int, float))}
        self._writer.add_hparams(hparams, final, run_name=".")


class SaveRun(Callback):
    """Saves a run while it trains: a checkpoint, history.csv, steps.csv and metrics.json
    after every epoch; a checkpoint inside an epoch every ``checkpoint_minutes``; the
    TensorBoard scalars; warnings into metrics.json."""

    def __init__(self, run: RunDir, exp):
        self.run, self.exp = run, exp
        self.interval = exp.cfg.checkpoint_minutes * 60.0 if D.world_size() == 1 else 0.0
        self.last_save = time.monotonic()
        self.best = max(exp.history["test_acc"], default=-1.0) if exp.history else -1.0

    def before_epoch(self, state: TrainState) -> None:
        self.last_save = time.monotonic() if state.epoch == self.exp.start_epoch + 1 else self.last_save

    def after_step(self, state: TrainState) -> None:
        tb = self.run.tensorboard
        if tb is not None:  # the LR this step used, at its number in steps.csv
            tb.add_scalar("train/lr", state.lrs[-1], (state.epoch - 1) * state.n_batches + state.batch)
        if (self.interval and time.monotonic() - self.last_save >= self.interval
                and state.batch < self.exp.steps_per_epoch):
            self.run.save_state(self.exp, state.epoch - 1, partial=state.snapshot())
            self.last_save = time.monotonic()
            logger.debug("checkpoint inside epoch %d at batch %d", state.epoch, state.batch)

    def after_epoch(self, state: TrainState) -> None:
        row, history = state.row, state.history
        self.exp.history = history
        is_best = row["test_acc"] > self.best
        self.best = max(self.best, row["test_acc"])
        self.run.save_epoch(self.exp, state.epoch, history, is_best)
        self.last_save = time.monotonic()
        tb = self.run.tensorboard
        if tb is not None:
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "ema_test_loss", "ema_test_acc"):
                if key in row:
                    part, _, what = key.rpartition("_")
                    tb.add_scalar(f"{part}/{what}", row[key], state.epoch)
            tb.flush()

    def on_warning(self, state: TrainState, text: str) -> None:
        self.run.metrics.setdefault("warnings", []).append(text)
        self.run.write_metrics("running")


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a Figure as PNG atomically (the one place the package saves a picture)."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    return path


def make_summary_writer(log_dir: Path | None):
    """A TensorBoard SummaryWriter (None: only check that TensorBoard is installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(log_dir)) if log_dir is not None else None


def _error_line(error: BaseException | str) -> str:
    """One line for metrics.json: ``Type: first line of the message`` (the type alone when there is no message)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text


def _log_to_file_only(text: str) -> None:
    """Write ``text`` to the log file handlers only (the console gets a one-line mention)."""
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler):
            h.emit(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))
    logger.info("model summary written to summary.txt (parameters, output shapes, mult-adds)")


__all__ = ["RunDir", "SaveRun", "final_metrics", "save_figure", "history_csv", "steps_csv", "read_history_csv",
           "history_metrics", "config_differences", "resume_differences", "default_run_dir", "new_history"]
