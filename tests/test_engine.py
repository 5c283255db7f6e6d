import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from eva8_utils import engine as E
from eva8_utils.data import DeviceLoader
from eva8_utils.lr_finder import lr_range_test

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
    res = E.train_one_epoch(model, loader, opt, device=torch.device("cpu"), progress=False, log_every=2)
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
        res = E.train_one_epoch(model, loader, opt, device=torch.device("cpu"), l1=l1, progress=False)
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
    E.train_one_epoch(model, loader, opt, device=torch.device("cpu"), grad_clip=0.5, grad_clip_mode=mode,
                      progress=False)
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


def test_tta_flip_averages_the_mirror():
    model = Linear().eval()
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        out = E.tta_logits(model, x, "flip")
        assert torch.allclose(out, 0.5 * model(x) + 0.5 * model(x.flip(-1)))
        assert E.tta_logits(model, x, "flip_translate").shape == (3, 5)


def test_lr_finder_restores_weights_bit_for_bit_and_suggests_inside_the_sweep():
    torch.manual_seed(0)
    x, y = _data(256)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    loader = DeviceLoader(x, y, batch_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, train=True)
    opt = E.make_optimizer(model, "sgd", lr=0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = opt.state_dict()
    rng = torch.get_rng_state()
    lrs, losses, suggestion = lr_range_test(model, loader, opt, device=torch.device("cpu"), start_lr=1e-4,
                                            end_lr=100, num_iter=60)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.state_dict()["state"] == opt_before["state"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert lrs[0] == pytest.approx(1e-4) and all(a < b for a, b in zip(lrs, lrs[1:]))
    assert lrs[0] <= suggestion <= lrs[-1]
    assert len(lrs) < 60 or max(losses) > 2 * min(losses)  # it diverged or swept everything
    assert all(math.isfinite(v) for v in losses)


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


def test_fit_leaves_a_finished_run_folder_for_notebook_users(tmp_path):
    """fit alone (no CLI) must not leave metrics.json saying "running" once training is over."""
    import json

    from eva8_utils.config import TrainConfig

    torch.manual_seed(0)
    x, y = _data(n=40)
    train = DeviceLoader(x[:32], y[:32], batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, train=True)
    test = DeviceLoader(x[32:], y[32:], batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    cfg = TrainConfig(dataset="shapes", epochs=2, batch_size=16, progress=False, tta="flip", scheduler="none",
                      lr=0.01, channels_last=False, precision="fp32")
    model = Linear()
    res = E.fit(model, train, test, E.make_optimizer(model, "sgd", lr=0.01), None, cfg,
                device=torch.device("cpu"), run_dir=tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "done" and m["epochs"] == 2
    assert m["test_acc"] == res["final"]["test_acc"]
    assert m["test_acc_tta"] == res["tta"]["test_acc"] and m["tta"] == "flip"
