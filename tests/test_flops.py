"""FLOPs per training image and MFU (eva8_utils.flops)."""

import pytest
import torch
import torch.nn as nn

from eva8_utils import flops as FL


def test_a_linear_layer_costs_two_flops_per_multiply_add_forward_and_again_for_its_weight_gradient():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    # forward 2 * 48 * 5 per image; backward: the weight gradient (the input needs none)
    assert FL.train_flops_per_image(model, 4) == 2 * (2 * 48 * 5)


def test_counting_leaves_the_model_untouched_and_resnet18_costs_about_three_forwards():
    from eva8_utils.models import create_model

    model = create_model("resnet18", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    per_image = FL.train_flops_per_image(model, 32)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert all(p.grad is None for p in model.parameters())
    forward = 2 * 0.556e9  # ResNet18 at 32x32: about 0.56 G multiply-adds forward
    assert 2.5 < per_image / forward < 3.1  # backward: about twice the forward (no input gradient at the stem)


def test_mfu_is_the_achieved_rate_over_the_cards_peak(monkeypatch):
    m = FL.utilisation(3e9, 50_000 * 20, 10.0, 989.4)
    assert m["train_tflops_per_s"] == pytest.approx(300.0) and m["mfu"] == pytest.approx(300 / 989.4, abs=1e-4)
    assert FL.utilisation(3e9, 1000, 1.0, 100.0, devices=2)["mfu"] == pytest.approx(3.0 / 200, abs=1e-4)
    assert "mfu" not in FL.utilisation(3e9, 1000, 1.0, None) and "train_tflops_per_s" not in FL.utilisation(3e9, 0, 0, 1)
    assert FL.peak_tflops(torch.device("cpu")) is None
    for name, peak in (("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H200", 989.4),
                       ("Tesla T4", 65.0), ("NVIDIA A100-SXM4-40GB", 312.0), ("Some New GPU", None)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert FL.peak_tflops(torch.device("cuda")) == peak, name
