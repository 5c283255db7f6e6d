"""checkpoint.py's promises on small, hand-made files: what a save writes, which files and
references a load refuses, and that a model is rebuilt with the options it was trained with.
(Attacks on the loader: test_checkpoint_trust.py; kills and torn files: test_faults.py.)"""

import pytest
import torch
import torch.nn as nn

from eva8_utils import checkpoint as C
from eva8_utils.errors import CheckpointError, ConfigError
from eva8_utils.models import create_model

META = {"num_classes": 3, "classes": ["a", "b", "c"], "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


def _fastnet(tmp_path, name="f.pt", **extra):
    model = create_model("fastnet", 3, width=0.5)
    ck = {"model": model.state_dict(), "model_name": "fastnet",
          "model_ref": {"model": "fastnet", "options": {"width": 0.5}, "imports": []}, **META, **extra}
    path = tmp_path / name
    C.save_checkpoint(path, ck)
    return path, model


def test_a_save_writes_the_format_tag_and_a_load_gives_back_the_same_tensors(tmp_path):
    path, model = _fastnet(tmp_path)
    ck = C.load_checkpoint(path)
    assert ck["format"] == C.FORMAT and ck["model_name"] == "fastnet"
    assert all(torch.equal(ck["model"][k], v) for k, v in model.state_dict().items())


def test_state_bytes_counts_every_tensor_in_nested_state():
    state = {"model": {"w": torch.zeros(10, dtype=torch.float32), "b": torch.zeros(3, dtype=torch.float64)},
             "opt": [torch.zeros(4, dtype=torch.int8), ("x", torch.zeros(2, dtype=torch.bfloat16))], "epoch": 3}
    assert C.state_bytes(state) == 10 * 4 + 3 * 8 + 4 + 2 * 2


def test_weights_that_do_not_fit_the_model_are_refused_not_half_loaded(tmp_path):
    model = create_model("fastnet", 3, width=0.5)
    state = dict(model.state_dict())
    missing = next(iter(state))
    del state[missing]
    with pytest.raises(CheckpointError, match="does not fit this model"):
        C.load_weights(model, state, "x.pt")
    extra = {**model.state_dict(), "stray.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="does not fit this model"):
        C.load_weights(model, extra, "x.pt")


def test_a_file_that_is_not_a_checkpoint_of_ours_is_refused(tmp_path):
    for i, obj in enumerate(({"weights": {}}, [1, 2, 3], {"epoch": 3})):
        torch.save(obj, tmp_path / f"{i}.pt")
        with pytest.raises(CheckpointError, match="not an eva8_utils checkpoint"):
            C.load_checkpoint(tmp_path / f"{i}.pt")


def test_another_model_or_another_number_of_classes_is_refused_and_the_same_is_not():
    ck = {"model_name": "fastnet", "num_classes": 10}
    C.check_compatible(ck, "fastnet", 10)
    with pytest.raises(CheckpointError, match="holds a fastnet with 10 classes, but this run builds a resnet18"):
        C.check_compatible(ck, "resnet18", 10)
    with pytest.raises(CheckpointError, match="builds a fastnet with 100 classes"):
        C.check_compatible(ck, "fastnet", 100)


@pytest.mark.parametrize("n, names", [(0, []), (True, ["a"]), (C.MAX_CLASSES + 1, None), ("3", ["a", "b", "c"]),
                                      (3, ["a", "b"]), (2, ["a", 2])])
def test_a_bad_number_of_classes_or_class_names_is_refused_before_building(tmp_path, n, names):
    path, _ = _fastnet(tmp_path, num_classes=n, classes=names)
    with pytest.raises(CheckpointError, match="num_classes="):
        C.load_model(path)


@pytest.mark.parametrize("n", [1, C.MAX_CLASSES])
def test_the_ends_of_the_class_range_are_accepted(n):
    assert C._num_classes({"num_classes": n, "classes": ["c"] * n}, "x.pt") == n


def test_the_model_is_rebuilt_with_its_stored_options_or_from_its_config(tmp_path):
    path, model = _fastnet(tmp_path)
    rebuilt, _ = C.load_model(path)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())
    # a checkpoint without stored options: rebuilt from its config (the width, the image size)
    legacy = tmp_path / "legacy.pt"
    ck = torch.load(path, weights_only=True)
    ck.pop("model_ref")
    ck["config"] = {"model": "fastnet", "width": 0.5, "imports": [], "not_a_field": 1}
    torch.save(ck, legacy)
    assert sum(p.numel() for p in C.load_model(legacy)[0].parameters()) == sum(p.numel() for p in model.parameters())
    vit = create_model("vit_tiny", 3, image_size=16)
    torch.save({"model": vit.state_dict(), "model_name": "vit_tiny", "config": {"model": "vit_tiny"}, **META,
                "image_size": 16}, tmp_path / "vit.pt")
    out = C.load_model(tmp_path / "vit.pt")[0](torch.zeros(1, 3, 16, 16))
    assert out.shape == (1, 3)


def test_options_must_be_plain_values_one_list_deep():
    assert C._plain(3) and C._plain(None) and C._plain("x") and C._plain([1, 2.5, "a"]) and C._plain((1, None))
    assert not C._plain(float("nan")) and not C._plain([1, [2]]) and not C._plain({"a": 1}) and not C._plain(b"x")
    assert not C._plain([object()])


@pytest.mark.parametrize("ref, words", [
    ({"model": ""}, "malformed model reference"),
    ({"model": 5}, "malformed model reference"),
    ("fastnet", "malformed model reference"),
    ({"model": "x" * 201}, "not a model name"),
    ({"model": "fast net"}, "not a model name"),
    ({"model": "a:b:c d"}, "not a model name"),
    ({"model": "pkg.mod:"}, "not package.module:callable"),
    ({"model": "fastnet", "imports": ["m"] * 101}, "malformed list of imports"),
    ({"model": "fastnet", "imports": "m"}, "malformed list of imports"),
    ({"model": "fastnet", "imports": ["os; rm"]}, "not a dotted name"),
    ({"model": "fastnet", "options": [1]}, "malformed model options"),
])
def test_a_malformed_reference_in_the_file_is_refused(ref, words):
    with pytest.raises(CheckpointError, match=words):
        C._claimed_reference({"model_ref": ref}, "x.pt")


def test_a_reference_of_200_characters_and_100_imports_is_still_read():
    name = "m" * 200
    ref = C._claimed_reference({"model_ref": {"model": name, "imports": ["m"] * 100}}, "x.pt")
    assert ref["model"] == name and len(ref["imports"]) == 100


def test_an_old_checkpoint_names_its_model_by_its_config_and_a_module_passed_in_is_refused():
    ref = C._claimed_reference({"model_name": "fastnet", "config": {"model": "fastnet", "imports": "mymods"}}, "x")
    assert ref == {"model": "fastnet", "options": None, "imports": ["mymods"]}
    for ck in ({"model_name": "MyNet", "config": {"model": "fastnet"}}, {"model_name": "fastnet", "config": {}},
               {"model_name": "fastnet", "config": ["model", "fastnet"]}):
        with pytest.raises(CheckpointError, match="passed in directly"):
            C._claimed_reference(ck, "x.pt")


def test_the_callers_model_and_imports_are_checked_and_a_plain_string_import_is_one_module(tmp_path):
    path, _ = _fastnet(tmp_path)
    ck = C.load_checkpoint(path)
    assert C.trusted_reference(ck, path, "fastnet")["model"] == "fastnet"
    assert C.trusted_reference(ck, path, None, "eva8_utils.models")["model"] == "fastnet"
    for bad in (5, "pkg:mod:x y", "pkg.mod:"):
        with pytest.raises(ConfigError, match="is not a model name or package.module:callable"):
            C.trusted_reference(ck, path, bad)
    with pytest.raises(ConfigError, match="is not a module name"):
        C.trusted_reference(ck, path, None, ["not a module"])
    with pytest.raises(CheckpointError, match="holds the model fastnet, not resnet18"):
        C.trusted_reference(ck, path, "resnet18")


def test_an_unregistered_model_name_without_imports_is_refused(tmp_path):
    ck = {"model_ref": {"model": "nosuchnet", "options": None, "imports": []}, **META, "model": {}}
    with pytest.raises(CheckpointError, match="that is not registered"):
        C.trusted_reference(ck, "x.pt")


class _NoMeta(nn.Module):
    """A constructor that reads a value, so that it cannot run on the meta device."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(4, num_classes)
        self.scale = float(torch.ones(1).sum().item())

    def forward(self, x):
        return self.fc(x.flatten(1)[:, :4]) * self.scale


def test_a_model_that_cannot_be_built_on_the_meta_device_still_loads(tmp_path, monkeypatch):
    import sys
    import types

    mod = types.ModuleType("nometa_models")
    mod.NoMeta = _NoMeta
    monkeypatch.setitem(sys.modules, "nometa_models", mod)
    torch.save({"model": _NoMeta(3).state_dict(), "model_name": "NoMeta", **META,
                "model_ref": {"model": "nometa_models:NoMeta", "options": {}, "imports": []}}, tmp_path / "n.pt")
    model, _ = C.load_model(tmp_path / "n.pt", model="nometa_models:NoMeta")
    assert isinstance(model, _NoMeta) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_a_save_whose_writer_fails_with_an_os_error_inside_torch_raises_that_os_error(tmp_path, monkeypatch):
    import errno

    def save(obj, fh):
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    path, _ = _fastnet(tmp_path)
    monkeypatch.setattr(C.torch, "save", save)
    with pytest.raises(OSError) as e:
        C.save_checkpoint(path, {"model": {}})
    assert e.value.errno == errno.EIO and not isinstance(e.value, RuntimeError)
    monkeypatch.undo()
    assert C.load_checkpoint(path)["model_name"] == "fastnet"  # the old file is whole

    def other(obj, fh):
        raise RuntimeError("not a disk problem")

    monkeypatch.setattr(C.torch, "save", other)
    with pytest.raises(RuntimeError, match="not a disk problem"):
        C.save_checkpoint(path, {"model": {}})


def test_weights_that_are_not_a_mapping_are_refused(tmp_path):
    path, _ = _fastnet(tmp_path)
    ck = torch.load(path, weights_only=True)
    ck["model"] = [1, 2, 3]
    torch.save(ck, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not fit its own model"):
        C.load_model(tmp_path / "list.pt")


def test_an_os_error_deeper_in_the_chain_is_still_the_one_raised():
    def chain():
        try:
            try:
                raise OSError(28, "No space left on device")
            except OSError:
                raise ValueError("wrapped")
        except ValueError:
            raise RuntimeError("outer")

    with pytest.raises(RuntimeError) as e:
        chain()
    assert C._os_error_in(e.value).errno == 28
    assert C._os_error_in(RuntimeError("no cause")) is None


@pytest.mark.parametrize("ref, imports", [
    ({"model": "fastnet", "options": {"width": "wide"}, "imports": []}, ()),          # the constructor refuses
    ({"model": "no_such_net", "options": {}, "imports": ["json"]}, ["json"]),        # not registered by its import
    ({"model": "fastnet", "options": {"no_such_option": 1}, "imports": []}, ()),     # an option it does not take
])
def test_a_model_that_cannot_be_rebuilt_is_one_error_naming_the_file(tmp_path, ref, imports):
    path = tmp_path / "x.pt"
    torch.save({"model": {}, "model_name": "m", "model_ref": ref, **META}, path)
    with pytest.raises(CheckpointError) as e:
        C.load_model(path, imports=imports)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError) as e:
        C.load_checkpoint(tmp_path / "missing.pt")
    assert str(tmp_path / "missing.pt") in str(e.value)
