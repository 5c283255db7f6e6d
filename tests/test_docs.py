"""The README stays true: every flag documented, the two Quickstart commands, images present."""

import re
from dataclasses import fields

from conftest import ROOT
from eva8_utils.config import TrainConfig

README = (ROOT / "README.md").read_text()


def test_every_flag_is_in_the_readme_table():
    missing = [f.name for f in fields(TrainConfig) if f"`--{f.name.replace('_', '-')}" not in README]
    assert missing == []


def test_quickstart_has_the_two_commands():
    assert "pip install -r requirements.txt && python -m eva8_utils.main" in README
    assert "pip install -r requirements-dev.txt && python -m pytest" in README


def test_images_the_readme_shows_exist():
    shown = re.findall(r"\]\((image/README/[^)]+\.png)\)", README)
    assert shown, "the README shows no images"
    for rel in shown:
        assert (ROOT / rel).is_file(), rel


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    """The README's API example, on a small shapes set instead of the CIFAR folder."""
    block = README.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    original = 'dict(dataset="folder", data_dir="cifar10-jpeg", recipe="fast", epochs=6)'
    assert original in block
    code = block.replace(original, 'dict(dataset="shapes", shapes_train=512, shapes_test=128, recipe="fast", '
                                   'epochs=1, progress=False)')
    code = code.replace('run_dir="runs/api"', f'run_dir={str(tmp_path / "api")!r}')
    monkeypatch.setenv("MPLBACKEND", "Agg")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - running the documented example
    assert scope["cams"].shape == (10, 32, 32)
    assert (tmp_path / "api" / "checkpoints" / "last.pt").is_file()
