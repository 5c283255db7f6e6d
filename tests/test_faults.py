"""Fault injection: kills, interrupts, torn and hostile files, non-finite losses, memory under load."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import HANG_S, TINY, cli_env, read_metrics, run_cli, shared_between_workers
from eva8_utils.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from eva8_utils.errors import CheckpointError, NonFiniteLossError
from eva8_utils.utils import atomic_write_text

pytestmark = pytest.mark.fault

# Long enough epochs to hit one in the middle; same settings for the straight and the broken runs.
KILL_ARGS = ["--dataset", "shapes", "--shapes-train", "1024", "--shapes-test", "64", "--model", "fastnet",
             "--width", "0.5", "--batch-size", "64", "--epochs", "3", "--no-analysis", "--tta", "none",
             "--seed", "11", "--log-every", "1"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    def build(folder):
        proc = run_cli(KILL_ARGS + ["--out", str(folder / "run"), "--no-progress"])
        assert proc.returncode == 0, proc.stderr[-2000:]

    return shared_between_workers(tmp_path_factory, "straight", build) / "run"


# Runs the CLI and stops itself (SIGSTOP) right after the training step of the given epoch and
# batch, so that the test's signal lands at that batch however busy the machine is.
_STOP_AT = r"""
import os, runpy, signal, sys
from eva8_utils.engine import loop
epoch, batch = int(sys.argv[1]), int(sys.argv[2])
step = loop.train_step

def train_step(state, x, y):
    step(state, x, y)
    if (state.epoch, state.batch) == (epoch, batch):
        os.kill(os.getpid(), signal.SIGSTOP)

loop.train_step = train_step
sys.argv = ["eva8_utils.main", *sys.argv[3:]]
runpy.run_module("eva8_utils.main", run_name="__main__")
"""


def _start_and_stop_at(args, epoch, batch, log):
    """Start the CLI with ``args``, its output to ``log``; return once it has stopped itself
    after the training step of ``batch`` in ``epoch``."""
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", _STOP_AT, str(epoch), str(batch), *args],
                                cwd=Path(__file__).parents[1], env=cli_env(), stdout=fh, stderr=subprocess.STDOUT)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), Path(log).read_text()[-3000:]
    return proc


def _same_run(a: Path, b: Path):
    assert (a / "history.csv").read_text() == (b / "history.csv").read_text()
    assert (a / "steps.csv").read_text() == (b / "steps.csv").read_text()
    ma, mb = read_metrics(a), read_metrics(b)
    for k in ("test_acc", "test_loss", "train_loss", "best_test_acc", "epochs"):
        assert ma[k] == mb[k], k


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(straight_run, tmp_path):
    out = tmp_path / "killed"
    proc = _start_and_stop_at(KILL_ARGS + ["--out", str(out), "--progress"], 2, 5, tmp_path / "log")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len((out / "history.csv").read_text().splitlines()) - 1
    assert done == 1, "the kill should land in epoch 2"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    res = run_cli(["--out", str(out), "--resume", "--no-progress"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout and "after epoch 1" in res.stdout
    _same_run(out, straight_run)


def test_a_kill_inside_an_epoch_resumes_at_the_exact_batch(straight_run, tmp_path):
    """--checkpoint-minutes: checkpoints inside the epoch; the resumed run continues at the
    batch after the last one and ends with the same history as a run never killed."""
    out = tmp_path / "killed_mid"
    args = KILL_ARGS + ["--out", str(out), "--progress", "--checkpoint-minutes", "0.0001"]
    proc = _start_and_stop_at(args, 2, 5, tmp_path / "log")  # epoch 2 has 16 batches
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["epoch"] == 1 and ck["partial"] is not None and 1 <= ck["partial"]["batch"] < 16
    assert "rng" in ck["partial"] and len(ck["partial"]["lrs"]) == ck["partial"]["batch"]
    res = run_cli(["--out", str(out), "--resume", "--no-progress"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"batch {ck['partial']['batch']} of epoch 2" in res.stdout
    _same_run(out, straight_run)


def test_sigint_stops_at_a_batch_boundary_says_how_to_resume_and_resumes(straight_run, tmp_path):
    out = tmp_path / "interrupted"
    proc = _start_and_stop_at(KILL_ARGS + ["--out", str(out), "--progress"], 2, 5, tmp_path / "log")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    proc.wait()
    rest = (tmp_path / "log").read_text()
    assert proc.returncode == 130
    assert "Interrupted in epoch 2" in rest and f"--out {out} --resume" in rest
    m = read_metrics(out)
    assert m["status"] == "interrupted" and "interrupted in epoch 2" in m["error"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    res = run_cli(["--out", str(out), "--resume", "--no-progress"])
    assert res.returncode == 0, res.stderr[-2000:]
    _same_run(out, straight_run)


def test_truncated_checkpoint_falls_back_to_the_previous_one_then_fails_clearly(tmp_path):
    out = tmp_path / "run"
    args = TINY + ["--epochs", "2", "--scheduler", "step", "--out", str(out)]
    assert run_cli(args).returncode == 0
    last, prev = out / "checkpoints" / "last.pt", out / "checkpoints" / "prev.pt"
    assert load_checkpoint(prev)["epoch"] == 1
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(last)
    res = run_cli(["--out", str(out), "--resume", "--epochs", "3", "--no-progress"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "trying the previous checkpoint" in res.stdout and "after epoch 1" in res.stdout
    assert read_metrics(out)["epochs"] == 3
    # both broken: one clear line naming the file
    for p in (last, prev):
        p.write_bytes(b"not a checkpoint")
    res = run_cli(["--out", str(out), "--resume", "--epochs", "4"])
    assert res.returncode == 2
    err = res.stderr.strip()
    assert err.count("\n") == 0 and str(last) in err and "corrupt or truncated" in err


def test_resume_with_another_model_says_which(tmp_path):
    out = tmp_path / "run"
    assert run_cli(TINY + ["--epochs", "1", "--scheduler", "step", "--out", str(out)]).returncode == 0
    res = run_cli(["--out", str(out), "--resume", "--epochs", "2", "--model", "custom_resnet"])
    assert res.returncode == 2 and res.stderr.count("\n") == 1  # refused before anything is built
    assert "was started with other settings (model 'fastnet' there vs 'custom_resnet' here" in res.stderr
    with pytest.raises(CheckpointError, match="holds a fastnet with 10 classes, but this run builds a fastnet with 200"):
        check_compatible(load_checkpoint(out / "checkpoints" / "last.pt"), "fastnet", 200, "last.pt")


def test_non_finite_loss_stops_with_epoch_batch_and_hint(tmp_path):
    out = tmp_path / "nan"
    res = run_cli(TINY + ["--epochs", "2", "--lr", "1e30", "--scheduler", "none", "--out", str(out)])
    assert res.returncode == 3
    assert "non-finite loss in epoch 1, batch " in res.stdout and "lower the learning rate" in res.stdout
    assert not (out / "checkpoints" / "last.pt").exists()
    m = read_metrics(out)
    assert m["status"] == "failed: non-finite loss" and "non-finite loss in epoch 1" in m["error"]


def test_a_failing_analysis_leaves_status_failed_with_the_error(tmp_path, monkeypatch, capsys):
    from eva8_utils.analysis import Analysis
    from eva8_utils.main import main

    def broken(self):
        raise RuntimeError("the plot library fell over")

    monkeypatch.setattr(Analysis, "run_all", broken)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="fell over"):
        main(TINY[:-4] + ["--epochs", "1", "--out", "run", "--analysis"])
    m = read_metrics(tmp_path / "run")
    assert m["status"] == "failed" and m["error"] == "RuntimeError: the plot library fell over"
    assert m["epochs"] == 1 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()  # training is kept


class _NaNAfter(nn.Module):
    """A tiny classifier whose output turns NaN once ``armed`` is set."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)
        self.armed = False

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out * float("nan") if self.armed else out


def test_non_finite_loss_never_overwrites_the_last_good_checkpoint(tmp_path):
    from eva8_utils import RunDir, build, build_config
    from eva8_utils.engine import Callback, Resume, fit

    cfg = build_config(flags=dict(dataset="shapes", shapes_train=96, shapes_test=32, epochs=3, batch_size=32,
                                  progress=False, tta="none", scheduler="none", lr=0.01, channels_last=False,
                                  precision="fp32", analysis=False))
    model = _NaNAfter()
    exp = build(cfg, model=model)
    run = RunDir(tmp_path / "run")
    run.start(exp)
    class Arm(Callback):
        def after_epoch(self, state):
            if state.epoch == 1:
                model.armed = True

    with pytest.raises(NonFiniteLossError) as e:
        fit(exp.train_model, exp.train_loader, exp.test_loader, exp.optimizer, epochs=3, device=exp.device,
            progress=False, callbacks=[run.callback(exp), Arm()], resume=Resume(0, exp.history_so_far()))
    assert (e.value.epoch, e.value.batch) == (2, 1)
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert ck["model_name"] == "_NaNAfter" and ck["model_ref"] is None  # a module passed in: named by its class
    assert read_metrics(tmp_path / "run")["model"] == "_NaNAfter"


def test_atomic_text_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


_WRITER = r"""
import sys, torch
sys.path.insert(0, sys.argv[2])
from eva8_utils.checkpoint import save_checkpoint
i = 0
while True:
    i += 1
    save_checkpoint(sys.argv[1], {"model": {"w": torch.full((500_000,), float(i))}, "epoch": i}, keep_previous=True)
"""


def test_a_kill_at_any_moment_leaves_a_whole_checkpoint(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    root = str(Path(__file__).parents[1])
    seen = []
    for delay in (0.1, 0.45, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), root])
        while not path.with_name("prev.pt").exists() and proc.poll() is None:  # two saves done, however slow
            time.sleep(0.02)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        for p in (path, path.with_name("prev.pt")):
            if p.exists():
                ck = load_checkpoint(p)  # never torn
                w = ck["model"]["w"]
                assert torch.equal(w, torch.full_like(w, float(ck["epoch"])))
        seen.append(load_checkpoint(path if path.exists() else path.with_name("prev.pt"))["epoch"])
    assert len(seen) == 3 and min(seen) >= 1  # a whole checkpoint after every kill


def test_a_malicious_checkpoint_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "run" / "checkpoints" / "last.pt"
    bad.parent.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 1, "payload": Evil()}, bad)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(bad)
    assert not marker.exists()
    # through the CLI as well
    (tmp_path / "run" / "config.yaml").write_text("dataset: shapes\nmodel: fastnet\nshapes_train: 64\nshapes_test: 16\n"
                                                  "batch_size: 16\n")
    res = run_cli(["--out", str(tmp_path / "run"), "--resume"])
    assert res.returncode == 2 and "refused to load" in res.stderr
    assert not marker.exists()


def test_config_is_read_with_safe_load_and_checkpoints_with_weights_only():
    import ast

    pkg = Path(__file__).parents[1] / "eva8_utils"
    torch_loads = 0
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            owner, attr = node.func.value.id, node.func.attr
            if owner == "yaml":
                assert attr in ("safe_load", "safe_dump"), f"{path}: yaml.{attr}"
            if owner == "torch" and attr == "load":
                torch_loads += 1
                assert any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                           for k in node.keywords), f"{path}: torch.load without weights_only=True"
            if owner == "pickle":
                raise AssertionError(f"{path}: pickle.{attr}")
    assert torch_loads == 1  # one loader, in checkpoint.py


def test_files_are_written_only_under_the_run_folder_cache_and_readme_images(tmp_path):
    from PIL import Image

    work, data = tmp_path / "work", tmp_path / "data"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (data / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (16, 16), (i * 40, 0, 0) if c == "a" else (0, 0, i * 40)).save(data / split / c / f"{i}.png")
    work.mkdir()

    def snapshot():
        return {p for p in tmp_path.rglob("*") if p.is_file()}

    before = snapshot()
    proc = subprocess.run(
        [sys.executable, "-m", "eva8_utils.main", "--dataset", "folder", "--data-dir", str(data), "--model", "fastnet",
         "--epochs", "1", "--batch-size", "4", "--cutout", "8", "--crop-padding", "2", "--out", "myrun",
         "--readme-images", "--lr-find", "--lr-find-iters", "10", "--no-progress", "--num-images", "2"],
        cwd=work, env=cli_env(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
                              MPLCONFIGDIR=str(tmp_path / "mpl")),
        capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = snapshot() - before
    allowed = (work / "myrun", work / "image" / "README", tmp_path / "cache" / "eva8_utils", tmp_path / "mpl")
    stray = [p for p in new if not any(a in p.parents for a in allowed)]
    assert stray == []
    assert (work / "myrun" / "images" / "lr_finder.png").is_file()
    assert {p.name for p in (work / "image" / "README").iterdir()} >= {"curves.png", "gradcam.png",
                                                                       "misclassified.png", "confusion_matrix.png"}
    assert any(p.suffix == ".npz" for p in new)


def test_memory_stays_flat_over_many_epochs(tmp_path):
    """150 epochs of a tiny model with checkpoints and files written every epoch."""
    code = r"""
import json, sys, torch, torch.nn as nn
sys.path.insert(0, sys.argv[2])
from eva8_utils import RunDir, build, build_config, train
from eva8_utils.engine import Callback
from eva8_utils.utils import current_rss_mb
cfg = build_config(flags=dict(dataset="shapes", shapes_train=64, shapes_test=16, epochs=150, batch_size=32,
                              progress=False, tta="none", scheduler="none", lr=0.01, precision="fp32",
                              analysis=False, out=sys.argv[1]))
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
exp = build(cfg, model=model)
run = RunDir(sys.argv[1])
rss = {}
class Track(Callback):
    def after_epoch(self, state):
        if state.epoch in (10, 150):
            rss[state.epoch] = current_rss_mb()
train(exp, run, callbacks=[Track()])
print(json.dumps(rss))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(Path(__file__).parents[1])],
                          capture_output=True, text=True, timeout=HANG_S, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rss["150"] - rss["10"] < 15, rss
