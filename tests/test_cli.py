"""End-to-end runs of the CLI in subprocesses (CPU, small data)."""

import json
import shutil

import pytest
import yaml

from conftest import TINY, read_metrics, run_cli

pytestmark = pytest.mark.slow


def test_smoke_run_reaches_90_percent_and_writes_the_run_folder(smoke_run):
    m = read_metrics(smoke_run)
    assert m["status"] == "done" and m["epochs"] == 3
    assert m["test_acc"] >= 90.0
    assert "test_acc_tta" in m and m["tta"] == "flip_translate"
    for key in ("test_loss", "train_time_s", "device", "num_params", "per_class_acc", "misclassified_count"):
        assert key in m
    for name in ("config.yaml", "history.csv", "steps.csv", "metrics.json", "log.txt", "summary.txt", "report.md",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (smoke_run / name).is_file(), name
    cfg = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert cfg["model"] == "fastnet" and cfg["epochs"] == 3 and cfg["dataset"] == "shapes"
    log = (smoke_run / "log.txt").read_text()
    assert log.count("Test set: Average loss: ") == 3 and "Accuracy: " in log and "/1000 (" in log
    assert "Total params" in (smoke_run / "summary.txt").read_text()  # torchinfo table
    hist = (smoke_run / "history.csv").read_text().splitlines()
    assert hist[0] == "epoch,train_loss,train_acc,test_loss,test_acc,lr" and len(hist) == 4


def test_same_seed_same_history(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        proc = run_cli(TINY + ["--epochs", "3", "--out", str(out)])
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(out)
    a, b = ((o / "history.csv").read_text() for o in outs)
    assert a == b and len(a.splitlines()) == 4
    assert (outs[0] / "steps.csv").read_text() == (outs[1] / "steps.csv").read_text()
    other = tmp_path / "r_other_seed"
    assert run_cli(TINY + ["--epochs", "3", "--out", str(other), "--seed", "4"]).returncode == 0
    assert (other / "history.csv").read_text() != a


def test_resume_two_then_four_equals_four_straight(tmp_path):
    common = TINY + ["--scheduler", "step", "--step-size", "2", "--lr", "0.2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(common + ["--epochs", "4", "--out", str(straight)]).returncode == 0
    assert run_cli(common + ["--epochs", "2", "--out", str(resumed)]).returncode == 0
    assert len((resumed / "history.csv").read_text().splitlines()) == 3
    proc = run_cli(["--out", str(resumed), "--resume", "--epochs", "4", "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stdout
    assert (resumed / "history.csv").read_text() == (straight / "history.csv").read_text()
    assert (resumed / "steps.csv").read_text() == (straight / "steps.csv").read_text()
    assert read_metrics(resumed)["test_acc"] == read_metrics(straight)["test_acc"]


def test_existing_run_folder_is_kept_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    assert run_cli(TINY + ["--epochs", "1", "--out", str(out)]).returncode == 0
    before = (out / "history.csv").read_text()
    proc = run_cli(TINY + ["--epochs", "1", "--out", str(out), "--seed", "9"])
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (out / "history.csv").read_text() == before
    # a one-cycle schedule is fixed at the start: extending it is refused, with the reason
    proc = run_cli(["--out", str(out), "--resume", "--epochs", "2"])
    assert proc.returncode == 2
    assert "onecycle and cosine fix their length" in proc.stderr and proc.stderr.count("\n") == 1
    (out / "notes.txt").write_text("mine")
    proc = run_cli(TINY + ["--epochs", "1", "--out", str(out), "--seed", "9", "--overwrite"])
    assert proc.returncode == 0
    assert (out / "history.csv").read_text() != before
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes only the run's own files


def test_folder_dataset_end_to_end_with_cache(tmp_path):
    from PIL import Image

    import numpy as np

    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "blue": (40, 40, 200)}
    for split, n in (("train", 24), ("val", 6)):
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                noisy = np.clip(np.array(rgb) + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(root / split / name / f"{i}.png")
    args = ["--dataset", "folder", "--data-dir", str(root), "--cache-dir", str(tmp_path / "cache"), "--model",
            "fastnet", "--epochs", "3", "--batch-size", "8", "--cutout", "8", "--crop-padding", "2",
            "--no-progress", "--num-images", "4", "--tta", "flip"]
    proc = run_cli(args + ["--out", str(tmp_path / "r1")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 classes" in proc.stdout and "16x16" in proc.stdout
    m = read_metrics(tmp_path / "r1")
    assert m["test_acc"] >= 75.0 and "cam_pointing_game" not in m
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    proc = run_cli(args + ["--out", str(tmp_path / "r2")])
    assert "loaded decoded images from cache" in proc.stdout


def test_stats_command_prints_mean_std_and_counts():
    proc = run_cli(["stats", "--dataset", "shapes", "--shapes-train", "200", "--shapes-test", "50"])
    assert proc.returncode == 0, proc.stderr
    from eva8_utils.data import channel_stats, class_counts, make_shapes

    s = make_shapes(200, 50, seed=1)
    mean, std = channel_stats(s.x_train)
    assert f"mean ({mean[0]:.4f}, {mean[1]:.4f}, {mean[2]:.4f})" in proc.stdout
    assert f"std ({std[0]:.4f}, {std[1]:.4f}, {std[2]:.4f})" in proc.stdout
    counts = class_counts(s.y_train, 10)
    circle_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("circle")][0]
    assert circle_line.split()[1] == str(counts[0])


def test_console_script_is_installed():
    exe = shutil.which("eva8")
    if exe is None:
        pytest.skip("the package is not pip-installed in this environment")
    import subprocess

    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--batch-size" in out.stdout and "--max-lr" in out.stdout
