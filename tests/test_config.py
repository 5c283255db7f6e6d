"""Bad input: one line on stderr, exit code 2, and no run folder."""

import pytest
from PIL import Image

from eva8_utils.config import RECIPES, TrainConfig, build_config, load_yaml
from eva8_utils.errors import ConfigError
from eva8_utils.main import config_from_args, main

SHAPES = ["--dataset", "shapes", "--shapes-train", "64", "--shapes-test", "16", "--model", "fastnet",
          "--batch-size", "32", "--no-progress"]


def _img(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (1, 2, 3)).save(path)


def _folder(root, *, test=True, empty_class=False, mixed=False, corrupt=False, text_file=False):
    for split in ("train", "test") if test else ("train",):
        for c in ("a", "b"):
            for i in range(2):
                _img(root / split / c / f"{i}.png")
    if empty_class:
        (root / "train" / "c").mkdir()
    if mixed:
        _img(root / "train" / "a" / "z.png", (10, 10))
    if corrupt:
        (root / "train" / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


CASES = [
    (["--model", "resnet19"], "--model 'resnet19' is not valid; choose one of: custom_resnet, fastnet, resnet18"),
    (["--optimizer", "rmsprop"], "--optimizer 'rmsprop' is not valid; choose one of: adam, adamw, muon, sgd"),
    (["--scheduler", "triangle"], "choose one of: cosine, exponential, linear, none, onecycle, plateau, step"),
    (["--dataset", "imagenet"], "choose one of: cifar10, folder, shapes"),
    (["--cam-method", "gradcam3"], "choose one of: eigencam, gradcam, gradcam++, layercam, scorecam, xgradcam"),
    (["--cam-smooth", "blur"], "choose one of: aug, eigen, none"),
    (["--norm", "instance"], "choose one of: batch, group, layer"),
    (["--recipe", "turbo"], "--recipe 'turbo' is not valid; choose one of: fast, fast_sgd, resnet18"),
    (["--recipe", "fast_muon"], "recipe 'fast_muon' has a new name: use 'fast' (the SGD recipe once called 'fast' is now "
                                "'fast_sgd')"),
    (["--recipe", "fast", "--epochs", "5"], "--low-res-epochs must be >= 0 and < --epochs (5), got 6: the last epochs "
                                            "see full-size images; give --low-res-epochs too (e.g. 3) or more --epochs"),
    (["--flip", "sideways"], "--flip 'sideways' is not valid; choose one of: alternate, none, random"),
    (["--whiten-bias-lr", "cosine"], "--whiten-bias-lr 'cosine' is not valid; choose one of: linear, schedule"),
    (["--whiten-bias-lr", "linear"], "--whiten-bias-lr linear needs --whiten-bias-epochs N (N >= 1)"),
    (["--ema", "1.5"], "--ema must be 0 (off) or a decay in (0, 1)"),
    (["--mixup", "-1"], "--mixup must be >= 0"),
    (["--mix-p", "2"], "--mix-p must be a probability in [0, 1]"),
    (["--checkpoint-minutes", "-1"], "--checkpoint-minutes must be >= 0"),
    (["--import", "no_such_module_xyz"], "--import no_such_module_xyz: cannot import it (ModuleNotFoundError"),
    (["--model", "no_such_module_xyz:Net"], "cannot import it (ModuleNotFoundError: No module named 'no_such_module_xyz')"),
    (SHAPES + ["--batch-size", "100000"], "--batch-size 100000 is larger than the 64 training images; use at most 64"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "fast"], "give a number or 'auto'"),
    (["--epochs", "ten"], "invalid int value: 'ten'"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--cutout-p", "2"], "--cutout-p must be a probability in [0, 1]"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--resume"], "--resume needs --out RUN_DIR"),
    (["--resume", "--out", "nowhere"], "nowhere holds no run"),
    (["--resume", "--overwrite", "--out", "x"], "contradict"),
    (SHAPES + ["--cutout", "40"], "--cutout 40 is larger than the 32x32 images"),
    (SHAPES + ["--cam-layer", "block9"], "--cam-layer 'block9' is not a layer of this model; valid names include: whiten"),
    (SHAPES + ["--model", "vit_tiny", "--norm", "group"], "--norm group is not supported by vit_tiny"),
    (SHAPES + ["--model", "resnet18", "--norm", "group", "--groups", "7"], "--groups 7 does not divide"),
    (SHAPES + ["--width", "0.5", "--model", "resnet18"], "--width 0.5 is not supported by resnet18"),
    (["--dataset", "folder", "--data-dir", "does/not/exist"], "--data-dir does/not/exist does not exist"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a)[-40:] for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code = main(args + ["--out", "run1"] if "--out" not in args and "--resume" not in args else args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err
    assert message in err
    assert not (tmp_path / "run1").exists() and not (tmp_path / "runs").exists()


FOLDER_CASES = [
    (dict(test=False), "has no labelled test split"),
    (dict(empty_class=True), "holds no images; add images or remove the folder"),
    (dict(mixed=True), "pass --image-size N"),
    (dict(corrupt=True), "bad.png"),
]


@pytest.mark.parametrize("layout,message", FOLDER_CASES, ids=[m[:20] for _, m in FOLDER_CASES])
def test_bad_folder_datasets(tmp_path, monkeypatch, capsys, layout, message):
    root = _folder(tmp_path / "ds", **layout)
    monkeypatch.chdir(tmp_path)
    code = main(["--dataset", "folder", "--data-dir", str(root), "--cache-dir", "off", "--model", "fastnet",
                 "--cutout", "4", "--crop-padding", "1", "--out", "run1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err
    assert not (tmp_path / "run1").exists()


def test_yaml_unknown_keys_wrong_types_and_bad_syntax(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = [("epochs: 3\nbatchsize: 64\nfoo: 1\n", "unknown key(s): batchsize, foo"),
             ("epochs: ten\n", "--epochs must be an integer, got 'ten'"),
             ("flip: maybe\n", "--flip 'maybe' is not valid; choose one of: alternate, none, random"),
             ("epochs: [3\n", "is not valid YAML"),
             ("- 1\n- 2\n", "must hold a mapping")]
    for text, message in cases:
        (tmp_path / "c.yaml").write_text(text)
        assert main(["--config", "c.yaml", "--out", "run1"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert main(["--config", "missing.yaml"]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run1").exists()


def test_precedence_defaults_recipe_yaml_flags(tmp_path):
    assert TrainConfig().model == "resnet18" and TrainConfig().epochs == 20
    cfg = build_config(flags={"recipe": "fast"})
    assert cfg.model == "fastnet" and cfg.epochs == RECIPES["fast"]["epochs"]
    (tmp_path / "c.yaml").write_text("recipe: fast_sgd\nepochs: 5\nbatch_size: 256\n")
    cfg = config_from_args(["--config", str(tmp_path / "c.yaml"), "--epochs", "7"])
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.bias_lr_scale) == ("fastnet", 7, 256, 64.0)
    cfg = config_from_args(["--recipe", "fast", "--model", "resnet18", "--max-lr", "0.2"])
    assert cfg.model == "resnet18" and cfg.lr == 0.2


def test_a_run_saved_under_an_old_recipe_name_resumes_under_the_new_one_with_its_own_values(tmp_path):
    saved = dict(build_config(flags=dict(recipe="fast", batch_size=500)).to_dict(), recipe="fast_muon")
    cfg = build_config(base=saved)  # a resumed 0.2.0 run folder: its saved values, the name of today
    assert cfg.recipe == "fast" and cfg.batch_size == 500 and cfg.optimizer == "muon"
    assert {k: v for k, v in cfg.to_dict().items() if k != "recipe"} == {k: v for k, v in saved.items() if k != "recipe"}
    (tmp_path / "c.yaml").write_text("recipe: fast_muon\n")
    with pytest.raises(ConfigError, match="recipe 'fast_muon' has a new name: use 'fast'"):
        build_config(yaml_values=load_yaml(tmp_path / "c.yaml"))


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


def test_a_dataset_with_one_class_is_refused(tmp_path, monkeypatch, capsys):
    root = tmp_path / "one"
    for split in ("train", "test"):
        for i in range(4):
            _img(root / split / "only" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    code = main(["--dataset", "folder", "--data-dir", str(root), "--cache-dir", "off", "--model", "fastnet",
                 "--batch-size", "2", "--cutout", "4", "--crop-padding", "1", "--out", "run1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has 1 class(es) in its training split; a classifier needs at least 2" in err
    assert "\n" not in err and not (tmp_path / "run1").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_cuda_requested_without_a_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(SHAPES + ["--device", "cuda", "--out", "run1"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


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
