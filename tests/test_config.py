"""The config: precedence, recipes, validation, one source per choice list, the notebook's config.

Bad input (one line, exit 2, nothing written) is tested in test_bad_inputs.py."""

import pytest

from eva8_utils.config import RECIPES, TrainConfig, build_config, load_yaml
from eva8_utils.errors import ConfigError
from eva8_utils.main import config_from_args


def test_precedence_defaults_recipe_yaml_flags(tmp_path):
    assert TrainConfig().model == "resnet18" and TrainConfig().epochs == 20
    cfg = build_config(flags={"recipe": "fast"})
    assert cfg.model == "fastnet" and cfg.epochs == RECIPES["fast"]["epochs"]
    (tmp_path / "c.yaml").write_text("recipe: fast_sgd\nepochs: 5\nbatch_size: 256\n")
    cfg = config_from_args(["--config", str(tmp_path / "c.yaml"), "--epochs", "7"])
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.bias_lr_scale) == ("fastnet", 7, 256, 64.0)
    cfg = config_from_args(["--recipe", "fast", "--model", "resnet18", "--max-lr", "0.2"])
    assert cfg.model == "resnet18" and cfg.lr == 0.2


def test_fast_recipe_builds_airbench94_muons_optimizer_and_shrinks_the_first_six_epochs():
    import eva8_utils as E
    from eva8_utils.engine import MuonSGD

    cfg = build_config(flags=dict(recipe="fast", dataset="shapes", shapes_train=64, shapes_test=16,
                                  batch_size=16, progress=False))
    assert (cfg.model, cfg.epochs, cfg.low_res_size, cfg.low_res_epochs, cfg.lookahead) == ("fastnet", 10, 26, 6, False)
    exp = E.build(cfg)
    assert isinstance(exp.optimizer, MuonSGD)
    muon, head, biases = exp.optimizer.param_groups
    assert muon["muon"] and all(p.ndim == 4 for p in muon["params"]) and muon["weight_decay"] == 0
    assert (muon["lr"], muon["momentum"], head["momentum"], biases["momentum"]) == (pytest.approx(0.24), 0.6, 0.85, 0.85)
    assert head["params"] == [exp.model.head.weight]
    # airbench94_muon's LRs (0.67 and 0.053 on a loss summed over 2000 images; its head's output is scaled
    # by 1/256 where fastnet's is by 1/9, so the head's step moves the logits alike at lr * scale^2)
    # and its decay per step (0.004)
    assert head["lr"] * (1 / 9) ** 2 == pytest.approx(0.67 * 2000 * (1 / 256) ** 2, rel=0.01)
    assert biases["lr"] == pytest.approx(0.053 * 2000, rel=0.001)
    assert [g["lr"] * g["weight_decay"] for g in (head, biases)] == [pytest.approx(0.004, rel=0.01)] * 2
    sizes = []
    for epoch in (1, 6, 7, 10):
        exp.train_loader.set_epoch(epoch)
        sizes.append(exp.train_loader.epoch_image_size())
    assert sizes == [(26, 26), (26, 26), (32, 32), (32, 32)]


def test_defaults_are_the_assignment():
    c = TrainConfig()
    assert (c.dataset, c.model, c.epochs, c.optimizer, c.scheduler) == ("cifar10", "resnet18", 20, "sgd", "onecycle")
    assert (c.crop_padding, c.flip, c.cutout) == (4, "random", 16)


def test_config_validation_names_the_valid_choices():
    from eva8_utils.experiment import check_names

    with pytest.raises(ConfigError, match="choose one of: custom_resnet, fastnet, resnet18, resnet34, vit_tiny"):
        check_names(TrainConfig(model="nope"))
    with pytest.raises(ConfigError, match="unknown setting"):
        build_config(flags={"epochz": 1})
    with pytest.raises(ConfigError, match="--precision 'fp8' is not valid; choose one of: auto, bf16, fp16, fp32"):
        TrainConfig(precision="fp8").validate()


def test_config_is_plain_data_above_nothing():
    """config.py imports nothing from the modules it configures (no import loop)."""
    import ast

    from conftest import ROOT

    tree = ast.parse((ROOT / "eva8_utils" / "config.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0}
    assert imported == {"errors"}


def test_every_choice_list_has_one_source():
    """The help text, the validation and the implementations use the same lists."""
    from eva8_utils.config import NORMS, TTA_MODES
    from eva8_utils.experiment import choices
    from eva8_utils.main import field_help

    assert choices("norm") == list(NORMS) and choices("tta") == list(TTA_MODES)
    assert "muon" in choices("optimizer") and "muon" in field_help("optimizer")
    assert "linear" in field_help("scheduler") and "fp16" in field_help("precision")
    from eva8_utils.models import register_model, MODELS

    register_model("help_probe_net", lambda num_classes=10: None)
    try:
        assert "help_probe_net" in field_help("model")  # asked of the registry, not a copy
    finally:
        MODELS.pop("help_probe_net")


def test_the_notebook_keeps_its_run_folder_on_drive_in_colab(tmp_path, monkeypatch):
    import sys
    import types

    from eva8_utils import colab

    assert colab.run_folder("runs/nb") == __import__("pathlib").Path("runs/nb")  # not in Colab: as given
    mounted = []
    drive = types.SimpleNamespace(mount=lambda where: (mounted.append(where), (tmp_path / "drive" / "MyDrive").mkdir(
        parents=True)))
    google = types.ModuleType("google")
    google.colab = types.SimpleNamespace(drive=drive)
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    monkeypatch.setattr(colab, "DRIVE_MOUNT", tmp_path / "drive")
    monkeypatch.setattr(colab, "DRIVE_ROOT", tmp_path / "drive" / "MyDrive" / "eva8_utils")
    got = colab.run_folder("runs/nb", use_drive=True)
    assert mounted == [str(tmp_path / "drive")]
    assert got == tmp_path / "drive" / "MyDrive" / "eva8_utils" / "runs" / "nb" and got.parent.is_dir()
    assert colab.run_folder("runs/nb", use_drive=True) == got and len(mounted) == 1  # mounted once
    assert colab.run_folder("runs/nb", use_drive=False) == __import__("pathlib").Path("runs/nb")


def _notebook_config(**params):
    """The config S7.ipynb builds: its parameters cell (with ``params`` set as papermill sets
    them) and the ``cfg = E.build_config(...)`` statement of its setup cell, as written there."""
    import ast
    import json

    import eva8_utils as E
    from conftest import ROOT

    cells = ["".join(c["source"]) for c in json.loads((ROOT / "S7.ipynb").read_text())["cells"]
             if c["cell_type"] == "code"]
    ns = {"E": E}
    exec(next(c for c in cells if "EXTRA = {}" in c), ns)
    ns.update(params)
    setup = "\n".join(ln for ln in next(c for c in cells if "E.build_config(" in c).splitlines()
                      if not ln.startswith(("%", "!")))  # IPython magics
    call = next(n for n in ast.walk(ast.parse(setup)) if isinstance(n, ast.Assign)
                and isinstance(n.value, ast.Call) and ast.unparse(n.value.func) == "E.build_config")
    return eval(compile(ast.Expression(call.value), "S7.ipynb", "eval"), ns)


def test_the_notebooks_recipe_decides_what_its_parameters_leave_unset():
    assert _notebook_config().to_dict() == build_config().to_dict()  # the assignment, as the CLI's main job
    for recipe in ("fast", "fast_sgd", "resnet18"):
        nb, cli = _notebook_config(RECIPE=recipe), build_config(flags=dict(recipe=recipe))
        assert nb.to_dict() == cli.to_dict(), recipe
    nb = _notebook_config(RECIPE="fast")
    assert (nb.model, nb.epochs, nb.batch_size, nb.lr, nb.low_res_epochs) == ("fastnet", 10, 2000, 0.24, 6)
    # a parameter that is set overrides the recipe, as a flag does
    nb = _notebook_config(RECIPE="fast_sgd", EPOCHS=3, BATCH_SIZE=256, MAX_LR=0.5, MODEL="resnet18")
    assert (nb.model, nb.epochs, nb.batch_size, nb.lr, nb.optimizer) == ("resnet18", 3, 256, 0.5, "sgd")
    assert nb.to_dict() == build_config(flags=dict(recipe="fast_sgd", epochs=3, batch_size=256, lr=0.5,
                                                   model="resnet18")).to_dict()
