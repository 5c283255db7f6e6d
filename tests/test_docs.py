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
