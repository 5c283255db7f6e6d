"""Promises that a realistic bug would break without any other test noticing.

- augment: colour jitter draws its brightness and contrast per sample, not once per batch;
- engine.optim: lookahead moves the slow weights toward the fast ones by ``1 - decay``,
  ``decay = max_decay * progress**3`` (airbench94), and the weights restart from them;
- engine.callbacks: the divergence warning needs ``patience`` updates *in a row* above the
  threshold: a streak broken by a calm update starts again;
- checkpoint: a save that fails half-way leaves the previous checkpoint in place, loadable,
  with no temporary file and no ``prev.pt`` shuffle.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from eva8_utils import augment as A
from eva8_utils import engine as E
from eva8_utils.checkpoint import load_checkpoint, save_checkpoint
from eva8_utils.errors import CheckpointError


def test_colour_jitter_draws_brightness_and_contrast_per_sample():
    n = 64
    aug = A.AugmentConfig(crop_padding=0, flip="none", cutout=0, jitter_p=1.0, brightness=0.4, contrast=0.4)
    p = A.sample_params(n, aug, (8, 8), torch.Generator().manual_seed(1))
    assert len(p["brightness"].unique()) == n and len(p["contrast"].unique()) == n
    assert 0.6 <= p["brightness"].min() and p["brightness"].max() <= 1.4
    flat = torch.full((n, 3, 8, 8), 0.5)  # flat images: contrast keeps the mean, brightness scales it
    out = A.apply_colour(flat, p)
    assert out.mean((1, 2, 3)) == pytest.approx((0.5 * p["brightness"]).clamp(0, 1), abs=1e-5)
    ramp = torch.linspace(0.2, 0.6, 64).view(1, 1, 8, 8).expand(n, 3, 8, 8).clone()
    spread = A.apply_colour(ramp, p).std((1, 2, 3)) / (ramp * p["brightness"].view(-1, 1, 1, 1)).std((1, 2, 3))
    assert spread == pytest.approx(p["contrast"], rel=1e-3)  # each image's own contrast factor


def test_lookahead_moves_the_slow_weights_by_one_minus_decay_and_restarts_from_them():
    model = nn.Linear(1, 1, bias=False)
    look = E.Lookahead(model, every=1, max_decay=0.8, start_step=0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    look.step(model, step=1, progress=0.5)  # the first visit copies the weights
    with torch.no_grad():
        model.weight.fill_(3.0)
    look.step(model, step=2, progress=0.5)
    decay = 0.8 * 0.5 ** 3
    expect = 1.0 + (1 - decay) * (3.0 - 1.0)  # slow.lerp_(fast, 1 - decay)
    assert model.weight.item() == pytest.approx(expect, rel=1e-6)
    assert look.slow["weight"].item() == pytest.approx(expect, rel=1e-6)
    with torch.no_grad():
        model.weight.fill_(10.0)
    look.sync(model)  # the end of an epoch: the weights are the slow ones
    assert model.weight.item() == pytest.approx(expect, rel=1e-6)


def test_the_divergence_streak_starts_again_after_a_calm_update():
    m = E.DivergenceMonitor(num_classes=10, factor=3.0, patience=3, beta=0.0)  # beta 0: no smoothing
    said = [m.update(v) for v in [1.0, 5.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0, 5.0, 1.0]]
    assert not any(said) and m.warning is None  # never 3 in a row
    said = [m.update(v) for v in [5.0, 5.0, 5.0]]
    assert said[:2] == [None, None] and said[2] is not None and "diverging" in said[2]


def test_a_checkpoint_save_that_fails_half_way_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1}, keep_previous=True)
    real_save = torch.save

    def half(obj, f, *args, **kwargs):
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()[: len(buf.getvalue()) // 2]  # the first half reached the disk, then it filled up
        if hasattr(f, "write"):
            f.write(data)
        else:
            with open(f, "wb") as fh:
                fh.write(data)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 2}, keep_previous=True)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file, no prev.pt yet
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "epoch": 2}, keep_previous=True)
    assert load_checkpoint(path.with_name("prev.pt"))["epoch"] == 1 and load_checkpoint(path)["epoch"] == 2


def test_a_truncated_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "epoch": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_a_text_or_picture_write_that_fails_half_way_keeps_the_previous_file(tmp_path, monkeypatch):
    """The other atomic writers (metrics.json, history.csv, report.md, predictions.csv through
    atomic_write_text; every PNG through rundir.save_figure): half the bytes written, then the
    disk fills up: the previous file is whole and no temporary file is left."""
    import pathlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eva8_utils.rundir import save_figure
    from eva8_utils.utils import atomic_write_text

    text = tmp_path / "metrics.json"
    atomic_write_text(text, '{"status": "running"}')
    real_write_text = pathlib.Path.write_text

    def half_text(self, data, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", half_text)
    with pytest.raises(OSError):
        atomic_write_text(text, '{"status": "done", "test_acc": 91.5}')
    monkeypatch.undo()
    assert text.read_text() == '{"status": "running"}'

    fig = plt.figure(figsize=(2, 2))
    png = tmp_path / "images" / "curves.png"
    save_figure(fig, png)
    before = png.read_bytes()
    real_savefig = type(fig).savefig

    def half_png(self, fname, *args, **kwargs):
        import io

        buf = io.BytesIO()
        real_savefig(self, buf, *args, **kwargs)
        with open(fname, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(fig), "savefig", half_png)
    with pytest.raises(OSError):
        save_figure(fig, png)
    monkeypatch.undo()
    plt.close(fig)
    assert png.read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["curves.png", "metrics.json"]
