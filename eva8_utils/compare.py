"""Experiments, not only runs: compare run folders, and sweep settings.

    eva8 compare RUN_DIR... [--labels A B ...] --out DIR
    eva8 sweep --out DIR --norm batch group layer [other flags; several values = more runs]

``compare`` writes ``DIR/compare.png`` (test and train loss and accuracy of every run
against epochs), ``DIR/compare.md`` and ``DIR/compare.csv`` (final, best and TTA
accuracy, epochs, time per epoch, parameters, and the settings that differ between
the runs) and ``DIR/misclassified_<label>.png`` per run. ``sweep`` trains the product of
the values given, one run folder each under ``--out``, then writes the comparison
there; started again, it skips finished runs and resumes an unfinished one.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import re
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from . import viz
from .config import RUN_CONTROL, TrainConfig, build_config, experiment_settings
from .errors import ConfigError
from .rundir import RunDir, save_figure
from .utils import atomic_write_text

logger = logging.getLogger("eva8_utils")

TABLE_COLUMNS = ("run", "status", "epochs", "test_acc", "best_test_acc", "test_acc_tta", "epoch_time_s",
                 "num_params")


def load_run(path: str | Path) -> dict[str, Any]:
    """A run folder's history, metrics and config.

    Raises:
        ConfigError: the folder is missing or holds no readable run (one line naming it).
    """
    run = RunDir(path)
    if not run.path.is_dir():
        raise ConfigError(f"{run.path} is not a folder; give run folders (each with history.csv)")
    if not (run.path / "history.csv").is_file():
        raise ConfigError(f"{run.path} holds no history.csv; is it a run folder (one that trained an epoch)?")
    history = run.read_history()
    metrics = run.read_metrics()
    if not metrics and (run.path / "metrics.json").exists():
        raise ConfigError(f"{run.path}/metrics.json is not readable JSON; repair or remove that run")
    return {"path": run.path, "history": history, "metrics": metrics, "config": run.saved_config() or {},
            "run": run}


def differing_settings(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The settings whose values differ between the runs (run-control settings left out)."""
    keys: list[str] = []
    settings = [experiment_settings(c) for c in configs]
    for k in settings[0] if settings else []:
        if len({repr(s.get(k)) for s in settings}) > 1:
            keys.append(k)
    return keys


def _label_of(path: Path, used: set[str]) -> str:
    label = path.name or str(path)
    while label in used:
        label += "'"
    used.add(label)
    return label


def compare_runs(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None,
                 out: str | Path | None = None, *, model: str | Sequence[str] | None = None,
                 imports: Sequence[str] = ()) -> dict[str, Any]:
    """Compare run folders (finished or still running, of any lengths).

    Args:
        run_dirs: the run folders.
        labels: one name per run (default: the folder names).
        out: where to write compare.png, compare.md, compare.csv and the grids (None: nothing written).
        model, imports: code outside eva8_utils that the runs' checkpoints may use, named to
            trust it (one model or several), as in :func:`~eva8_utils.checkpoint.load_model`;
            needed only to draw a grid a run folder lacks.

    Returns:
        dict with ``figure`` (the curves), ``rows`` (one dict per run), ``table`` (markdown),
        ``misclassified`` (label -> Figure or None) and ``differing`` (setting names).
    """
    if not run_dirs:
        raise ConfigError("give at least one run folder to compare")
    if labels is not None and len(labels) != len(run_dirs):
        raise ConfigError(f"{len(labels)} labels for {len(run_dirs)} runs; give one label per run")
    runs = [load_run(p) for p in run_dirs]
    used: set[str] = set()
    labels = list(labels) if labels else [_label_of(r["path"], used) for r in runs]
    differing = differing_settings([r["config"] for r in runs])
    rows = []
    for label, r in zip(labels, runs):
        m, h, cfg = r["metrics"], r["history"], r["config"]
        status = m.get("status", "unknown")
        planned = m.get("epochs_planned", cfg.get("epochs"))
        row = {"run": label, "status": status if status == "done" else f"{status} ({len(h['epoch'])}/{planned} epochs)",
               "epochs": len(h["epoch"]), "test_acc": h["test_acc"][-1] if h["test_acc"] else None,
               "best_test_acc": max(h["test_acc"]) if h["test_acc"] else None, "test_acc_tta": m.get("test_acc_tta"),
               "epoch_time_s": m.get("epoch_time_s"), "num_params": m.get("num_params"), "path": str(r["path"])}
        row.update({k: cfg.get(k) for k in differing})
        rows.append(row)
    figure = viz.plot_compare([r["history"] for r in runs], labels)
    models = [model] if isinstance(model, str) else list(model or [])
    grids = {label: misclassified_figure(r, models, imports) for label, r in zip(labels, runs)}
    table = compare_markdown(rows, differing, labels, grids)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_figure(figure, out / "compare.png")
        for label, fig in grids.items():
            if fig is not None:
                save_figure(fig, out / f"misclassified_{_safe(label)}.png")
        atomic_write_text(out / "compare.md", table)
        atomic_write_text(out / "compare.csv", compare_csv(rows, differing))
        logger.info("comparison of %d runs written to %s", len(runs), out)
    return {"figure": figure, "rows": rows, "table": table, "misclassified": grids, "differing": differing}


def misclassified_figure(r: dict[str, Any], models: Sequence[str] = (), imports: Sequence[str] = ()
                         ) -> Figure | None:
    """The run's misclassified grid: its saved picture, else made from its last checkpoint
    (whose code outside eva8_utils runs only if ``models``/``imports`` name it)."""
    saved = r["path"] / "images" / "misclassified.png"
    if saved.is_file():
        return viz.image_figure(saved)
    ckpt = r["path"] / "checkpoints" / ("best.pt" if (r["path"] / "checkpoints" / "best.pt").is_file() else "last.pt")
    if not ckpt.is_file() or not r["config"]:
        return None
    import torch

    from .checkpoint import load_model
    from .data import DeviceLoader, load_dataset
    from .engine import predict

    named = r["config"].get("model") if r["config"].get("model") in models else None
    try:
        model, meta = load_model(ckpt, named, imports=imports)
    except Exception as e:  # code not named, a model passed in directly, or a module that is gone
        logger.warning("no misclassified grid for %s: %s", r["path"], e)
        return None
    cfg = build_config(base=r["config"])
    splits = load_dataset(cfg)
    loader = DeviceLoader(splits.x_test, splits.y_test, batch_size=256, mean=meta["mean"], std=meta["std"])
    logits, labels = predict(model, loader, device=torch.device("cpu"))
    mis = viz.find_misclassified(logits, labels, n=cfg.num_images)
    if not len(mis["indices"]):
        return None
    x, y = loader.batch_at(mis["indices"])
    return viz.plot_misclassified(x, y, mis["preds"], meta["classes"], meta["mean"], meta["std"],
                                  confidences=mis["confidences"])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def compare_markdown(rows: list[dict[str, Any]], differing: list[str], labels: Sequence[str],
                     grids: dict[str, Any]) -> str:
    cols = list(TABLE_COLUMNS) + differing
    lines = ["# Comparison", "", "![curves](compare.png)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    lines += ["", "Accuracies in %, on the test split; test_acc is the last epoch's. Settings that differ: "
              + (", ".join(f"`{d}`" for d in differing) or "none") + ".", ""]
    for label in labels:
        if grids.get(label) is not None:
            lines += [f"## Misclassified: {label}", "", f"![{label}](misclassified_{_safe(label)}.png)", ""]
    return "\n".join(lines) + "\n"


def compare_csv(rows: list[dict[str, Any]], differing: list[str]) -> str:
    cols = list(TABLE_COLUMNS) + differing + ["path"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in rows:
        w.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    return buf.getvalue()


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label)


# ---------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------
def sweep_runs(grid: dict[str, Sequence[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, settings) of every combination of the grid's values, in order."""
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        name = "_".join(f"{k}-{v}" for k, v in zip(keys, values)) or "run"
        out.append((_safe(name), dict(zip(keys, values))))
    return out


def run_sweep(base: TrainConfig, grid: dict[str, Sequence[Any]], out: str | Path, stop=None) -> dict[str, Any]:
    """Train every combination of ``grid`` on top of ``base``, one folder each under ``out``,
    then compare them there. Finished runs are skipped; an unfinished one is resumed.

    Returns:
        :func:`compare_runs`' result, plus ``runs`` (the folders).
    """
    from .experiment import run_experiment

    out = Path(out)
    bad = [k for k in grid if k in RUN_CONTROL or k not in base.to_dict() or k in ("recipe", "imports")]
    if bad:
        raise ConfigError(f"cannot sweep {', '.join(bad)}; sweep settings that change what a run computes "
                          f"(a recipe is a set of settings: run one sweep per recipe)")
    plan = sweep_runs(grid)
    configs = [(name, base.replace(**settings, out=str(out / name), resume=False, overwrite=False))
               for name, settings in plan]  # every combination is checked before anything trains
    dirs = []
    for i, (name, cfg) in enumerate(configs, 1):
        run = RunDir(out / name)
        cfg = run.open_for(cfg)
        dirs.append(run.path)
        if run.finished:
            logger.info("sweep %d/%d: %s is finished; skipped", i, len(configs), run.path)
            continue
        logger.info("sweep %d/%d: %s%s", i, len(configs), run.path, " (resuming)" if run.resuming else "")
        run_experiment(cfg, stop=stop)
    result = compare_runs(dirs, [name for name, _ in configs], out, model=base.model, imports=base.imports)
    result["runs"] = dirs
    return result


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
def compare_cli(argv: Sequence[str]) -> int:
    from .cli import Parser, command

    p = Parser(prog=command("compare"), description="Compare run folders: curves of all runs together, a table "
               "(markdown and CSV) with the settings that differ, one misclassified grid per run.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--labels", nargs="+", help="one name per run (default: the folder names)")
    p.add_argument("--out", required=True, help="folder for compare.png, compare.md, compare.csv and the grids")
    p.add_argument("--model", dest="models", action="append", default=[], metavar="MODULE:CALLABLE",
                   help="a run's model that is code outside eva8_utils: naming it trusts it to run (needed only to "
                        "draw a grid a run folder lacks); repeat for several")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module a run's model needs imported; naming it trusts it to run; repeat for several")
    a = p.parse_args(argv)
    result = compare_runs(a.runs, a.labels, a.out, model=a.models, imports=a.imports)
    print("\n".join(line for line in result["table"].splitlines() if line.startswith("|")))
    print(f"wrote {Path(a.out) / 'compare.md'}")
    return 0


def sweep_cli(argv: Sequence[str]) -> int:
    from .config import load_yaml
    from .cli import Parser, StopRequest, add_config_flags, command

    import argparse

    p = Parser(prog=command("sweep"), argument_default=argparse.SUPPRESS,
               description="Train every combination of the values given to the flags (a flag given several "
                           "values is swept; booleans take one), one run folder each under --out, then compare "
                           "them there. Started again, it skips finished runs and resumes an unfinished one.",
               epilog="example: eva8 sweep --out runs/norms --norm batch group layer --dataset shapes "
                      "--model fastnet --epochs 3", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of base settings")
    add_config_flags(p, multi=True)
    ns = vars(p.parse_args(argv))
    out = ns.pop("out", None)
    if not out or len(out) != 1:
        raise ConfigError(f"{p.prog} needs one --out DIR (the sweep folder)")
    for k in ("resume", "overwrite"):
        if ns.pop(k, False):
            raise ConfigError(f"{p.prog} does not take --{k}; started again, a sweep resumes by itself")
    yaml_values = load_yaml(ns.pop("config")) if "config" in ns else {}
    flags, grid = {}, {}
    for k, v in ns.items():
        if isinstance(v, list) and k != "imports":
            if len(v) > 1:
                grid[k] = v
            else:
                flags[k] = v[0]
        else:
            flags[k] = v
    if not grid:
        raise ConfigError(f"{p.prog}: give at least one flag several values, e.g. --norm batch group layer")
    base = build_config(yaml_values, flags)
    with StopRequest() as stop:
        result = run_sweep(base, grid, out[0], stop=stop)
    print("\n".join(line for line in result["table"].splitlines() if line.startswith("|")))
    print(f"wrote {Path(out[0]) / 'compare.md'}")
    return 0
