"""Pictures and CAMs: right data, right classes, no side effects."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from eva8_utils import viz
from eva8_utils.cam import (CAM_METHODS, box_area_baseline, cam_pointing_game, compute_cams, default_cam_layer,
                            pointing_game)
from eva8_utils.models import create_model
from eva8_utils.utils import denormalize, normalize

PKG = Path(__file__).resolve().parents[1] / "eva8_utils"


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# --------------------------------------------------------------------------- data behind the plots
def test_denormalize_inverts_normalize():
    x = torch.rand(4, 3, 8, 8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    assert torch.allclose(denormalize(normalize(x, mean, std), mean, std), x, atol=1e-6)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(denormalize(normalize(u8, mean, std), mean, std), u8.float() / 255, atol=1e-6)


def test_misclassified_are_wrong_and_most_confident_first():
    torch.manual_seed(0)
    logits = torch.randn(500, 10) * 3
    labels = torch.randint(0, 10, (500,))
    mis = viz.find_misclassified(logits, labels, n=10)
    preds = logits.argmax(1)
    assert len(mis["indices"]) == 10
    assert mis["count"] == int((preds != labels).sum())
    for i, p in zip(mis["indices"], mis["preds"]):
        assert preds[i] == p and p != labels[i]
    conf = mis["confidences"]
    assert all(a >= b for a, b in zip(conf, conf[1:]))
    wrong_conf = torch.softmax(logits, 1).max(1).values[preds != labels]
    assert conf[0] == pytest.approx(float(wrong_conf.max()))


def test_confusion_matrix_and_per_class_accuracy_use_every_image():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 1000)
    preds = np.where(rng.random(1000) < 0.7, labels, rng.integers(0, 4, 1000))
    cm = viz.confusion_matrix(labels, preds, 4)
    assert cm.sum() == 1000
    for c in range(4):
        correct = sum(1 for t, p in zip(labels, preds) if t == c and p == c)
        total = sum(1 for t in labels if t == c)
        assert cm[c, c] == correct and cm[c].sum() == total
        assert viz.per_class_accuracy(labels, preds, 4)[c] == pytest.approx(100 * correct / total)


# --------------------------------------------------------------------------- figures
def test_plot_history_has_the_four_panels_and_the_lr():
    hist = {"epoch": [1, 2], "train_loss": [2.0, 1.0], "train_acc": [30.0, 60.0], "test_loss": [1.5, 0.9],
            "test_acc": [40.0, 70.0], "lr": [0.1, 0.01], "steps": [[1, 1, 0.1, 2.1], [2, 1, 0.2, 1.9],
                                                                   [3, 2, 0.1, 1.2]]}
    fig = viz.plot_history(hist)
    titles = [ax.get_title() for ax in fig.axes]
    for t in ("Training Loss", "Training Accuracy", "Test Loss", "Test Accuracy", "Learning rate"):
        assert t in titles
    test_acc_ax = fig.axes[titles.index("Test Accuracy")]
    assert list(test_acc_ax.lines[0].get_ydata()) == [40.0, 70.0]
    lr_ax = fig.axes[titles.index("Learning rate")]
    assert list(lr_ax.lines[0].get_ydata()) == [0.1, 0.2, 0.1]  # per step


def test_plot_misclassified_titles_and_images():
    imgs = torch.randn(10, 3, 8, 8)
    fig = viz.plot_misclassified(imgs, [0] * 10, [1] * 10, ["cat", "dog"], (0.5,) * 3, (0.2,) * 3,
                                 confidences=np.linspace(0.9, 0.5, 10))
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10
    assert shown[0].get_title() == "actual: cat\npredicted: dog (0.90)"
    # the image shown is the de-normalised input
    expected = denormalize(imgs[0], (0.5,) * 3, (0.2,) * 3).permute(1, 2, 0).numpy()
    assert np.allclose(shown[0].images[0].get_array(), expected, atol=1e-6)


def test_plot_cam_grid_pairs_predicted_and_true_class_maps():
    imgs = torch.randn(4, 3, 8, 8)
    cp, ct = np.random.rand(4, 8, 8), np.random.rand(4, 8, 8)
    fig = viz.plot_cam_grid(imgs, cp, ct, [0, 1, 2, 0], [1, 2, 0, 2], ["a", "b", "c"], (0,) * 3, (1,) * 3,
                            layer="layer3")
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 12
    assert titles[:3] == ["actual: a\npredicted: b", "CAM for b", "CAM for a"]
    overlays = [ax for ax in fig.axes if len(ax.images) == 2]
    assert len(overlays) == 8
    assert np.allclose(overlays[0].images[1].get_array(), cp[0]) and np.allclose(overlays[1].images[1].get_array(), ct[0])


def test_other_plots_return_figures_and_accept_an_axis():
    cm = np.array([[5, 1], [2, 7]])
    fig = viz.plot_confusion_matrix(cm, ["a", "b"])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["Confusion matrix (counts)", "Confusion matrix (row-normalised)"]
    own = Figure()
    ax = own.add_subplot()
    assert viz.plot_per_class_accuracy([80.0, 95.0], ["a", "b"], ax=ax) is own
    assert [round(b.get_height(), 1) for b in ax.patches] == [80.0, 95.0]
    f = viz.plot_lr_finder([1e-4, 1e-3, 1e-2], [2.0, 1.5, 3.0], 1e-3)
    assert f.axes[0].get_xscale() == "log"
    assert isinstance(viz.plot_samples(torch.randn(5, 3, 8, 8), [0, 1, 0, 1, 0], ["a", "b"], (0,) * 3, (1,) * 3),
                      Figure)


def test_library_never_shows_or_saves_figures_and_never_evals():
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name):
                    assert f.id not in ("eval", "exec", "compile", "__import__"), f"{path}: {f.id}()"
                if isinstance(f, ast.Attribute) and f.attr == "show":
                    raise AssertionError(f"{path}: .show() call")
                if isinstance(f, ast.Attribute) and f.attr == "savefig":
                    assert path.name == "rundir.py", f"{path}: savefig outside rundir.save_figure"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert not any(n.startswith("matplotlib.pyplot") or n == "pickle" and path.name != "checkpoint.py"
                               for n in names), f"{path}: {names}"


# --------------------------------------------------------------------------- CAMs
@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    return create_model("resnet18")


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_cams_have_the_right_shape_range_and_no_side_effects(method):
    torch.manual_seed(0)
    model = create_model("fastnet", width=0.25)
    model.train()
    x = torch.randn(3, 3, 32, 32)
    x0 = x.clone()
    hooks0 = _hooks(model)
    for _ in range(2):
        cams = compute_cams(model, x, [1, 2, 3], method=method)
        assert cams.shape == (3, 32, 32) and cams.dtype == np.float32
        assert cams.min() >= 0 and cams.max() <= 1 and cams.max() > 0
    assert torch.equal(x, x0)
    assert model.training
    assert _hooks(model) == hooks0
    assert all(p.grad is None for p in model.parameters())


def test_cam_targets_are_the_given_class_of_each_image(small_resnet):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    mixed = compute_cams(small_resnet, x, [0, 7, 3])      # a different class for each image of one batch
    for i, c in enumerate([0, 7, 3]):
        alone = compute_cams(small_resnet, x[i:i + 1], [c])
        assert np.allclose(mixed[i], alone[0], atol=1e-5)   # image i was explained for its own class
    swapped = compute_cams(small_resnet, x, [7, 0, 3])
    assert not np.allclose(mixed[0], swapped[0]) and not np.allclose(mixed[1], swapped[1])
    assert np.allclose(mixed[2], swapped[2], atol=1e-5)
    assert small_resnet.training  # create_model leaves train mode; restored


def test_cam_smoothing_options_run():
    torch.manual_seed(0)
    model = create_model("fastnet", width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = compute_cams(model, x, [1, 2])
    eigen = compute_cams(model, x, [1, 2], smooth="eigen")
    aug = compute_cams(model, x, [1, 2], smooth="aug")
    assert eigen.shape == aug.shape == plain.shape
    assert not np.allclose(plain, eigen) and not np.allclose(plain, aug)
    assert not model.training


def test_vit_cam_through_the_reshape_transform():
    torch.manual_seed(0)
    model = create_model("vit_tiny").eval()
    cams = compute_cams(model, torch.randn(2, 3, 32, 32), [3, 4])
    assert cams.shape == (2, 32, 32) and 0 <= cams.min() and cams.max() <= 1
    assert default_cam_layer(model, 32) == "blocks.5.norm1"


@pytest.mark.parametrize("name,size,layer", [("resnet18", 32, "layer3"), ("resnet18", 64, "layer3"),
                                             ("resnet18", 16, "layer2"), ("custom_resnet", 32, "layer2"),
                                             ("fastnet", 32, "block3.conv1"), ("fastnet", 64, "block3.conv1"),
                                             ("fastnet", 16, "block2.conv1")])
def test_default_cam_layer_is_at_least_7x7(name, size, layer):
    from eva8_utils.cam import layer_output_sizes

    model = create_model(name)
    chosen = default_cam_layer(model, size)
    assert chosen == layer
    assert min(dict(layer_output_sizes(model, size))[chosen]) >= 7


# --------------------------------------------------------------------------- pointing game
def test_pointing_game_counts_maxima_inside_boxes_and_its_baselines():
    from eva8_utils.cam import centre_baseline

    cams = np.zeros((3, 10, 10), np.float32)
    cams[0, 2, 3] = 1   # inside (1,1)-(4,4)
    cams[1, 9, 9] = 1   # outside
    cams[2, 4, 4] = 1   # on the border: inside (inclusive)
    boxes = np.array([[1, 1, 4, 4]] * 3)
    assert pointing_game(cams, boxes) == pytest.approx(2 / 3)
    assert box_area_baseline(boxes, 10, 10) == pytest.approx(0.16)
    boxes = np.array([[3, 3, 6, 6], [0, 0, 2, 2], [4, 5, 9, 9]])  # the centre pixel (4, 4) is in the first only
    assert centre_baseline(boxes, 10, 10) == pytest.approx(1 / 3)


def test_shapes_objects_are_spread_so_a_fixed_point_scores_low():
    from eva8_utils.cam import centre_baseline
    from eva8_utils.data import make_shapes

    b = make_shapes(10, 2000, seed=0).boxes_test
    assert centre_baseline(b, 32, 32) <= 0.3
    best_fixed = max(((b[:, 0] <= i) & (b[:, 2] >= i) & (b[:, 1] <= j) & (b[:, 3] >= j)).mean()
                     for i in range(32) for j in range(32))
    assert best_fixed <= 0.3


def test_trained_gradcam_points_at_the_object_and_beats_every_baseline(smoke_run):
    from conftest import read_metrics

    m = read_metrics(smoke_run)
    assert m["cam_method"] == "gradcam" and m["cam_layer"] == "block3.conv1" and m["cam_pointing_n"] >= 300
    assert m["cam_pointing_game"] >= 0.8
    assert m["cam_pointing_centre"] <= 0.3
    assert m["cam_pointing_wrong_class"] <= 0.35
    assert m["cam_pointing_random_point"] < 0.1
    report = (smoke_run / "report.md").read_text()
    assert "cam_pointing_wrong_class" in report and "cam_road_correct" in report


def test_a_random_model_does_not_point_better_than_a_fixed_guess(smoke_run):
    from eva8_utils.checkpoint import load_checkpoint
    from eva8_utils.data import DeviceLoader, make_shapes

    s = make_shapes(4000, 1000, seed=1)  # the smoke run's data (seed 1)
    ck = load_checkpoint(smoke_run / "checkpoints" / "last.pt")
    test = DeviceLoader(s.x_test, s.y_test, batch_size=256, mean=ck["mean"], std=ck["std"])
    x, y = test.batch_at(torch.arange(300))
    torch.manual_seed(0)
    random_model = create_model("fastnet").eval()
    r = cam_pointing_game(random_model, x, y, s.boxes_test[:300], max_images=300)
    assert r["n"] > 0 and r["score"] < 0.35  # a random model's maps point about as well as a random guess


def test_road_scores_a_faithful_map_below_a_random_one():
    """A model that only looks at the top-left quadrant: a CAM that marks that quadrant
    removes what the model uses; a random map does not."""
    from eva8_utils.cam import road_faithfulness

    class Quadrant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Conv2d(3, 4, 1)
            with torch.no_grad():
                self.features.weight.zero_()
                self.features.weight[0, 0, 0, 0] = 3.0
                self.features.bias.zero_()

        def forward(self, x):
            f = self.features(x)
            score = f[:, 0, :8, :8].mean((1, 2))
            return torch.stack([score, -score], 1)

    torch.manual_seed(0)
    x = torch.randn(16, 3, 16, 16) * 0.2
    x[:, 0, :8, :8] += 1.5
    model = Quadrant()
    r = road_faithfulness(model, x, [0] * 16, layer="features", percentile=75)
    assert r["n"] == 16 and r["score"] < r["random"] - 0.1
