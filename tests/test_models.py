import numpy as np
import pytest
import torch
import torch.nn as nn

from eva8_utils.config import TrainConfig
from eva8_utils.errors import ConfigError
from eva8_utils.models import MODELS, count_parameters, create_model, get_spec, model_options, register_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_finite_logits_of_the_right_shape(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_takes_64px_inputs_and_other_class_counts(name):
    options = model_options(TrainConfig(model=name), image_size=64)
    model = create_model(name, num_classes=200, **options).eval()
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
        model_options(TrainConfig(model="vit_tiny", norm="group"))


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


def _whitened_cov(model, x):
    out = torch.nn.functional.conv2d(x, model.whiten.weight[:12])  # the + half of the filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    return flat.T @ flat / flat.shape[0]


def test_fastnet_whitening_init_whitens_patches():
    torch.manual_seed(0)
    # correlated "images": smooth noise
    x = torch.nn.functional.avg_pool2d(torch.randn(200, 3, 34, 34), 3, stride=1)
    model = create_model("fastnet")
    model.data_init(x)
    cov = _whitened_cov(model, x)
    # whitened: covariance close to identity (eps keeps the smallest directions a bit below 1)
    assert torch.allclose(torch.diag(cov), torch.ones(12), atol=0.1)
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 0.05


def test_whitening_fitted_on_the_loaders_sample_whitens_every_class_of_a_sorted_folder():
    """A class-sorted dataset (as an image folder is): prepare_model must not fit the
    whitening on the first images only (all of class 0)."""
    from eva8_utils.data import DeviceLoader
    from eva8_utils.models import prepare_model

    rng = np.random.default_rng(0)
    n_per, k = 400, 5
    images, labels = [], []
    for c in range(k):  # each class its own colour statistics and smoothness
        base = rng.normal(0, 1 + c, (n_per, 14, 14, 3)).cumsum(axis=1 + c % 2) * (0.1 + 0.1 * c)
        images.append(np.clip(128 + 20 * base + 30 * c, 0, 255).astype(np.uint8))
        labels.append(np.full(n_per, c))
    x, y = np.concatenate(images), np.concatenate(labels)  # sorted by class
    loader = DeviceLoader(x, y, batch_size=64, mean=(0.5,) * 3, std=(0.25,) * 3, train=True)
    everything = loader.batch_at(torch.arange(len(y)))[0]

    def off_identity(model):
        cov = _whitened_cov(model, everything)
        return (cov - torch.eye(12)).abs().max().item()

    model = prepare_model(create_model("fastnet", width=0.25), loader, "cpu", channels_last=False, max_init_images=500)
    first_only = create_model("fastnet", width=0.25)
    first_only.data_init(loader.batch_at(torch.arange(500))[0])  # the old way: the first 500 = class 0 and 1
    assert off_identity(model) < 0.15
    assert off_identity(first_only) > 3 * off_identity(model)


def test_fastnet_freezes_the_whitening_bias_after_its_epochs_and_trains_it_at_the_base_lr():
    from eva8_utils.engine import make_optimizer

    model = create_model("fastnet", width=0.25, whiten_bias_epochs=3)
    assert model.frozen_parameters(3) == [] and model.frozen_parameters(4) == [model.whiten.bias]
    assert create_model("fastnet").frozen_parameters(50) == []
    hints = get_spec("fastnet").param_hints(model)  # its registry entry says which LR rules it needs
    assert make_optimizer(model, "sgd", lr=0.1, bias_lr_scale=64).param_groups[0]["params"][0] is not model.whiten.bias
    opt = make_optimizer(model, "sgd", lr=0.1, bias_lr_scale=64, hints=hints)
    base, biases = opt.param_groups
    assert any(p is model.whiten.bias for p in base["params"]) and base["lr"] == 0.1
    assert not any(p is model.whiten.bias for p in biases["params"]) and biases["lr"] == pytest.approx(6.4)


def test_a_model_given_as_module_callable(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(
        "import torch.nn as nn\n"
        "class Tiny(nn.Module):\n"
        "    cam_layer = 'features.0'\n"
        "    def __init__(self, num_classes=10, dropout=0.0):\n"
        "        super().__init__()\n"
        "        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())\n"
        "        self.head = nn.Linear(8, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.features(x).mean((2, 3)))\n"
        "def not_a_model(num_classes=10):\n"
        "    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = get_spec("usernets:Tiny")
    assert spec.cam_layer == "features.0" and spec.accepts("dropout") and not spec.accepts("norm")
    assert create_model("usernets:Tiny", num_classes=3)(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        get_spec("usernets:Nope")
    with pytest.raises(ConfigError, match="cannot import it .*ModuleNotFoundError"):
        get_spec("no_such_module_xyz:Net")
    with pytest.raises(ConfigError, match="returned int, not an nn.Module"):
        create_model("usernets:not_a_model")
    with pytest.raises(ConfigError, match="--norm group is not supported by usernets:Tiny"):
        model_options(TrainConfig(model="usernets:Tiny", norm="group"))


def test_vit_tiny_forward_and_cam_reshape():
    model = create_model("vit_tiny").eval()
    tokens = torch.randn(2, 65, 192)
    fmap = model.cam_reshape(tokens)
    assert fmap.shape == (2, 192, 8, 8)
    assert torch.equal(fmap[:, :, 0, 1], tokens[:, 2, :])  # token 1+1 -> row 0, col 1
