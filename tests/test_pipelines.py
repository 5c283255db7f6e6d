"""Your own per-image pipeline (--train-transform / --test-transform).

Promises:
- an albumentations Compose with the course's transforms and a torchvision v2 Compose each train a
  run that the loop, the run folder, resume and the analysis treat like any other;
- one normalisation rule: a pipeline with a Normalize normalises (and its mean/std become the
  run's), a pipeline without one is normalised by the package with the dataset's mean/std;
- the log names the path (the pipeline, DataLoader, workers, the normalisation);
- a pipeline that returns the wrong thing is one line and exit 2 before anything is written.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli

A = pytest.importorskip("albumentations")

COURSE = textwrap.dedent("""
    import albumentations as A
    import numpy as np
    import torch
    import torchvision.transforms.v2 as T
    from albumentations.pytorch import ToTensorV2

    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    train_tf = A.Compose([
        A.HorizontalFlip(),
        A.Affine(translate_percent=0.05, scale=(0.95, 1.05), rotate=(-15, 15), p=0.5),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(8, 8), hole_width_range=(8, 8),
                        fill=tuple(int(255 * m) for m in MEAN), p=0.5),
        A.ToGray(p=0.1),
        A.Normalize(mean=MEAN, std=STD),
        ToTensorV2(),
    ])
    test_tf = A.Compose([A.Normalize(mean=MEAN, std=STD), ToTensorV2()])
    tv_train = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToImage(),
                          T.ToDtype(torch.float32, scale=True)])
    two_d = lambda image: np.zeros((32, 32), np.float32)
    one_channel = T.Compose([T.Grayscale(1), T.ToImage(), T.ToDtype(torch.float32, scale=True)])
""")


@pytest.fixture()
def course(tmp_path, monkeypatch):
    (tmp_path / "course_tf.py").write_text(COURSE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _run(course, *flags):
    out = course / "run"
    p = run_cli([*TINY, "--epochs", "2", "--out", str(out), *flags], cwd=course)  # in this process: course_tf on sys.path
    return p, out


def test_the_course_albumentations_pipeline_trains_a_run_like_any_other(course):
    p, out = _run(course, "--train-transform", "course_tf:train_tf", "--test-transform", "course_tf:test_tf",
                  "--analysis", "--num-images", "4")
    assert p.returncode == 0, p.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "train: input: your pipeline course_tf:train_tf (albumentations), DataLoader, " in log
    assert "normalisation by the pipeline's Normalize" in log
    assert "mean (0.4914, 0.4822, 0.4465) std (0.2470, 0.2435, 0.2616)" in log  # the pipeline's, not the data's
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["epochs"] == 2 and 0 <= metrics["test_acc"] <= 100
    assert len((out / "history.csv").read_text().splitlines()) == 3
    for name in ("misclassified", "gradcam", "curves"):
        assert (out / "images" / f"{name}.png").stat().st_size > 5000
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True, map_location="cpu")
    assert ckpt["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])  # predict normalises as training did


def test_a_torchvision_pipeline_without_normalize_is_normalised_by_the_package(course):
    from eva8_utils import build, build_config, train

    cfg = build_config(flags=dict(dataset="shapes", shapes_train=256, shapes_test=64, model="fastnet",
                                  batch_size=64, epochs=1, progress=False, tta="none",
                                  train_transform="course_tf:tv_train"))
    exp = build(cfg, device="cpu")
    assert type(exp.train_loader).__name__ == "PipelineLoader" and exp.train_loader.workers >= 1
    x, y = next(iter(exp.train_loader))
    assert x.shape == (64, 3, 32, 32) and y.shape == (64,)
    # normalised once: about zero mean and unit spread per channel (twice would shrink it to ~1/std)
    assert x.mean().abs() < 0.3 and 0.6 < x.std() < 1.6
    raw = torch.from_numpy(exp.splits.x_train).float().div(255)
    assert exp.splits.mean == pytest.approx(raw.mean((0, 1, 2)).tolist(), abs=1e-3)  # the data's own
    result = train(exp)  # and it trains, end to end
    assert result["history"]["epoch"] == [1] and 0 <= result["final"]["test_acc"] <= 100


def test_a_pipeline_run_is_resumed_like_any_other(course):
    from eva8_utils import Callback, RunDir, build, build_config, train
    from eva8_utils.errors import TrainingInterrupted

    flags = dict(dataset="shapes", shapes_train=256, shapes_test=64, model="fastnet", batch_size=64, epochs=2,
                 progress=False, tta="none", analysis=False, train_transform="course_tf:train_tf",
                 out=str(course / "resumed"))
    stop = {"now": False}

    class StopAfterEpoch1(Callback):
        def after_epoch(self, state):
            stop["now"] = True

    exp = build(build_config(flags=flags), device="cpu")
    with pytest.raises(TrainingInterrupted):
        train(exp, RunDir(course / "resumed"), stop=lambda: stop["now"], callbacks=[StopAfterEpoch1()])
    first = (course / "resumed" / "history.csv").read_text().splitlines()
    assert len(first) == 2
    cfg = build_config(flags={**flags, "resume": True})
    run = RunDir(course / "resumed")
    run.check(cfg)  # what the CLI and the notebook do: this folder is resumed
    exp = build(cfg, device="cpu")
    train(exp, run)
    history = (course / "resumed" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and history[:2] == first  # epoch 1 kept, epoch 2 trained after the resume


@pytest.mark.parametrize("name,said", [("two_d", "shape (32, 32)"), ("one_channel", "shape (1, 32, 32)"),
                                       ("nothing_here", "has no attribute"), ("np", "not callable")])
def test_a_pipeline_that_returns_the_wrong_thing_is_one_line_before_anything_is_written(course, name, said):
    p, out = _run(course, "--train-transform", f"course_tf:{name}")
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and "Traceback" not in p.stderr
    assert not out.exists()


def test_the_normalisation_rule_reads_the_pipelines_own_normalize():
    import torchvision.transforms.v2 as T
    from albumentations.pytorch import ToTensorV2

    from eva8_utils.pipelines import apply, pipeline_normalisation

    a = A.Compose([A.HorizontalFlip(), A.Normalize(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)), ToTensorV2()])
    v = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    assert sum(pipeline_normalisation(a), ()) == pytest.approx((0.1, 0.2, 0.3, 0.4, 0.5, 0.6))
    assert sum(pipeline_normalisation(v), ()) == pytest.approx((0.5,) * 3 + (0.25,) * 3)
    assert pipeline_normalisation(T.Compose([T.ToImage()])) is None
    image = np.full((8, 8, 3), 51, np.uint8)  # 0.2 in [0, 1] units
    out = apply(a, image)  # called as albumentations wants (image=...), not with a PIL image
    assert out.shape == (3, 8, 8) and out[0].mean().item() == pytest.approx((0.2 - 0.1) / 0.4, abs=0.01)
    assert apply(v, image)[2].mean().item() == pytest.approx((0.2 - 0.5) / 0.25, abs=0.01)


def test_mixup_with_a_pipeline_is_refused_in_one_line(course):
    p, out = _run(course, "--train-transform", "course_tf:train_tf", "--mixup", "0.2")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--train-transform" in p.stderr
    assert not out.exists()
