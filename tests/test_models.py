import pytest
import torch
import torch.nn as nn

from eva8_utils.config import TrainConfig
from eva8_utils.errors import ConfigError
from eva8_utils.models import MODELS, count_parameters, create_model, model_from_config, register_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_finite_logits_of_the_right_shape(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_takes_64px_inputs_and_other_class_counts(name):
    cfg = TrainConfig(model=name)
    model = model_from_config(cfg, num_classes=200, image_size=64).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 200)


def test_resnet18_parameter_count():
    assert count_parameters(create_model("resnet18")) == 11_173_962


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_resnet_blocks_start_as_the_identity_and_learn_their_scale(norm):
    from eva8_utils.models.resnet import BasicBlock

    torch.manual_seed(0)
    model = create_model("resnet18", norm=norm)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    x = torch.randn(4, 64, 8, 8)
    block = model.layer1[1].train()  # identity shortcut: relu(0 * branch + x)
    torch.testing.assert_close(block(x), torch.relu(x))
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert all(b.bn2.weight.grad.abs().sum() > 0 for b in blocks)
    plain = create_model("resnet18", norm=norm, zero_init_residual=False)
    assert all(torch.count_nonzero(m.bn2.weight) > 0 for m in plain.modules() if isinstance(m, BasicBlock))


def test_resnet_layers_are_named_for_gradcam():
    model = create_model("resnet18")
    for name in ("layer1", "layer2", "layer3", "layer4"):
        assert isinstance(model.get_submodule(name), nn.Sequential)
    # layer3 is 8x8 on a 32x32 input
    feats = {}
    model.get_submodule("layer3").register_forward_hook(lambda m, i, o: feats.update(l3=o.shape))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert feats["l3"][-2:] == (8, 8)


def test_register_a_user_model():
    @register_model("tiny_test_net", cam_layer="conv")
    def tiny(num_classes=10):
        return nn.Sequential()

    try:
        assert "tiny_test_net" in MODELS and MODELS["tiny_test_net"].cam_layer == "conv"
        assert isinstance(create_model("tiny_test_net"), nn.Sequential)
    finally:
        MODELS.pop("tiny_test_net")


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        create_model("resnet19")
    assert "resnet18" in str(e.value) and "fastnet" in str(e.value)


def _count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "custom_resnet"])
@pytest.mark.parametrize("norm", ["batch", "group", "layer"])
def test_norm_choice_reaches_every_layer_including_shortcuts(name, norm):
    model = create_model(name, norm=norm, groups=4)
    n_bn, n_gn = _count(model, nn.BatchNorm2d), _count(model, nn.GroupNorm)
    n_conv = _count(model, nn.Conv2d)
    if norm == "batch":
        assert (n_bn, n_gn) == (n_conv, 0)  # one norm after every conv, shortcut convs included
    else:
        assert (n_bn, n_gn) == (0, n_conv)
        groups = {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
        assert groups == ({4} if norm == "group" else {1})
    # and it trains a step
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_norm_on_a_model_without_norm_choice_is_refused():
    with pytest.raises(ConfigError, match="--norm group is not supported by vit_tiny"):
        model_from_config(TrainConfig(model="vit_tiny", norm="group"), 10)


def test_dropout_is_applied_where_the_model_defines_it():
    model = create_model("resnet18", dropout=0.5)
    assert _count(model, nn.Dropout) == 1
    model.train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)  # dropout active in train mode
    model.eval()
    assert torch.allclose(model(x), model(x))


def test_fastnet_whitening_init_whitens_patches():
    torch.manual_seed(0)
    # correlated "images": smooth noise
    x = torch.nn.functional.avg_pool2d(torch.randn(200, 3, 34, 34), 3, stride=1)
    model = create_model("fastnet")
    model.data_init(x)
    out = torch.nn.functional.conv2d(x, model.whiten.weight[:12])  # the + half of the filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = flat.T @ flat / flat.shape[0]
    # whitened: covariance close to identity (eps keeps the smallest directions a bit below 1)
    assert torch.allclose(torch.diag(cov), torch.ones(12), atol=0.1)
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 0.05


def test_vit_tiny_forward_and_cam_reshape():
    model = create_model("vit_tiny").eval()
    tokens = torch.randn(2, 65, 192)
    fmap = model.cam_reshape(tokens)
    assert fmap.shape == (2, 192, 8, 8)
    assert torch.equal(fmap[:, :, 0, 1], tokens[:, 2, :])  # token 1+1 -> row 0, col 1
