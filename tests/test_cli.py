"""End-to-end runs of the CLI (CPU, small data): the run folder, resume, own models, predict, compare, sweep."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import HANG_S, ROOT, TINY, cli_env, read_metrics, run_cli

pytestmark = pytest.mark.slow


def test_smoke_run_reaches_90_percent_and_writes_the_run_folder(smoke_run):
    m = read_metrics(smoke_run)
    assert m["status"] == "done" and m["epochs"] == 3
    assert m["test_acc"] >= 90.0
    assert "test_acc_tta" in m and m["tta"] == "flip_translate"
    for key in ("test_loss", "train_time_s", "device", "precision", "num_params", "per_class_acc",
                "misclassified_count", "analysis_weights", "cam_road_correct", "cam_road_correct_random"):
        assert key in m, key
    for name in ("config.yaml", "history.csv", "steps.csv", "metrics.json", "log.txt", "summary.txt", "report.md",
                 "checkpoints/last.pt", "checkpoints/best.pt", "images/curves.png", "images/gradcam.png",
                 "images/samples.png", "images/confusion_matrix.png", "images/misclassified.png"):
        assert (smoke_run / name).is_file(), name
    cfg = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert cfg["model"] == "fastnet" and cfg["epochs"] == 3 and cfg["dataset"] == "shapes"
    log = (smoke_run / "log.txt").read_text()
    assert log.count("Test set: Average loss: ") == 3 and "Accuracy: " in log and "/1000 (" in log
    assert "precision: " in log and "estimate after" in log and "per epoch" in log
    assert "Total params" in (smoke_run / "summary.txt").read_text()  # torchinfo table
    # FLOPs: per image as counted for the model, per second over the run's training time; no MFU on a CPU
    from eva8_utils.flops import train_flops_per_image
    from eva8_utils.models import create_model

    per_image = train_flops_per_image(create_model("fastnet", 10), 32)
    assert m["train_gflops_per_image"] == pytest.approx(per_image / 1e9, rel=1e-3)
    images = 4000 * m["epochs"]  # shapes' default training split
    assert m["train_tflops_per_s"] == pytest.approx(per_image * images / m["train_time_s"] / 1e12, rel=0.01)
    assert "mfu" not in m and "TFLOP/s" in log
    hist = (smoke_run / "history.csv").read_text().splitlines()
    assert hist[0] == "epoch,train_loss,train_acc,test_loss,test_acc,lr" and len(hist) == 4


def test_same_seed_same_history(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        proc = run_cli(TINY + ["--epochs", "2", "--out", str(out)])
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(out)
    a, b = ((o / "history.csv").read_text() for o in outs)
    assert a == b and len(a.splitlines()) == 3
    assert (outs[0] / "steps.csv").read_text() == (outs[1] / "steps.csv").read_text()
    other = tmp_path / "r_other_seed"
    assert run_cli(TINY + ["--epochs", "2", "--out", str(other), "--seed", "4"]).returncode == 0
    assert (other / "history.csv").read_text() != a


def test_resume_two_then_four_equals_four_straight_with_ema(tmp_path):
    common = TINY + ["--scheduler", "step", "--step-size", "2", "--lr", "0.2", "--ema", "0.9"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(common + ["--epochs", "4", "--out", str(straight)]).returncode == 0
    assert run_cli(common + ["--epochs", "2", "--out", str(resumed)]).returncode == 0
    assert len((resumed / "history.csv").read_text().splitlines()) == 3
    proc = run_cli(["--out", str(resumed), "--resume", "--epochs", "4", "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stdout
    assert (resumed / "history.csv").read_text() == (straight / "history.csv").read_text()
    assert (resumed / "steps.csv").read_text() == (straight / "steps.csv").read_text()
    head = (straight / "history.csv").read_text().splitlines()[0]
    assert head.endswith("ema_test_loss,ema_test_acc")  # the EMA weights are evaluated every epoch
    a, b = read_metrics(resumed), read_metrics(straight)
    assert a["test_acc"] == b["test_acc"] and a["ema_test_acc"] == b["ema_test_acc"]


def test_a_finished_run_given_resume_says_so_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    assert run_cli(TINY + ["--epochs", "1", "--out", str(out)]).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = run_cli(["--out", str(out), "--resume", "--no-progress"])
    assert proc.returncode == 0 and "is a finished run" in proc.stdout and "nothing changed" in proc.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


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
    assert "fix their length at the start" in proc.stderr and proc.stderr.count("\n") == 1
    assert read_metrics(out)["status"] == "done"  # the refused resume left the run as it was
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
    assert m["test_acc"] >= 75.0 and "cam_pointing_game" not in m and "cam_road_correct" in m
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


def test_console_script_help_groups_the_flags_lists_subcommands_and_ends_quietly_in_a_pipe():
    exe = shutil.which("eva8")
    if exe is None:
        pytest.skip("the package is not pip-installed in this environment")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=HANG_S)
    assert out.returncode == 0 and "--batch-size" in out.stdout and "--max-lr" in out.stdout
    text = out.stdout
    for group in ("data settings", "augmentation settings", "model settings", "optimisation settings",
                  "schedule settings", "run settings", "analysis settings"):
        assert group in text, group
    entry = text.index("\n  --batch-size")  # the help entry (the usage line names it too)
    assert text.index("optimisation settings") < entry < text.index("schedule settings")
    for sub in ("stats", "predict", "demo", "compare", "sweep"):
        assert f"\n  {sub} " in text, sub
    assert text.rstrip().splitlines()[-1].startswith("  eva8 demo")  # ends with examples
    for cmd in (f"{exe} stats --dataset shapes --shapes-train 500 --shapes-test 20 | head -2",
                f"{exe} --help | head -1"):
        p = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, timeout=HANG_S,
                           env=cli_env())
        assert p.stderr == "", p.stderr  # no BrokenPipeError traceback
        assert len(p.stdout.splitlines()) <= 2


# --------------------------------------------------------------------------- own models
USER_MODULE = '''
import torch
import torch.nn as nn
from eva8_utils import register_model


class Small(nn.Module):
    """A user's network: no norm layers of the package, its own layer names."""

    def __init__(self, num_classes=10, dropout=0.0):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.drop(self.features(x).mean((2, 3))))


@register_model("small_user_net", cam_layer="features.3")
def small_user_net(num_classes=10):
    return Small(num_classes)


class Constant(nn.Module):
    """Predicts nothing: its loss cannot fall, whatever the LR."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.num_classes = num_classes
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.new_zeros(len(x), self.num_classes) + 0 * self.w


def no_norm(num_classes=10):
    """Convolutions without norm layers: the fast recipe's LR sends it off."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
'''


@pytest.fixture()
def user_module(tmp_path):
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / "mynets.py").write_text(USER_MODULE)
    return folder


def test_own_models_from_the_cli_train_resume_load_and_explain(tmp_path, user_module):
    env = {"PYTHONPATH": str(user_module)}
    common = ["--dataset", "shapes", "--shapes-train", "256", "--shapes-test", "64", "--batch-size", "64",
              "--no-progress", "--tta", "none", "--scheduler", "step", "--lr", "0.1", "--num-images", "4"]
    by_name, by_ref = tmp_path / "by_name", tmp_path / "by_ref"
    proc = run_cli(common + ["--import", "mynets", "--model", "small_user_net", "--epochs", "1", "--out",
                             str(by_name)], **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_metrics(by_name)
    assert m["model"] == "small_user_net" and m["cam_layer"] == "features.3"  # its own layer
    proc = run_cli(["--out", str(by_name), "--resume", "--epochs", "2", "--no-progress"], **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_metrics(by_name)["epochs"] == 2
    proc = run_cli(common + ["--model", "mynets:Small", "--dropout", "0.1", "--epochs", "1", "--cam-layer",
                             "features.0", "--out", str(by_ref)], **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_metrics(by_ref)
    assert m["model"] == "mynets:Small" and m["cam_layer"] == "features.0"
    assert "mynets:Small" in (by_ref / "report.md").read_text() and "mynets:Small" in (by_ref / "log.txt").read_text()
    # load for inference in a fresh process that never imports the user's module itself; naming the
    # code (model=, imports=) trusts it, and without that the file is refused (tests/test_checkpoint_trust.py)
    code = ("import sys, torch; from eva8_utils.checkpoint import load_model\n"
            "for p, trust in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    model, ck = load_model(p, **eval(trust))\n"
            "    print(type(model).__name__, ck['model_ref']['model'], model(torch.zeros(1, 3, 32, 32)).shape[1])\n")
    by_name_trust, by_ref_trust = "dict(imports=['mynets'])", "dict(model='mynets:Small')"
    p = subprocess.run([sys.executable, "-c", code, str(by_name / "checkpoints" / "best.pt"), by_name_trust,
                        str(by_ref / "checkpoints" / "last.pt"), by_ref_trust], capture_output=True, text=True,
                       timeout=HANG_S, env=cli_env(PYTHONPATH=f"{ROOT}:{user_module}"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split("\n")[:2] == ["Small small_user_net 10", "Small mynets:Small 10"]
    # without the module on the path: one line naming it
    p = subprocess.run([sys.executable, "-c", code, str(by_ref / "checkpoints" / "last.pt"), by_ref_trust],
                       capture_output=True, text=True, timeout=HANG_S, env=cli_env())
    assert p.returncode != 0 and "cannot import it (ModuleNotFoundError: No module named 'mynets')" in p.stderr
    # YAML works too
    (tmp_path / "c.yaml").write_text("imports: [mynets]\nmodel: small_user_net\n")
    proc = run_cli(common + ["--config", str(tmp_path / "c.yaml"), "--epochs", "1", "--no-analysis", "--out",
                             str(tmp_path / "yaml")], **env)
    assert proc.returncode == 0 and read_metrics(tmp_path / "yaml")["model"] == "small_user_net"


def test_lr_auto_without_a_descent_stops_with_one_line(tmp_path, user_module):
    proc = run_cli(["--dataset", "shapes", "--shapes-train", "256", "--shapes-test", "64", "--model",
                    "mynets:Constant", "--lr", "auto", "--lr-find-iters", "20", "--batch-size", "64", "--out",
                    str(tmp_path / "auto")], PYTHONPATH=str(user_module))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--lr auto: the LR range test found no descent" in proc.stderr and "give --lr yourself" in proc.stderr
    assert not (tmp_path / "auto").exists()


def test_an_unregistered_model_name_says_how_to_bring_it():
    proc = run_cli(TINY + ["--model", "mynet", "--out", "never"])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--model 'mynet' is not valid" in proc.stderr and "--import" in proc.stderr


def test_divergence_is_noticed_and_said_once_with_a_hint(tmp_path, user_module):
    out = tmp_path / "div"
    proc = run_cli(["--recipe", "fast_sgd", "--dataset", "shapes", "--shapes-train", "512", "--shapes-test", "64",
                    "--model", "mynets:no_norm", "--epochs", "2", "--batch-size", "64", "--no-analysis",
                    "--no-progress", "--tta", "none", "--out", str(out), "--log-every", "2"],
                   PYTHONPATH=str(user_module))
    log = (out / "log.txt").read_text()
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    assert log.count("warning: ") == 1 and "lower --lr" in log
    assert ("diverging" in log) or ("still at chance" in log)
    assert len(read_metrics(out)["warnings"]) == 1


# --------------------------------------------------------------------------- predict
def test_predict_prints_writes_and_draws_and_refuses_bad_files(tmp_path, smoke_run):
    from PIL import Image

    from eva8_utils.data import make_shapes

    s = make_shapes(10, 8, seed=1)
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(s.x_test[i]).save(imgs / ("sub" if i % 2 else "") / f"{i}_{s.classes[s.y_test[i]]}.png")
    Image.fromarray(s.x_test[6]).resize((48, 40)).convert("L").save(imgs / "gray.png")  # made RGB, 32x32
    out = tmp_path / "pred"
    proc = run_cli(["predict", "--checkpoint", str(smoke_run / "checkpoints" / "best.pt"), str(imgs),
                    "--topk", "2", "--cam", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "file,class1,prob1,class2,prob2" and len(rows) == 8
    right = 0
    for row in rows[1:]:
        f, c1, p1, c2, p2 = row.split(",")
        assert 1 >= float(p1) >= float(p2) >= 0
        right += f.endswith(f"_{c1}.png")
    assert right >= 5  # the 6 labelled test images: the smoke model gets about 97% right
    assert len(list((out / "cam").glob("*.png"))) == 7
    assert "top classes" in proc.stdout
    # again into the same folder, fewer images: the csv and the overlays describe this prediction only
    proc = run_cli(["predict", "--checkpoint", str(smoke_run / "checkpoints" / "best.pt"), str(imgs / "sub"),
                    "--cam", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((out / "predictions.csv").read_text().splitlines()) == 4
    assert sorted(p.stem for p in (out / "cam").glob("*.png")) == sorted(p.stem for p in (imgs / "sub").glob("*.png"))
    bad = tmp_path / "bad"
    (imgs / "notes.png").write_bytes(b"not an image")
    proc = run_cli(["predict", "--checkpoint", str(smoke_run / "checkpoints" / "best.pt"), str(imgs), "--out",
                    str(bad)])
    assert proc.returncode == 2 and "notes.png" in proc.stderr and proc.stderr.count("\n") == 1
    assert not bad.exists()  # nothing half-written


# --------------------------------------------------------------------------- compare and sweep
def test_sweep_the_norms_then_compare_and_restart(tmp_path):
    out = tmp_path / "norms"
    args = ["sweep", "--out", str(out), "--norm", "batch", "group", "layer", "--dataset", "shapes",
            "--shapes-train", "256", "--shapes-test", "64", "--model", "fastnet", "--width", "0.5", "--epochs", "2",
            "--batch-size", "64", "--no-progress", "--num-images", "4", "--no-analysis"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("compare.png", "compare.md", "compare.csv", "misclassified_norm-batch.png",
                 "misclassified_norm-group.png", "misclassified_norm-layer.png"):
        assert (out / name).is_file(), name
    rows = (out / "compare.csv").read_text().splitlines()
    assert rows[0].startswith("run,status,epochs,test_acc,best_test_acc,test_acc_tta,epoch_time_s,num_params,norm")
    assert [r.split(",")[0] for r in rows[1:]] == ["norm-batch", "norm-group", "norm-layer"]
    assert [r.split(",")[8] for r in rows[1:]] == ["batch", "group", "layer"]
    md = (out / "compare.md").read_text()
    assert "![curves](compare.png)" in md and md.count("## Misclassified") == 3
    # started again: finished runs are skipped, an unfinished one is resumed
    group = out / "norm-group"
    m = json.loads((group / "metrics.json").read_text())
    m["status"] = "interrupted"
    (group / "metrics.json").write_text(json.dumps(m))
    history_before = (out / "norm-batch" / "history.csv").read_text()
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("is finished; skipped") == 2 and "norm-group (resuming)" in proc.stdout
    assert (out / "norm-batch" / "history.csv").read_text() == history_before


def test_compare_runs_of_different_lengths_a_running_one_and_a_broken_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(TINY + ["--epochs", "1", "--out", str(a)]).returncode == 0
    assert run_cli(TINY + ["--epochs", "2", "--out", str(b), "--lr", "0.2"]).returncode == 0
    m = json.loads((b / "metrics.json").read_text())
    m["status"], m["epochs_planned"] = "running", 5
    (b / "metrics.json").write_text(json.dumps(m))
    out = tmp_path / "cmp"
    proc = run_cli(["compare", str(a), str(b), "--labels", "one", "two", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (out / "compare.csv").read_text().splitlines()
    assert rows[1].startswith("one,done,1,") and rows[2].startswith("two,running (2/5 epochs),2,")
    assert rows[0].endswith(",epochs,lr,path")  # the settings that differ: epochs and lr
    (tmp_path / "junk").mkdir()
    proc = run_cli(["compare", str(a), str(tmp_path / "junk"), "--out", str(tmp_path / "cmp2")])
    assert proc.returncode == 2 and "junk holds no history.csv" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "cmp2").exists()


# --------------------------------------------------------------------------- TensorBoard
def test_tensorboard_writes_scalars_images_and_hyperparameters(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    proc = run_cli(TINY + ["--epochs", "2", "--out", str(out), "--tensorboard", "--analysis", "--num-images", "4"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag in ("train/lr", "train/loss", "train/acc", "test/loss", "test/acc"):
        assert tag in tags["scalars"], tag
    assert len(ea.Scalars("train/lr")) == 2 * 4 and len(ea.Scalars("test/acc")) == 2
    # TensorBoard stores float32: within its precision (6e-6 at 100%) of history.csv's value, not rounded alike
    assert [e.value for e in ea.Scalars("test/acc")] == pytest.approx(
        [float(r.split(",")[4]) for r in (out / "history.csv").read_text().splitlines()[1:]], abs=1e-5)
    assert any(t.startswith("images/") for t in tags["images"])
    events = b"".join(p.read_bytes() for p in (out / "tensorboard").rglob("events.*"))
    assert b"_hparams_/session_start_info" in events and b"hparam/test_acc" in events


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch, capsys):
    import builtins

    from eva8_utils.main import main

    real = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--epochs", "1", "--tensorboard", "--out", "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --tensorboard needs the tensorboard package: pip install tensorboard"
    assert not (tmp_path / "run").exists()


def test_usage_hints_name_the_command_as_it_was_typed(monkeypatch):
    from eva8_utils.cli import command
    from eva8_utils.errors import ConfigError
    from eva8_utils.main import build_parser

    for argv0, expect in (("/venv/bin/eva8", "eva8 predict"), ("/x/eva8_utils/main.py", "python -m eva8_utils.main predict"),
                          ("/x/eva8_utils/__main__.py", "python -m eva8_utils predict")):
        monkeypatch.setattr(sys, "argv", [argv0])
        assert command("predict") == expect
    monkeypatch.setattr(sys, "argv", ["/venv/bin/eva8"])
    with pytest.raises(ConfigError, match=r"; see eva8 --help$"):
        build_parser().parse_args(["--no-such-flag"])
