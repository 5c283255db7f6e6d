"""Every bad input the package promises to handle, in one table.

Each row runs the CLI (in this process, through ``main``) in an empty working folder and
asserts: exit code 2, exactly one line on stderr (``error: ...``) holding the expected
text, no traceback, and no file created or changed anywhere under that folder (no run
folder, no cache file, nothing half-written). The caches of folder datasets and the user
cache (XDG_CACHE_HOME) point into the folder, so a cache written anyway shows up.

Bad inputs that need a trained run or a user's module are tested where those live
(test_cli.py: ``--lr auto`` without a descent, predict on a corrupt image, extending a
one-cycle run; test_faults.py: truncated checkpoints, resuming with another model);
docs/errors.md lists them all.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import run_in_process

SHAPES = ["--dataset", "shapes", "--shapes-train", "64", "--shapes-test", "16", "--model", "fastnet",
          "--batch-size", "32", "--no-progress"]


# ---------------------------------------------------------------------------------------
# What the rows set up (in the working folder, before the snapshot)
# ---------------------------------------------------------------------------------------
def _img(path: Path, size=(8, 8), colour=(1, 2, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _folder(root: Path, *, test=True, empty_class=False, mixed=False, corrupt=False, classes=("a", "b"),
            size=(8, 8)) -> Path:
    for split in ("train", "test") if test else ("train",):
        for c in classes:
            for i in range(2):
                _img(root / split / c / f"{i}.png", size, (40 * i, 80, 120))
    if empty_class:
        (root / "train" / "c").mkdir()
    if mixed:
        _img(root / "train" / "a" / "z.png", (10, 10))
    if corrupt:
        (root / "train" / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def _folder_args(root: Path, *extra: str) -> list[str]:
    return ["--dataset", "folder", "--data-dir", str(root), "--cache-dir", "cache", "--model", "fastnet",
            "--cutout", "4", "--crop-padding", "1", "--batch-size", "2", "--out", "run1", *extra]


def _run_folder(path: Path, status: str = "running", checkpoint: bytes | dict | None = b"x", **settings) -> Path:
    """A run folder as a run leaves it: config.yaml, metrics.json and (a stand-in for) last.pt."""
    from eva8_utils.checkpoint import save_checkpoint
    from eva8_utils.config import build_config

    cfg = build_config(flags=dict(settings, out=str(path)))
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (path / "metrics.json").write_text(json.dumps({"status": status, "epochs": 0}))
    if isinstance(checkpoint, dict):
        save_checkpoint(path / "checkpoints" / "last.pt", checkpoint)
    elif checkpoint is not None:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "last.pt").write_bytes(checkpoint)
    return path


def _fastnet_checkpoint(path: Path, model_ref: dict | None = None) -> Path:
    """best.pt of an (untrained) fastnet, as a run writes it."""
    from eva8_utils.checkpoint import save_checkpoint
    from eva8_utils.data import SHAPE_CLASSES
    from eva8_utils.models import create_model

    options = {"norm": "batch", "groups": 8, "dropout": 0.0, "width": 1.0, "whiten_bias_epochs": 0,
               "whiten_bias_lr": "schedule"}
    model = create_model("fastnet", 10, **options)
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "fastnet", "num_classes": 10,
                           "model_ref": model_ref or {"model": "fastnet", "options": options, "imports": []},
                           "image_size": 32, "classes": list(SHAPE_CLASSES), "mean": [0.5] * 3, "std": [0.25] * 3})
    return path


def _predict(tmp: Path, *extra: str, model_ref: dict | None = None) -> list[str]:
    _img(tmp / "imgs" / "one.png", (32, 32))
    ckpt = _fastnet_checkpoint(tmp / "best.pt", model_ref)
    return ["predict", "--checkpoint", str(ckpt), str(tmp / "imgs"), "--out", "pred", *extra]


def _write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _yaml(text: str) -> Callable[[Path], list[str]]:
    return lambda t: _write(t / "c.yaml", text) or ["--config", "c.yaml"]


def _read_only(monkeypatch) -> None:
    """Every file created under the working folder fails as on a read-only file system."""
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


@dataclass
class Case:
    id: str
    args: list[str] | Callable[[Path], list[str]]
    message: str
    patch: Callable | None = field(default=None)


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------
CASES = [
    # --- flags and values --------------------------------------------------------------
    Case("unknown model", ["--model", "resnet19"],
         "--model 'resnet19' is not valid; choose one of: custom_resnet, fastnet, resnet18"),
    Case("unregistered model name", SHAPES + ["--model", "mynet"], "or --import the module that registers it"),
    Case("unknown optimizer", ["--optimizer", "rmsprop"],
         "--optimizer 'rmsprop' is not valid; choose one of: adam, adamw, muon, sgd"),
    Case("unknown scheduler", ["--scheduler", "triangle"],
         "choose one of: cosine, exponential, linear, none, onecycle, plateau, step"),
    Case("unknown dataset", ["--dataset", "imagenet"], "choose one of: cifar10, folder, shapes"),
    Case("unknown cam method", ["--cam-method", "gradcam3"],
         "choose one of: eigencam, gradcam, gradcam++, layercam, scorecam, xgradcam"),
    Case("unknown cam smoothing", ["--cam-smooth", "blur"], "choose one of: aug, eigen, none"),
    Case("unknown norm", ["--norm", "instance"], "choose one of: batch, group, layer"),
    Case("unknown recipe", ["--recipe", "turbo"], "--recipe 'turbo' is not valid; choose one of: fast, fast_sgd, resnet18"),
    Case("fast recipe too short", ["--recipe", "fast", "--epochs", "5"],
         "--low-res-epochs must be >= 0 and < --epochs (5), got 6: the last epochs see full-size images; give "
         "--low-res-epochs too (e.g. 3) or more --epochs"),
    Case("unknown flip", ["--flip", "sideways"], "--flip 'sideways' is not valid; choose one of: alternate, none, random"),
    Case("unknown whiten-bias-lr", ["--whiten-bias-lr", "cosine"],
         "--whiten-bias-lr 'cosine' is not valid; choose one of: linear, schedule"),
    Case("linear whiten bias without epochs", ["--whiten-bias-lr", "linear"],
         "--whiten-bias-lr linear needs --whiten-bias-epochs N (N >= 1)"),
    Case("ema out of range", ["--ema", "1.5"], "--ema must be 0 (off) or a decay in (0, 1)"),
    Case("negative mixup", ["--mixup", "-1"], "--mixup must be >= 0"),
    Case("mix-p out of range", ["--mix-p", "2"], "--mix-p must be a probability in [0, 1]"),
    Case("negative checkpoint minutes", ["--checkpoint-minutes", "-1"], "--checkpoint-minutes must be >= 0"),
    Case("module that cannot be imported", ["--import", "no_such_module_xyz"],
         "--import no_such_module_xyz: cannot import it (ModuleNotFoundError"),
    Case("model module that cannot be imported", ["--model", "no_such_module_xyz:Net"],
         "cannot import it (ModuleNotFoundError: No module named 'no_such_module_xyz')"),
    Case("zero epochs", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    Case("zero batch size", ["--batch-size", "0"], "--batch-size must be >= 1"),
    Case("zero lr", ["--lr", "0"], "--lr must be > 0"),
    Case("lr not a number", ["--lr", "fast"], "give a number or 'auto'"),
    Case("epochs not a number", ["--epochs", "ten"], "invalid int value: 'ten'"),
    Case("momentum out of range", ["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    Case("label smoothing 1", ["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    Case("cutout-p out of range", ["--cutout-p", "2"], "--cutout-p must be a probability in [0, 1]"),
    Case("unknown flag", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    Case("seed 2**64", SHAPES + ["--seed", str(2**64)], "--seed must be in [0, 4294967295] (2**32 - 1), got "),
    Case("negative seed", SHAPES + ["--seed", "-1"], "--seed must be in [0, 4294967295]"),
    Case("cuda without a GPU" if not torch.cuda.is_available() else "cuda (skipped: a GPU is present)",
         SHAPES + ["--device", "cuda" if not torch.cuda.is_available() else "nope"],
         "no CUDA GPU is available" if not torch.cuda.is_available() else "--device 'nope' is not valid"),
    # --- sizes that do not fit the data or the machine ---------------------------------
    Case("batch larger than the data", SHAPES + ["--batch-size", "100000"],
         "--batch-size 100000 is larger than the 64 training images; use at most 64"),
    Case("cutout larger than the images", SHAPES + ["--cutout", "40"], "--cutout 40 is larger than the 32x32 images"),
    Case("shapes beyond the memory", SHAPES + ["--shapes-train", "1000000000"],
         "--shapes-train 1000000000 --shapes-test 16 needs about "),
    # --- models and CAM layers -----------------------------------------------------------
    Case("model option it does not take", SHAPES + ["--model", "vit_tiny", "--norm", "group"],
         "--norm group is not supported by vit_tiny"),
    Case("groups that do not divide", SHAPES + ["--model", "resnet18", "--norm", "group", "--groups", "7"],
         "--groups 7 does not divide"),
    Case("width on resnet18", SHAPES + ["--width", "0.5", "--model", "resnet18"],
         "--width 0.5 is not supported by resnet18"),
    Case("model callable returns a dict", SHAPES + ["--model", "builtins:dict"],
         "--model builtins:dict returned dict, not an nn.Module"),
    Case("model callable takes no num_classes", SHAPES + ["--model", "os:getcwd"],
         "--model os:getcwd: calling it with num_classes failed (TypeError"),
    Case("model output not (N, classes)", SHAPES + ["--model", "torch.nn:Identity"],
         "--model torch.nn:Identity returns a tensor of shape (2, 3, 32, 32) for 2 images, but a classifier of 10 "
         "classes must return logits of shape (2, 10)"),
    Case("cam layer that does not exist", SHAPES + ["--cam-layer", "block9"],
         "--cam-layer 'block9' is not a layer of this model; valid names include: whiten"),
    Case("cam layer is the linear head", SHAPES + ["--cam-layer", "head"],
         "--cam-layer 'head' outputs a tensor of shape (2, 10), not a 4-D map (N, C, H, W)"),
    Case("cam layer is a 1x1 pooled map", SHAPES + ["--cam-layer", "pool"],
         "--cam-layer 'pool' outputs a 1x1 map, smaller than 5x5"),
    # --- config files --------------------------------------------------------------------
    Case("yaml unknown keys", _yaml("epochs: 3\nbatchsize: 64\nfoo: 1\n"), "unknown key(s): batchsize, foo"),
    Case("yaml wrong type", _yaml("epochs: ten\n"),
         "--epochs must be an integer, got 'ten'"),
    Case("yaml bad choice", _yaml("flip: maybe\n"),
         "--flip 'maybe' is not valid; choose one of: alternate, none, random"),
    Case("yaml syntax", _yaml("epochs: [3\n"),
         "is not valid YAML"),
    Case("yaml not a mapping", _yaml("- 1\n- 2\n"),
         "must hold a mapping"),
    Case("yaml duplicate key", _yaml("epochs: 3\nlr: 0.1\nepochs: 5\n"), "config file c.yaml gives 'epochs' twice (line 3); keep one of them"),
    Case("yaml file missing", ["--config", "missing.yaml"], "missing.yaml does not exist"),
    # --- folder datasets -------------------------------------------------------------------
    Case("data dir missing", ["--dataset", "folder", "--data-dir", "does/not/exist"],
         "--data-dir does/not/exist does not exist"),
    Case("folder without a test split", lambda t: _folder_args(_folder(t / "ds", test=False)),
         "has no labelled test split"),
    Case("folder with an empty class", lambda t: _folder_args(_folder(t / "ds", empty_class=True)),
         "holds no images; add images or remove the folder"),
    Case("folder of mixed sizes", lambda t: _folder_args(_folder(t / "ds", mixed=True)), "pass --image-size N"),
    Case("folder with a corrupt image", lambda t: _folder_args(_folder(t / "ds", corrupt=True)), "bad.png"),
    Case("folder of one class", lambda t: _folder_args(_folder(t / "ds", classes=("only",))),
         "has 1 class(es) in its training split; a classifier needs at least 2"),
    Case("images too small for the model", lambda t: _folder_args(_folder(t / "ds")),
         "--model fastnet fails on a batch of (2, 3, 8, 8) images (RuntimeError: "),
    Case("folder of 1x1 images", lambda t: _folder_args(_folder(t / "ds", size=(1, 1))),
         "--cutout 4 is larger than the 1x1 images"),
    # --- run folders -------------------------------------------------------------------------
    Case("resume without --out", ["--resume"], "--resume needs --out RUN_DIR"),
    Case("resume a folder without a run", ["--resume", "--out", "nowhere"], "nowhere holds no run"),
    Case("resume and overwrite", ["--resume", "--overwrite", "--out", "x"], "contradict"),
    Case("out is a file", lambda t: _write(t / "f") or SHAPES + ["--out", "f"], "--out f is a file"),
    Case("out already holds a run", lambda t: _run_folder(t / "run1", "done", **_tiny()) and SHAPES,
         "run1 already holds a run; pass --resume to continue it, --overwrite to replace it"),
    Case("out holds other files and no run", lambda t: _write(t / "mine" / "notes.txt") or SHAPES + ["--out", "mine"], "--out mine holds other files (notes.txt) and no run; choose a new or empty "
                                        "folder, or pass --overwrite"),
    Case("out on a read-only file system", SHAPES + ["--out", "ro/run"],
         "--out ro/run cannot be written (read-only file system at .)", patch=_read_only),
    Case("resume with other settings", lambda t: _run_folder(t / "run1", **_tiny())
         and ["--out", "run1", "--resume", "--lr", "0.05", "--seed", "9"],
         "--resume: run1 was started with other settings (lr 0.4 there vs 0.05 here; seed 3 there vs 9 here); a "
         "resumed run keeps the settings in its config.yaml"),
    Case("resume with another dataset", lambda t: _folder(t / "ds", size=(16, 16)) and _run_folder(
        t / "run1", checkpoint={"model": {}, "model_name": "fastnet", "num_classes": 3},
        **_tiny(dataset="folder", data_dir=str(t / "other"), cache_dir="cache", cutout=4, crop_padding=1,
                batch_size=2)) and ["--out", "run1", "--resume", "--data-dir", str(t / "ds")],
         "holds a fastnet with 3 classes, but this run builds a fastnet with 2 classes"),
    # --- predict -------------------------------------------------------------------------------
    Case("predict: a checkpoint whose model cannot be rebuilt", lambda t: _predict(t, model_ref={
        "model": "resnet18", "options": {"width": 1.0}, "imports": []}),
         "passes the option 'width' to resnet18, which does not take it"),
    Case("predict: cam layer is the linear head", lambda t: _predict(t, "--cam", "--cam-layer", "head"),
         "--cam-layer 'head' outputs a tensor of shape (1, 10), not a 4-D map"),
    Case("predict: topk 0", lambda t: _predict(t, "--topk", "0"), "--topk must be >= 1"),
    Case("predict: missing image", lambda t: _predict(t)[:3] + ["nothing.png", "--out", "pred"],
         "nothing.png does not exist"),
]


def _tiny(**extra) -> dict:
    return dict(dict(dataset="shapes", shapes_train=64, shapes_test=16, model="fastnet", batch_size=32,
                     progress=False, seed=3), **extra)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` (size, mtime), matplotlib's font cache aside."""
    out = {}
    for p in root.rglob("*"):
        name = p.relative_to(root).as_posix()
        if name in ("xdg", "mpl") or name.startswith(("xdg/matplotlib", "mpl/")):
            continue
        out[name + "/" if p.is_dir() else name] = (0, 0) if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, case):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default cache of folder datasets
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    args = case.args(tmp_path) if callable(case.args) else list(case.args)
    if "--out" not in args and "--resume" not in args and args[:1] != ["predict"]:
        args += ["--out", "run1"]
    before = _snapshot(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    proc = run_in_process(args, cwd=tmp_path)
    monkeypatch.undo()
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + proc.stdout
    assert case.message in err, err
    assert _snapshot(tmp_path) == before  # no run folder, no cache, nothing changed


# ---------------------------------------------------------------------------------------
# Inputs that once failed and now work (they belong to the same audit)
# ---------------------------------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_read_and_cached(tmp_path, monkeypatch):
    if os.fsencode("x") != b"x" or os.name != "posix":
        pytest.skip("POSIX file names as bytes")
    root = _folder(tmp_path / "ds")
    name = os.path.join(os.fsencode(root / "train" / "a"), b"caf\xe9.png")  # Latin-1, not UTF-8
    Image.new("RGB", (8, 8), (200, 0, 0)).save(os.fsdecode(name))
    args = ["stats", "--dataset", "folder", "--data-dir", str(root), "--cache-dir", str(tmp_path / "cache")]
    first = run_in_process(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "train split: 5 images" in first.stdout
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = run_in_process(args, cwd=tmp_path)
    assert again.returncode == 0 and "loaded decoded images from cache" in again.stdout


def test_16_bit_images_are_scaled_to_8_bits(tmp_path):
    from eva8_utils.data import decode_image

    values = np.array([[0, 257, 40000, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")  # "I" before Pillow 10
    got = decode_image(tmp_path / "g16.png")
    assert got.dtype == np.uint8 and got.shape == (4, 4, 3)
    assert got[0, :, 0].tolist() == [0, 1, 156, 255]  # round(v * 255 / 65535); clipping gave 0, 255, 255, 255


def test_a_run_stopped_before_its_first_checkpoint_starts_again_on_resume_and_temp_files_go(tmp_path):
    out = _run_folder(tmp_path / "run1", checkpoint=None, **_tiny(epochs=1, analysis=False, tta="none"))
    orphans = [out / ".metrics.json.abcd1234.tmp", out / "checkpoints" / ".last.pt.k2j4h5g6.tmp"]
    for p in orphans:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"partial")
    (out / "notes.txt").write_text("mine")
    proc = run_in_process(["--out", str(out), "--resume"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped before its first checkpoint: starting its config from the beginning" in proc.stdout
    assert "temporary file(s) left by an interrupted write" in proc.stdout
    assert not any(p.exists() for p in orphans) and (out / "notes.txt").read_text() == "mine"
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "done" and m["epochs"] == 1 and (out / "checkpoints" / "last.pt").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 3


def test_resume_keeps_config_yaml_true_and_wall_time_adds_up(tmp_path):
    out = tmp_path / "run"
    tiny = ["--dataset", "shapes", "--shapes-train", "128", "--shapes-test", "32", "--model", "fastnet",
            "--batch-size", "32", "--no-progress", "--no-analysis", "--tta", "none", "--scheduler", "step"]
    assert run_in_process(tiny + ["--epochs", "2", "--out", str(out)]).returncode == 0
    proc = run_in_process(["--out", str(out), "--resume", "--epochs", "4", "--progress", "--log-every", "5"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 4 and m["wall_time_s"] >= m["train_time_s"] > 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 4 and saved["lr"] == 0.4 and saved["seed"] == 1


def test_the_notebook_refuses_other_settings_and_a_folder_of_other_files(tmp_path):
    from eva8_utils.config import build_config
    from eva8_utils.errors import ConfigError
    from eva8_utils.rundir import RunDir

    cfg = build_config(flags=_tiny())
    _run_folder(tmp_path / "nb", **_tiny())
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(lr 0.4 there vs 0.05 here"):
        RunDir(tmp_path / "nb").open_for(cfg.replace(lr=0.05))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="RUN_DIR .*mine holds other files \\(notes.txt\\) and no run"):
        RunDir(tmp_path / "mine").open_for(cfg)
    assert RunDir(tmp_path / "mine").open_for(cfg, overwrite=True).out == str(tmp_path / "mine")
    fresh = _run_folder(tmp_path / "fresh", checkpoint=None, **_tiny())
    run = RunDir(fresh)
    assert run.open_for(cfg).seed == 3 and "stopped before its first checkpoint" in run.mode
