import copy
import math
import platform
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from eva8_utils import engine as E
from eva8_utils.data import DeviceLoader
from eva8_utils.lr_finder import lr_range_test, suggest_lr

# Schedule tests step schedulers without optimizer steps on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")


class Linear(nn.Module):
    def __init__(self, d=3 * 4 * 4, k=5):
        super().__init__()
        self.fc = nn.Linear(d, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _data(n=103, seed=0, k=5):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), g.integers(0, k, n)


def test_reported_test_loss_is_the_true_per_sample_mean():
    torch.manual_seed(0)
    x, y = _data()
    model = Linear()
    loader = DeviceLoader(x, y, batch_size=10, mean=(0.5,) * 3, std=(0.25,) * 3)  # last batch of 3
    res = E.evaluate(model, loader, device=torch.device("cpu"))
    xb = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits = model(xb)
    per_sample = F.cross_entropy(logits, torch.from_numpy(y), reduction="none")
    assert res["total"] == 103
    assert res["test_loss"] == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert res["correct"] == int((logits.argmax(1) == torch.from_numpy(y)).sum())
    # the classic mistake (sum of batch means / N) would be off by ~the batch size
    batch_means = [per_sample[i:i + 10].mean().item() for i in range(0, 103, 10)]
    assert abs(sum(batch_means) / 103 - res["test_loss"]) > 0.5 * res["test_loss"]


def test_evaluate_restores_train_mode():
    model = Linear().train()
    x, y = _data(20)
    E.evaluate(model, DeviceLoader(x, y, batch_size=8, mean=(0,) * 3, std=(1,) * 3), device=torch.device("cpu"))
    assert model.training


def test_train_one_epoch_reports_per_sample_loss_and_one_lr_per_step():
    torch.manual_seed(0)
    x, y = _data(50)
    model = Linear()
    loader = DeviceLoader(x, y, batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, train=True, seed=1)
    opt = E.make_optimizer(model, "sgd", lr=0.0)  # lr 0: the weights stay, so losses can be checked
    res = E.train_one_epoch(model, loader, opt, torch.device("cpu"), step=E.Step(log_every=2), progress=False)
    assert res["batches"] == 4 and len(res["lrs"]) == 4 and len(res["step_losses"]) == 4
    sizes = [16, 16, 16, 2]
    expect = sum(l * s for l, s in zip(res["step_losses"], sizes)) / 50
    assert res["train_loss"] == pytest.approx(expect, rel=1e-6)
    assert res["samples"] == 50


def test_l1_changes_the_gradient_by_exactly_lambda_sign_w():
    torch.manual_seed(0)
    x, y = _data(32)
    lam = 0.01
    grads = {}
    for l1 in (0.0, lam):
        model = Linear()
        torch.manual_seed(1)
        model.load_state_dict(Linear().state_dict())
        loader = DeviceLoader(x, y, batch_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, train=True, seed=1)
        opt = E.make_optimizer(model, "sgd", lr=0.0, momentum=0.0, weight_decay=0.0)
        res = E.train_one_epoch(model, loader, opt, torch.device("cpu"), callbacks=[E.L1Penalty(l1)] if l1 else [],
                                progress=False)
        grads[l1] = (model.fc.weight.grad.clone(), model.fc.bias.grad.clone(), res, model.fc.weight.detach())
    gw0, gb0, r0, w = grads[0.0]
    gw1, gb1, r1, _ = grads[lam]
    assert torch.allclose(gw1 - gw0, lam * torch.sign(w), atol=1e-7)
    assert torch.equal(gb1, gb0)  # biases carry no L1
    assert r1["train_loss"] == pytest.approx(r0["train_loss"], rel=1e-6)  # reported apart from the data loss
    assert r1["l1_loss"] == pytest.approx(lam * w.abs().sum().item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_gradient_clipping_bounds_the_gradients(mode):
    torch.manual_seed(0)
    x, y = _data(32)
    model = Linear()
    loader = DeviceLoader(x, y, batch_size=32, mean=(0.5,) * 3, std=(0.01,) * 3, train=True)  # huge inputs
    opt = E.make_optimizer(model, "sgd", lr=0.0, momentum=0.0, weight_decay=0.0)
    E.train_one_epoch(model, loader, opt, torch.device("cpu"), callbacks=[E.GradClip(0.5, mode)], progress=False)
    g = [p.grad for p in model.parameters()]
    if mode == "norm":
        total = torch.sqrt(sum((t ** 2).sum() for t in g))
        assert total == pytest.approx(0.5, rel=1e-4)
    else:
        assert max(t.abs().max() for t in g) <= 0.5 + 1e-7
        assert max(t.abs().max() for t in g) == pytest.approx(0.5)


def _opt(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))], lr=lr)


def test_plateau_reduces_the_lr_only_after_patience_epochs_without_improvement():
    opt = _opt()
    s = E.Schedule(opt, "plateau", epochs=20, steps_per_epoch=5, plateau_patience=2, plateau_factor=0.5,
                   plateau_threshold=0.0)
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]
    lrs = []
    for loss in losses:
        for _ in range(5):
            s.after_batch()  # per-batch calls must not change a plateau schedule
        s.after_epoch(loss)
        lrs.append(s.lr)
    # best 0.9 at epoch 2; epochs 3, 4, 5 are not better -> drop after the third (num_bad > patience)
    assert lrs[:4] == [1.0, 1.0, 1.0, 1.0]
    assert lrs[4] == 0.5
    # 0.8 improves at epoch 6; three more bad epochs (7, 8, 9) -> next drop at epoch 9
    assert lrs[5:8] == [0.5, 0.5, 0.5]
    assert lrs[8] == 0.25


def test_onecycle_is_stepped_per_batch_and_ends_low():
    opt = _opt(0.4)
    s = E.Schedule(opt, "onecycle", epochs=2, steps_per_epoch=10, pct_start=0.25, div_factor=10,
                   final_div_factor=100)
    lrs = []
    for _ in range(20):
        lrs.append(s.lr)
        s.after_batch()
    assert lrs[0] == pytest.approx(0.04)
    assert max(lrs) == pytest.approx(0.4, rel=1e-3) and int(np.argmax(lrs)) in (4, 5)
    assert lrs[-1] < 0.01
    assert len(set(np.round(lrs[:10], 8))) == 10  # changes every batch


def test_warmup_then_step_decay_per_epoch_and_groups_keep_their_ratio():
    w, b = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([dict(params=[w], lr=0.1), dict(params=[b], lr=1.0)])
    s = E.Schedule(opt, "step", epochs=6, steps_per_epoch=4, warmup_epochs=1, step_size=2, step_gamma=0.1)
    seen = []
    for _ in range(24):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        s.after_batch()
    first = [a for a, _ in seen]
    assert first[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])       # linear warm-up over epoch 1
    assert first[4:8] == pytest.approx([0.1] * 4)                      # epoch 2
    assert first[8:16] == pytest.approx([0.01] * 8)                    # epochs 3-4
    assert first[16:] == pytest.approx([0.001] * 8)
    assert all(bb == pytest.approx(10 * a) for a, bb in seen)


def test_cosine_and_exponential_shapes():
    opt = _opt(1.0)
    s = E.Schedule(opt, "cosine", epochs=2, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        lrs.append(s.lr)
        s.after_batch()
    assert lrs[0] == 1.0 and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[5] == pytest.approx(0.5)
    opt = _opt(1.0)
    s = E.Schedule(opt, "exponential", epochs=3, steps_per_epoch=2, exp_gamma=0.5)
    lrs = []
    for _ in range(6):
        lrs.append(s.lr)
        s.after_batch()
    assert lrs == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])


def test_schedule_state_round_trip():
    opt = _opt(0.4)
    s = E.Schedule(opt, "onecycle", epochs=2, steps_per_epoch=10)
    for _ in range(7):
        s.after_batch()
    state = s.state_dict()
    opt2 = _opt(0.4)
    s2 = E.Schedule(opt2, "onecycle", epochs=2, steps_per_epoch=10)
    opt2.load_state_dict(opt.state_dict())
    s2.load_state_dict(state)
    for _ in range(5):
        s.after_batch()
        s2.after_batch()
        assert s.lr == s2.lr
    with pytest.raises(ValueError, match="schedule mismatch"):
        E.Schedule(_opt(), "onecycle", epochs=3, steps_per_epoch=10).load_state_dict(state)


def test_bias_lr_scale_splits_parameter_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = E.make_optimizer(model, "sgd", lr=0.1, weight_decay=1e-2, bias_lr_scale=10)
    g0, g1 = opt.param_groups
    assert len(g0["params"]) == 1 and g0["lr"] == 0.1 and g0["weight_decay"] == 1e-2
    assert len(g1["params"]) == 3 and g1["lr"] == pytest.approx(1.0) and g1["weight_decay"] == pytest.approx(1e-3)


def test_tta_matches_a_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(E.tta_logits(model, x, "none"), model(x))
        flip = 0.5 * model(x) + 0.5 * model(x.flip(-1))
        assert torch.allclose(E.tta_logits(model, x, "flip"), flip)
        # by hand: reflect-pad by one pixel, take the up-left and the down-right shifted crops
        p = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left, down_right = p[..., 0:6, 0:6], p[..., 2:8, 2:8]
        assert torch.equal(up_left[..., 1:, 1:], x[..., :-1, :-1])       # content moved down-right by one
        assert torch.equal(down_right[..., :-1, :-1], x[..., 1:, 1:])    # content moved up-left by one
        views = [0.5 * model(v) + 0.5 * model(v.flip(-1)) for v in (up_left, down_right)]
        expected = 0.5 * flip + 0.5 * (views[0] + views[1]) / 2
        got = E.tta_logits(model, x, "flip_translate")
        assert torch.allclose(got, expected, atol=1e-6)
        # the translated views matter: dropping them changes the result
        assert not torch.allclose(got, flip, atol=1e-4)
    with pytest.raises(ValueError, match="unknown TTA mode"):
        E.tta_logits(model, x, "rotate")


def test_lr_finder_restores_weights_bit_for_bit_and_suggests_on_the_descent():
    torch.manual_seed(0)
    x, y = _data(256)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    loader = DeviceLoader(x, y, batch_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, train=True)
    opt = E.make_optimizer(model, "sgd", lr=0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = opt.state_dict()
    rng = torch.get_rng_state()
    res = lr_range_test(model, loader, opt, device=torch.device("cpu"), start_lr=1e-4, end_lr=100, num_iter=60)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.state_dict()["state"] == opt_before["state"]
    assert torch.equal(torch.get_rng_state(), rng)
    lrs, losses = res.lrs, res.losses
    assert lrs[0] == pytest.approx(1e-4) and all(a < b for a, b in zip(lrs, lrs[1:]))
    assert all(math.isfinite(v) for v in losses)
    # a real tiny run descends: the suggestion lies strictly inside the sweep, where the loss is falling
    assert res.suggestion is not None and lrs[0] < res.suggestion < lrs[-1]
    i = lrs.index(res.suggestion)
    assert i < int(np.argmin(losses)) and losses[i + 1] < losses[i - 1]
    assert "suggested LR" in res.describe()


def _curve(kind, n=100):
    """Synthetic smoothed-loss curves over an LR sweep 1e-6..10 (log-spaced)."""
    lrs = np.logspace(-6, 1, n)
    t = np.log10(lrs)
    if kind == "u":             # flat, a descent centred at 1e-2, then divergence
        loss = 2.3 - 1.5 / (1 + np.exp(-(t + 2) * 4)) + np.where(t > -0.5, (t + 0.5) ** 2 * 3, 0)
    elif kind == "flat_then_dip":  # flat for most of the sweep, a dip near 0.2 (the reported case)
        loss = 2.3 - 0.8 * np.exp(-((t - np.log10(0.2)) ** 2) / 0.05)
    elif kind == "noisy_start":  # the U curve, after an EMA start-up that falls steeply over the first points
        loss = 2.3 - 1.5 / (1 + np.exp(-(t + 2) * 4)) + np.where(t > -0.5, (t + 0.5) ** 2 * 3, 0)
        loss[:4] += [0.9, 0.5, 0.2, 0.05]
    elif kind == "early_minimum":  # lowest at the start, then only rising
        loss = 2.0 + 0.3 * (t + 6)
    else:                       # no descent: flat with a little wobble
        loss = 2.3 + 0.001 * np.sin(t * 7)
    return lrs.tolist(), loss.tolist()


def test_lr_suggestion_on_known_curves():
    lrs, losses = _curve("u")
    s, note = suggest_lr(lrs, losses)
    assert 10 ** -2.3 < s < 10 ** -1.7 and note == ""   # the steepest point of the descent (1e-2)
    lrs, losses = _curve("noisy_start")
    s, note = suggest_lr(lrs, losses)
    assert 10 ** -2.3 < s < 10 ** -1.7                  # not fooled by the first, noisy points
    lrs, losses = _curve("flat_then_dip")
    s, note = suggest_lr(lrs, losses)
    assert 0.05 < s < 0.2 and s != lrs[0]               # on the way down to the dip, never the first LR
    for kind in ("early_minimum", "none"):
        lrs, losses = _curve(kind)
        s, note = suggest_lr(lrs, losses)
        assert s is None and note, kind                 # no descent: no suggestion, and why
    assert "lowest at the start" in suggest_lr(*_curve("early_minimum"))[1]
    assert "never fell 2% below its start" in suggest_lr(*_curve("none"))[1]


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_onecycle_handles_very_short_runs(steps):
    opt = _opt(1.0)
    s = E.Schedule(opt, "onecycle", epochs=1, steps_per_epoch=steps, div_factor=10, final_div_factor=100)
    lrs = []
    for _ in range(steps):
        lrs.append(s.lr)
        s.after_batch()
    assert lrs[0] == pytest.approx(0.1)
    assert all(math.isfinite(v) and 0 < v <= 1.0 for v in lrs)
    if steps >= 3:
        assert max(lrs) == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.001)


def test_onecycle_cycles_momentum_inversely_when_asked():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=1.0, momentum=0.9)
    s = E.Schedule(opt, "onecycle", epochs=1, steps_per_epoch=20, pct_start=0.25, cycle_momentum=True)
    moms, lrs = [], []
    for _ in range(20):
        moms.append(opt.param_groups[0]["momentum"])
        lrs.append(s.lr)
        s.after_batch()
    assert moms[0] == pytest.approx(0.95) and moms[5] == pytest.approx(0.85)
    assert int(np.argmin(moms)) == int(np.argmax(lrs)) and moms[-1] > 0.94


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "custom_resnet", "fastnet", "vit_tiny"])
def test_every_registered_model_trains_with_the_engine(name):
    from eva8_utils.data import make_shapes
    from eva8_utils.models import create_model

    torch.manual_seed(0)
    s = make_shapes(16, 8, seed=0)
    model = create_model(name)
    loader = DeviceLoader(s.x_train, s.y_train, batch_size=8, mean=s.mean, std=s.std, train=True)
    opt = E.make_optimizer(model, "sgd", lr=0.01)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    res = E.train_one_epoch(model, loader, opt, device=torch.device("cpu"), progress=False)
    assert res["batches"] == 2 and math.isfinite(res["train_loss"])
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def _tiny_fit_setup(n=48, seed=0, dropout=False):
    """Fixed data; ``seed`` only changes the model's initial weights."""
    torch.manual_seed(seed)
    x, y = _data(n=n + 16, seed=0)
    train = DeviceLoader(x[:n], y[:n], batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, train=True, seed=3)
    test = DeviceLoader(x[n:], y[n:], batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Dropout(0.3) if dropout else nn.Identity(), nn.Linear(32, 5))
    opt = E.make_optimizer(model, "sgd", lr=0.05)
    sched = E.Schedule(opt, "onecycle", epochs=3, steps_per_epoch=len(train))
    return model, train, test, opt, sched


class _Recorder(E.Callback):
    def __init__(self, grab_at=None, objects=None):
        self.rows, self.starts, self.grab_at, self.grabbed, self.objects = [], [], grab_at, None, objects

    def before_epoch(self, state):
        self.starts.append(state.epoch)

    def after_step(self, state):
        if (state.epoch, state.batch) == self.grab_at:
            model, opt, sched = self.objects
            self.grabbed = {"partial": state.snapshot(), "model": copy.deepcopy(model.state_dict()),
                            "opt": copy.deepcopy(opt.state_dict()), "sched": copy.deepcopy(sched.state_dict())}

    def after_epoch(self, state):
        self.rows.append((state.epoch, state.row["test_acc"]))


def test_fit_calls_the_hooks_and_knows_no_config_or_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, train, test, opt, sched = _tiny_fit_setup()
    rec = _Recorder()
    res = E.fit(model, train, test, opt, epochs=3, step=E.Step(schedule=sched), tta="flip", progress=False,
                callbacks=[rec])
    assert rec.starts == [1, 2, 3] and [e for e, _ in rec.rows] == [1, 2, 3]
    assert res["history"]["epoch"] == [1, 2, 3] and len(res["history"]["steps"]) == 3 * len(train)
    assert res["final"]["test_acc"] == res["history"]["test_acc"][-1] and res["tta"]["total"] == 16
    assert list(tmp_path.iterdir()) == []  # fit writes nothing
    import inspect
    assert "cfg" not in inspect.signature(E.fit).parameters and "run_dir" not in inspect.signature(E.fit).parameters


@pytest.mark.parametrize("dropout", [False, True])
def test_an_epoch_continued_from_the_middle_equals_a_straight_run(dropout):
    """What a mid-epoch checkpoint holds is enough to continue at the next batch, bit for bit
    (with dropout, only because the RNG state is restored)."""
    model, train, test, opt, sched = _tiny_fit_setup(dropout=dropout)
    straight = E.fit(model, train, test, opt, epochs=3, step=E.Step(schedule=sched), progress=False, seed=5)["history"]

    model, train, test, opt, sched = _tiny_fit_setup(dropout=dropout)
    rec = _Recorder(grab_at=(2, 3), objects=(model, opt, sched))
    E.fit(model, train, test, opt, epochs=3, step=E.Step(schedule=sched), progress=False, seed=5, callbacks=[rec])
    g = rec.grabbed
    assert g["partial"]["batch"] == 3 and len(g["partial"]["lrs"]) == 3
    model2, train2, test2, opt2, sched2 = _tiny_fit_setup(seed=9, dropout=dropout)  # other weights, same shapes
    model2.load_state_dict(g["model"])
    opt2.load_state_dict(g["opt"])
    sched2.load_state_dict(g["sched"])
    def first_epoch():
        h = {k: v[:1] for k, v in straight.items() if k != "steps" and not k.startswith("_")}
        h["steps"] = straight["steps"][:len(train)]
        return h

    resumed = E.fit(model2, train2, test2, opt2, epochs=3, step=E.Step(schedule=sched2), progress=False, seed=5,
                    resume=E.Resume(1, first_epoch(), g["partial"]))["history"]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert resumed[key] == straight[key], key
    assert resumed["steps"] == straight["steps"]
    if dropout:  # without the saved RNG state the continued epoch differs
        model3, train3, test3, opt3, sched3 = _tiny_fit_setup(seed=9, dropout=True)
        model3.load_state_dict(g["model"])
        opt3.load_state_dict(g["opt"])
        sched3.load_state_dict(g["sched"])
        part = dict(g["partial"], rng=None)
        other = E.fit(model3, train3, test3, opt3, epochs=3, step=E.Step(schedule=sched3), progress=False, seed=5,
                      resume=E.Resume(1, first_epoch(), part))["history"]
        assert other["train_loss"][1] != straight["train_loss"][1]


# --------------------------------------------------------------------------- precision
@pytest.mark.parametrize("cap,name,scaler", [((7, 5), "fp16", True), ((7, 0), "fp16", True), ((8, 0), "bf16", False),
                                             ((8, 6), "bf16", False), ((9, 0), "bf16", False),
                                             ((6, 1), "fp32", False)])
def test_auto_precision_follows_the_compute_capability(monkeypatch, cap, name, scaler):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers: not asked
    p = E.choose_precision(torch.device("cuda"), "auto")
    assert (p.name, p.scaler) == (name, scaler)
    assert f"compute capability {cap[0]}.{cap[1]}" in p.reason


def test_precision_on_cpu_and_when_asked(monkeypatch):
    monkeypatch.setattr(E.precision, "cpu_has_fast_bf16", lambda: True)
    assert E.choose_precision(torch.device("cpu")).name == "bf16"
    monkeypatch.setattr(E.precision, "cpu_has_fast_bf16", lambda: False)
    assert E.choose_precision(torch.device("cpu")).name == "fp32"
    assert E.choose_precision(torch.device("mps")).name == "fp32"
    assert E.choose_precision(torch.device("cpu"), "fp16").scaler is True
    assert E.choose_precision(torch.device("cpu"), "bf16").dtype == torch.bfloat16
    assert E.choose_precision(torch.device("cuda"), "fp32").dtype is None


def test_fp16_with_a_grad_scaler_trains_on_cpu():
    p = E.choose_precision(torch.device("cpu"), "fp16")
    scaler = E.make_scaler(torch.device("cpu"), p)
    assert isinstance(scaler, torch.amp.GradScaler)
    model, train, test, opt, sched = _tiny_fit_setup()
    before = [q.detach().clone() for q in model.parameters()]
    start_scale = scaler.get_scale()
    res = E.train_one_epoch(model, train, opt, torch.device("cpu"), step=E.Step(amp_dtype=p.dtype, scaler=scaler),
                            progress=False)
    assert math.isfinite(res["train_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() <= start_scale  # the scaler ran (it only halves on overflow, grows after 2000 steps)
    assert scaler._scale is not None


# --------------------------------------------------------------------------- optimizers
def test_muon_groups_and_update():
    from eva8_utils.models import create_model

    model = create_model("fastnet", width=0.25, whiten_bias_epochs=3)
    opt = E.make_optimizer(model, "muon", lr=0.24, momentum=0.85, weight_decay=0.01, bias_lr_scale=400,
                           head_lr_scale=7, muon_momentum=0.6)
    muon, head, biases = opt.param_groups
    assert muon["muon"] and all(p.ndim == 4 for p in muon["params"]) and muon["weight_decay"] == 0
    assert head["params"] == [model.head.weight] and head["lr"] == pytest.approx(0.24 * 7)
    assert any(p is model.whiten.bias for p in biases["params"])  # a vector cannot be orthogonalised
    assert muon["momentum"] == 0.6 and biases["momentum"] == 0.85
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    w = model.block1.conv1.weight
    opt.step()
    assert w.norm().item() == pytest.approx(math.sqrt(w.shape[0]) * 1.0, rel=0.2)  # renormalised, then one step


def test_a_frozen_parameter_skips_its_backward_and_changes_no_other_number():
    """fastnet's whitening bias, frozen for the epoch: autograd does not compute the gradients
    that only fed it, the bias keeps its value and its flag, and every other parameter ends where
    a run that trains the bias but puts it back after every step ends (the old way's numbers)."""
    from eva8_utils.models import create_model

    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (32, 16, 16, 3), dtype=torch.uint8), torch.randint(0, 10, (32,))
    train = DeviceLoader(x, y, batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, train=True, seed=3)
    base = create_model("fastnet", width=0.25, whiten_bias_epochs=1)
    with torch.no_grad():
        base.whiten.bias.normal_()
    frozen_model, reference = copy.deepcopy(base), copy.deepcopy(base)
    bias0 = base.whiten.bias.detach().clone()
    seen = []
    frozen_model.whiten.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    opt = E.make_optimizer(frozen_model, "sgd", lr=0.05, weight_decay=0.01)
    E.train_one_epoch(frozen_model, train, opt, torch.device("cpu"), progress=False,
                      callbacks=[E.FreezeParameters(lambda epoch: frozen_model.frozen_parameters(2))])
    assert seen == [False] * 4  # nothing upstream of block1.conv1's input needs a gradient
    assert frozen_model.whiten.bias.requires_grad and torch.equal(frozen_model.whiten.bias, bias0)

    ref_opt = E.make_optimizer(reference, "sgd", lr=0.05, weight_decay=0.01)

    class PutBack(E.Callback):
        def after_step(self, state):
            with torch.no_grad():
                reference.whiten.bias.copy_(bias0)

    E.train_one_epoch(reference, train, ref_opt, torch.device("cpu"), progress=False, callbacks=[PutBack()])
    moved = 0
    for (name, a), b in zip(frozen_model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
        moved += not torch.equal(a, base.state_dict()[name])
    assert moved > 10  # the epoch trained the rest


def test_newton_schulz_orthogonalises():
    torch.manual_seed(0)
    g = torch.randn(64, 200)
    s = torch.linalg.svdvals(E.newton_schulz(g, steps=5).float())
    assert s.min() > 0.5 and s.max() < 1.5  # Muon's quintic pushes every singular value toward 1
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 2  # it had to do something


def test_newton_schulz_runs_in_bf16_only_where_the_precision_rule_finds_it_fast(monkeypatch):
    """Muon's orthogonalisation follows the precision rule: fp32 where bf16 would be emulated
    (a T4, a CPU without AVX512-BF16/AMX), bf16 where it is native. Measured against the same
    iteration in float64."""
    torch.manual_seed(0)
    g = torch.randn(64, 200)

    def reference(x, steps=3):
        a, b, c = 3.4445, -4.7750, 2.0315
        x = (x / x.norm()).double()
        for _ in range(steps):
            A = x @ x.T
            x = a * x + (b * A + c * A @ A) @ x
        return x.float()

    errors = {}
    for fast in (False, True):
        E.fast_bf16.cache_clear()
        monkeypatch.setattr(E.precision, "cpu_has_fast_bf16", lambda fast=fast: fast)
        errors[fast] = (E.newton_schulz(g) - reference(g)).abs().max().item()
    assert errors[False] < 1e-5      # fp32
    assert errors[True] > 1e-3       # bf16 (8 bits of mantissa)
    for cap, fast in (((7, 5), False), ((8, 0), True)):   # a T4, an A100
        E.fast_bf16.cache_clear()
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        assert E.fast_bf16(torch.device("cuda")) is fast
    E.fast_bf16.cache_clear()

def test_linear_schedule_decays_to_zero():
    opt = _opt(1.0)
    s = E.Schedule(opt, "linear", epochs=2, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        lrs.append(s.lr)
        s.after_batch()
    assert lrs == pytest.approx([1 - i / 10 for i in range(10)])


def test_whiten_bias_lr_linear_falls_to_zero_over_its_epochs_and_resumes_exactly():
    """--whiten-bias-lr linear (airbench94_muon): the whitening bias gets a group of its own with the
    settings of the group it would join, its LR falls from its start linearly to 0 over its 3 epochs,
    and every other group keeps the run's schedule; a restored schedule continues the same numbers."""
    from eva8_utils.models import create_model, get_spec

    for name, join in (("muon", 2), ("sgd", 0)):  # Muon: with the other biases; SGD: the base-LR weights group
        model = create_model("fastnet", width=0.25, whiten_bias_epochs=3, whiten_bias_lr="linear")
        opt = E.make_optimizer(model, name, lr=0.2, momentum=0.85, weight_decay=0.01, bias_lr_scale=400,
                               head_lr_scale=7, muon_momentum=0.6, hints=get_spec("fastnet").param_hints(model))
        alone = opt.param_groups[-1]
        assert alone["params"] == [model.whiten.bias] and alone["zero_after_epochs"] == 3
        assert not any(p is model.whiten.bias for g in opt.param_groups[:-1] for p in g["params"])
        like = opt.param_groups[join]
        assert (alone["lr"], alone["weight_decay"]) == (like["lr"], like["weight_decay"])
        s = E.Schedule(opt, "linear", epochs=10, steps_per_epoch=4)
        lrs = []
        for _ in range(20):
            lrs.append([g["lr"] for g in opt.param_groups])
            s.after_batch()
        start = alone["initial_lr"]
        assert [r[-1] for r in lrs] == pytest.approx([start * max(0.0, 1 - i / 12) for i in range(20)])
        assert lrs[11][-1] > 0 and lrs[12][-1] == 0  # 0 from the first step of epoch 4 on
        assert [r[join] for r in lrs] == pytest.approx([like["initial_lr"] * (1 - i / 40) for i in range(20)])

        def build():
            m = create_model("fastnet", width=0.25, whiten_bias_epochs=3, whiten_bias_lr="linear")
            o = E.make_optimizer(m, name, lr=0.2, momentum=0.85, weight_decay=0.01, bias_lr_scale=400,
                                 head_lr_scale=7, muon_momentum=0.6, hints=get_spec("fastnet").param_hints(m))
            return o, E.Schedule(o, "linear", epochs=10, steps_per_epoch=4)

        first, s1 = build()
        for _ in range(6):  # stopped in the middle of the bias's decay
            s1.after_batch()
        again, s2 = build()
        again.load_state_dict(first.state_dict())  # as a resumed run restores both
        s2.load_state_dict(s1.state_dict())
        for i in range(6, 15):
            assert [g["lr"] for g in again.param_groups] == pytest.approx(lrs[i])
            s2.after_batch()

    plain = create_model("fastnet", width=0.25, whiten_bias_epochs=3)  # the default: the run's schedule
    hints = get_spec("fastnet").param_hints(plain)
    assert all("zero_after_epochs" not in g for g in E.make_optimizer(plain, "muon", lr=0.2, hints=hints).param_groups)
    with pytest.raises(ValueError, match="whiten_bias_epochs >= 1"):
        create_model("fastnet", whiten_bias_lr="linear")


def test_ema_follows_the_formula_and_averages_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = E.make_ema(model, 0.9)
    expect = None
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.train()(torch.randn(8, 4))  # moves the BatchNorm running mean
        ema.update_parameters(model)
        # the first update copies the weights, later ones move 10% toward them
        expect = [p.detach().clone() if expect is None else 0.9 * e + 0.1 * p.detach()
                  for e, p in zip(expect or [None] * 2, model.parameters())]
    for e, p in zip(expect, ema.module.parameters()):
        assert torch.allclose(e, p, atol=1e-6)
    rm_model, rm_ema = model[1].running_mean, ema.module[1].running_mean
    assert not torch.equal(rm_model, rm_ema) and rm_ema.abs().sum() > 0  # averaged, not copied or frozen


# --------------------------------------------------------------------------- soft targets, divergence
def test_train_accuracy_under_soft_targets_is_the_target_mass_on_the_predicted_class():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]]) + 0 * self.w

    class Loader:
        def __len__(self):
            return 1

        def __iter__(self):
            yield torch.zeros(2, 3, 4, 4), torch.tensor([[0.7, 0.3, 0.0], [0.6, 0.0, 0.4]])

    model = Fixed()
    res = E.train_one_epoch(model, Loader(), torch.optim.SGD(model.parameters(), lr=0.0),
                            device=torch.device("cpu"), progress=False)
    assert res["train_acc"] == pytest.approx(100 * (0.7 + 0.0) / 2)  # predicted 0 (mass 0.7) and 1 (mass 0)


def test_divergence_monitor_warns_once_with_a_hint():
    m = E.DivergenceMonitor(num_classes=10, factor=3.0, patience=3)
    said = [m.update(v) for v in [2.3, 2.2, 2.0] + [9.0] * 12]
    warnings_said = [s for s in said if s]
    assert len(warnings_said) == 1 and "diverging" in warnings_said[0] and "lower --lr" in warnings_said[0]
    calm = E.DivergenceMonitor(num_classes=10)
    assert not any(calm.update(v) for v in np.linspace(2.3, 0.5, 30))
    assert calm.end_epoch(1, 80.0) is None
    chance = E.DivergenceMonitor(num_classes=10)
    for v in np.linspace(2.3, 2.6, 10):
        chance.update(v)
    assert "still at chance" in chance.end_epoch(1, 10.5)


_FAULTS = """
import resource, sys, torch
from eva8_utils.config import TrainConfig
from eva8_utils.experiment import build
if sys.argv[1] == "1":
    build(TrainConfig(dataset="shapes", model="fastnet", device="cpu", shapes_train=64, shapes_test=16,
                      batch_size=32, epochs=1, analysis=False, progress=False))
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    x = torch.ones(16 * 2**20); del x  # 64 MB, as large as a training step's activations
before = faults()
for _ in range(5):
    x = torch.ones(16 * 2**20); del x
print(faults() - before)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_building_an_experiment_leaves_the_processs_allocator_alone():
    """A library changes no process-wide state: after build(), freed memory still goes back
    to the OS as glibc's default has it (a fresh mmap, faulted in page by page, every time)."""
    from conftest import HANG_S, ROOT, cli_env

    def faults(build: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS, build], cwd=ROOT, env=cli_env(), capture_output=True,
                             text=True, timeout=HANG_S)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    pages = 5 * 64 * 2**20 // resource.getpagesize()
    assert faults("0") > 0.9 * pages
    assert faults("1") > 0.9 * pages
