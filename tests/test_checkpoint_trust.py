"""A checkpoint is data: loading one never runs code the file names unless the user names
the same code (``--model``/``--import``, ``load_model(path, model=..., imports=[...])``).

The attacks are real files: a reference to ``torch.hub:load`` with a local hubconf.py,
and a list of imports naming a module with a side effect at import; each writes a marker
file if it ever runs.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from conftest import HANG_S, cli_env, run_cli
from eva8_utils.checkpoint import load_checkpoint, load_model, save_checkpoint
from eva8_utils.errors import CheckpointError, UntrustedCodeError, UserError
from eva8_utils.models import create_model

CLASSES = ["circle", "square", "triangle"]
META = {"num_classes": 3, "classes": CLASSES, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}

OWN_MODULE = '''
import torch.nn as nn


class Small(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
'''


def _side_effect(marker):
    return f"open({str(marker)!r}, 'w').write('ran')\n"


@pytest.fixture()
def code_dir(tmp_path, monkeypatch):
    """A folder on sys.path for this test's modules; they are forgotten afterwards."""
    folder = tmp_path / "code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith(("evil_", "own_")):
            del sys.modules[name]


@pytest.fixture()
def images(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(folder / f"img{i}.png")
    return folder


def hub_checkpoint(tmp_path):
    """``torch.hub:load`` with source="local": calls DIR/hubconf.py's evil() if ever honoured."""
    repo, marker = tmp_path / "hubrepo", tmp_path / "HUB_RAN"
    repo.mkdir()
    (repo / "hubconf.py").write_text("import torch.nn as nn\n\ndef evil(num_classes=10, **kw):\n    "
                                     + _side_effect(marker).replace("\n", "\n    ")
                                     + "return nn.Linear(1, num_classes)\n")
    path = tmp_path / "shared_hub.pt"
    ref = {"model": "torch.hub:load", "options": {"repo_or_dir": str(repo), "model": "evil", "source": "local",
                                                  "trust_repo": True}, "imports": []}
    torch.save({"format": "eva8_utils.checkpoint/1", "model": nn.Linear(1, 3).state_dict(), "model_name": "hub",
                "model_ref": ref, **META}, path)
    return path, marker


def imports_checkpoint(tmp_path, code_dir):
    """A registered model plus ``imports`` naming a module that writes a marker when imported."""
    marker = tmp_path / "IMPORT_RAN"
    (code_dir / "evil_side.py").write_text(_side_effect(marker))
    path = tmp_path / "shared_imports.pt"
    model = create_model("resnet18", 3)
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "resnet18",
                           "model_ref": {"model": "resnet18", "options": {}, "imports": ["evil_side"]}, **META})
    return path, marker


def own_checkpoint(tmp_path, code_dir, name="own_nets"):
    """A classmate's checkpoint of their own model, ``own_nets:Small``."""
    (code_dir / f"{name}.py").write_text(OWN_MODULE)
    sys.path_importer_cache.clear()
    import importlib

    mod = importlib.import_module(name)
    model = mod.Small(3, width=4)
    del sys.modules[name]  # the loader must import it itself
    path = tmp_path / "own.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_name": f"{name}:Small",
                           "model_ref": {"model": f"{name}:Small", "options": {"width": 4}, "imports": []}, **META})
    return path


def registered_checkpoint(tmp_path):
    path = tmp_path / "fastnet.pt"
    model = create_model("fastnet", 3, width=0.5)
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "fastnet",
                           "model_ref": {"model": "fastnet", "options": {"width": 0.5}, "imports": []}, **META})
    return path


def _one_line_refusal(proc, *words):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- the attacks are refused
def test_load_model_refuses_a_hub_reference_and_runs_nothing(tmp_path):
    path, marker = hub_checkpoint(tmp_path)
    with pytest.raises(UntrustedCodeError, match="refused") as e:
        load_model(path)
    assert "torch.hub:load" in str(e.value) and "--model torch.hub:load" in str(e.value)
    assert "\n" not in str(e.value) and isinstance(e.value, UserError)
    assert not marker.exists()


def test_load_model_refuses_imports_it_was_not_given_and_imports_nothing(tmp_path, code_dir):
    path, marker = imports_checkpoint(tmp_path, code_dir)
    with pytest.raises(UntrustedCodeError, match="--import evil_side"):
        load_model(path)
    with pytest.raises(UntrustedCodeError):  # trusting another module does not trust this one
        load_model(path, imports=["own_other"])
    assert not marker.exists() and "evil_side" not in sys.modules


def test_predict_refuses_both_attacks_with_one_line_and_writes_nothing(tmp_path, code_dir, images):
    hub, hub_marker = hub_checkpoint(tmp_path)
    imp, imp_marker = imports_checkpoint(tmp_path, code_dir)
    for path, what in ((hub, "torch.hub:load"), (imp, "evil_side")):
        out = tmp_path / f"pred_{path.stem}"
        proc = run_cli(["predict", "--checkpoint", path, images, "--out", out])
        _one_line_refusal(proc, "refused", what)
        assert not out.exists()
    assert not hub_marker.exists() and not imp_marker.exists()


def test_predict_in_a_real_process_with_the_module_on_pythonpath_refuses(tmp_path, code_dir, images):
    imp, marker = imports_checkpoint(tmp_path, code_dir)
    proc = run_cli(["predict", "--checkpoint", imp, images, "--out", tmp_path / "p"], PYTHONPATH=str(code_dir))
    _one_line_refusal(proc, "refused", "--import evil_side")
    assert not marker.exists() and not (tmp_path / "p").exists()


def test_demo_export_refuses_both_attacks_and_writes_no_space(tmp_path, code_dir):
    hub, hub_marker = hub_checkpoint(tmp_path)
    imp, imp_marker = imports_checkpoint(tmp_path, code_dir)
    for path in (hub, imp):
        out = tmp_path / f"space_{path.stem}"
        proc = run_cli(["demo", "--checkpoint", path, "--export", out])
        _one_line_refusal(proc, "refused")
        assert not out.exists() and not out.with_name(f".{out.name}.tmp").exists()
    assert not hub_marker.exists() and not imp_marker.exists()


def test_naming_other_code_than_the_file_is_refused(tmp_path, code_dir):
    path, marker = hub_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="holds the model torch.hub:load, not own_nets:Small"):
        load_model(path, model="own_nets:Small")
    with pytest.raises(UserError, match="not a module name"):
        load_model(registered_checkpoint(tmp_path), imports=["../evil"])
    assert not marker.exists()


def test_module_names_that_are_not_dotted_names_are_refused(tmp_path):
    path = tmp_path / "odd.pt"
    model = create_model("fastnet", 3, width=0.5)
    for bad in (["os; rm -rf"], ["../x"], [""], [3]):
        save_checkpoint(path, {"model": model.state_dict(), "model_name": "fastnet",
                               "model_ref": {"model": "fastnet", "options": {"width": 0.5}, "imports": bad}, **META})
        with pytest.raises(CheckpointError, match="not a dotted name"):
            load_model(path, imports=["x"])
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "x",
                           "model_ref": {"model": "os.path:join(1)", "options": {}, "imports": []}, **META})
    with pytest.raises(CheckpointError, match="not package.module:callable"):
        load_model(path)
    for odd in ("fast\nnet", "x" * 300):
        save_checkpoint(path, {"model": model.state_dict(), "model_name": "x",
                               "model_ref": {"model": odd, "options": {}, "imports": []}, **META})
        with pytest.raises(CheckpointError, match="not a model name") as e:
            load_model(path)
        assert "\n" not in str(e.value) and len(str(e.value)) < 300


# --------------------------------------------------------------------------- options are data
@pytest.mark.parametrize("options, num_classes, words", [
    ({"width": 0.5, "bogus": 1}, 3, "does not take it"),
    ({"width": 0.5, "num_classes": 3}, 3, "does not take it"),
    ({"width": {"nested": 1}}, 3, "options must be numbers"),
    ({"width": float("nan")}, 3, "options must be numbers"),
    ({"width": 0.5}, 10 ** 9, "num_classes=1000000000"),
    ({"width": 0.5}, 4, "num_classes=4 but 3 class names"),
    ({"width": 64.0}, 3, "does not fit its own model"),
])
def test_options_are_checked_before_anything_is_built(tmp_path, options, num_classes, words):
    path = tmp_path / "opts.pt"
    model = create_model("fastnet", 3, width=0.5)
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "fastnet",
                           "model_ref": {"model": "fastnet", "options": options, "imports": []},
                           **{**META, "num_classes": num_classes}})
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert words in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- legit files load when named
def test_a_registered_model_predicts_with_no_extra_flag(tmp_path, images):
    path = registered_checkpoint(tmp_path)
    proc = run_cli(["predict", "--checkpoint", path, images, "--out", tmp_path / "pred"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((tmp_path / "pred" / "predictions.csv").read_text().splitlines()) == 3
    model, ck = load_model(path)
    assert ck["model_ref"]["model"] == "fastnet"


def test_an_own_model_checkpoint_loads_only_when_the_code_is_named(tmp_path, code_dir, images):
    path = own_checkpoint(tmp_path, code_dir)
    proc = run_cli(["predict", "--checkpoint", path, images, "--out", tmp_path / "no"])
    _one_line_refusal(proc, "refused", "--model own_nets:Small")
    assert "own_nets" not in sys.modules and not (tmp_path / "no").exists()
    proc = run_cli(["predict", "--checkpoint", path, images, "--out", tmp_path / "yes", "--model", "own_nets:Small"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "yes" / "predictions.csv").is_file()
    model, _ = load_model(path, model="own_nets:Small")
    assert type(model).__name__ == "Small" and model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    from eva8_utils.predict import predict_images

    rows = predict_images(load_model(path, model="own_nets:Small"), [images], device="cpu")
    assert len(rows) == 2 and rows[0]["top"][0][0] in CLASSES
    with pytest.raises(UntrustedCodeError):
        predict_images(path, [images], device="cpu")


def test_a_space_of_an_own_model_copies_only_the_named_module(tmp_path, code_dir):
    pytest.importorskip("gradio")
    path = own_checkpoint(tmp_path, code_dir)
    (code_dir / "own_unrelated.py").write_text("x = 1\n")
    out = tmp_path / "space"
    proc = run_cli(["demo", "--checkpoint", path, "--export", out, "--import", "own_unrelated"])
    _one_line_refusal(proc, "refused", "--model own_nets:Small")
    assert not out.exists()
    proc = run_cli(["demo", "--checkpoint", path, "--export", out, "--model", "own_nets:Small", "--import",
                    "own_unrelated"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "own_nets.py").is_file() and not (out / "own_unrelated.py").exists()
    assert "model='own_nets:Small'" in (out / "app.py").read_text()


def test_a_space_of_an_own_model_runs_from_its_folder(tmp_path, code_dir):
    """The exported app names the code it trusts, so it loads in the Space (its own folder)."""
    pytest.importorskip("gradio")
    path = own_checkpoint(tmp_path, code_dir, name="own_space")
    out = tmp_path / "space"
    proc = run_cli(["demo", "--checkpoint", path, "--export", out, "--model", "own_space:Small"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = "import runpy; ns = runpy.run_path('app.py'); print(type(ns['app']).__name__)"
    env = cli_env()
    env["PYTHONPATH"] = ""
    p = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=HANG_S, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().endswith("Blocks")


def test_an_old_checkpoint_rebuilds_from_its_config_under_the_same_rule(tmp_path, code_dir):
    """Before checkpoints stored a reference, the saved config named the model and imports."""
    marker = tmp_path / "OLD_RAN"
    (code_dir / "evil_old.py").write_text(_side_effect(marker))
    path = tmp_path / "old.pt"
    model = create_model("fastnet", 3)
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "fastnet",
                           "config": {"model": "fastnet", "imports": ["evil_old"]}, **META})
    with pytest.raises(UntrustedCodeError, match="--import evil_old"):
        load_model(path)
    assert not marker.exists()
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "fastnet",
                           "config": {"model": "fastnet", "imports": []}, **META})
    loaded, _ = load_model(path)
    assert type(loaded).__name__ == "FastNet"


# --------------------------------------------------------------------------- a pickle that would run code
def test_a_pickle_that_runs_code_is_refused_on_load(tmp_path, images):
    """Not a torch message: the package's error and the word "refused" (torch 2.3 and later)."""
    marker = tmp_path / "PICKLE_RAN"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Evil()}, path)
    for load in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="refused") as e:
            load(path)
        assert "corrupt" not in str(e.value)
    proc = run_cli(["predict", "--checkpoint", path, images, "--out", tmp_path / "p"])
    _one_line_refusal(proc, "refused")
    assert not marker.exists()


def test_a_truncated_file_is_called_corrupt_not_refused(tmp_path):
    path = registered_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)


def test_compare_draws_no_grid_from_code_it_was_not_given(tmp_path, code_dir):
    """A run folder without its misclassified grid: compare would rebuild the model from the
    checkpoint; code the folder names runs only when named with --model/--import."""
    import yaml

    ckpt, marker = imports_checkpoint(tmp_path, code_dir)
    run = tmp_path / "their_run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt.rename(run / "checkpoints" / "best.pt")
    (run / "history.csv").write_text("epoch,train_loss,train_acc,test_loss,test_acc,lr\n1,1.0,50.0,1.0,50.0,0.1\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "resnet18", "imports": ["evil_side"],
                                                     "dataset": "shapes", "epochs": 1}))
    proc = run_cli(["compare", run, "--out", tmp_path / "cmp"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "## Misclassified" not in (tmp_path / "cmp" / "compare.md").read_text()
    assert not marker.exists() and "evil_side" not in sys.modules


def test_garbage_is_corrupt_not_refused(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)


@pytest.mark.parametrize("wording", [
    "Unsupported class posix.system",                                                   # torch 2.3
    "Unsupported global: GLOBAL posix.system was not an allowed global by default.",   # torch 2.4-2.6
    "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.",    # later
    "Trying to call reduce for unrecognized function <built-in function system>",
])
def test_each_torch_wording_of_a_refusal_is_called_refused(tmp_path, monkeypatch, wording):
    import pickle

    path = registered_checkpoint(tmp_path)

    def refuse(*a, **k):
        raise pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with `weights_only` set to "
                                     f"`False` will likely succeed ...\nWeightsUnpickler error: {wording}\n")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match="refused") as e:
        load_checkpoint(path)
    assert "corrupt" not in str(e.value) and "\n" not in str(e.value)
