"""The README and docs/ stay true: the flag table in docs/cli.md is the config's, the README's
two Quickstart commands, its images and links present, and its Python API chain runs, reproducibly."""

import re
import subprocess
import sys

import pytest

from conftest import HANG_S, ROOT, cli_env
from eva8_utils.main import flag_table

README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
CLI_DOC = ROOT / "docs" / "cli.md"


def _table_in(text):
    start, end = "<!-- flags:start -->\n", "<!-- flags:end -->"
    assert start in text and end in text, "the flag table's markers are missing"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_the_flag_table_is_generated_from_the_config():
    table, want = _table_in(CLI_DOC.read_text()), flag_table().strip()
    stale = sorted(set(table.splitlines()) ^ set(want.splitlines()))
    assert table == want, "docs/cli.md's flag table is stale; run python tools/update_cli_docs.py. " \
        "Lines that differ:\n" + "\n".join(stale)


def test_the_generator_writes_the_table_the_test_expects(tmp_path):
    import runpy

    render = runpy.run_path(str(ROOT / "tools" / "update_cli_docs.py"), run_name="not_main")["render"]
    stale = "intro\n<!-- flags:start -->\n| old | table |\n<!-- flags:end -->\noutro\n"
    fresh = render(stale)
    assert fresh.startswith("intro\n") and fresh.endswith("\noutro\n")
    assert _table_in(fresh) == flag_table().strip()


def test_the_readme_is_short_and_links_the_reference():
    lines = README.splitlines()
    assert len(lines) <= 250
    first_picture = next(i for i, ln in enumerate(lines) if ln.startswith("!["))
    assert first_picture < 80 and "image/README/resnet18_h200/" in lines[first_picture]
    assert "docs/cli.md" in README and "benchmarks/RESULTS.md" in README


def test_links_in_the_readme_and_docs_point_at_files():
    for doc in [ROOT / "README.md"] + DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{doc.relative_to(ROOT)} links to a missing {target}"


def test_the_docs_speak_of_the_project_only():
    """No development history in the user's documentation (a Colab session is the user's)."""
    words = re.compile(r"(?<!Colab )session|earlier version|old recipe|version 0\.|renamed|OLD_CODE|issue's day",
                       re.IGNORECASE)
    for doc in [ROOT / "README.md"] + DOCS:
        found = words.findall(doc.read_text())
        assert not found, f"{doc.relative_to(ROOT)}: {found}"


def test_quickstart_has_the_two_commands():
    quick = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = [ln for ln in quick.split("```bash", 1)[1].split("```", 1)[0].splitlines() if ln.strip()]
    assert len(commands) == 2
    assert commands[0].startswith("pip install -r requirements.txt && python -m eva8_utils.main")
    assert commands[1].startswith("pip install -r requirements-dev.txt && python -m pytest")


def test_images_the_readme_shows_exist():
    shown = re.findall(r"\]\((image/README/[^)]+\.png)\)", README)
    assert shown, "the README shows no images"
    for rel in shown:
        assert (ROOT / rel).is_file(), rel


API_ORIGINAL = 'dict(dataset="folder", data_dir="cifar10-jpeg", recipe="fast", epochs=8)'
API_SMALL = ('dict(dataset="shapes", shapes_train=384, shapes_test=96, recipe="fast", epochs=2, low_res_epochs=1, '
             'batch_size=64, progress=False)')


def _api_code(run_dir, image):
    block = README.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert API_ORIGINAL in block and '"runs/api"' in block and '"my_cat.jpg"' in block
    return (block.replace(API_ORIGINAL, API_SMALL).replace('"runs/api', '"' + str(run_dir))
            .replace('"my_cat.jpg"', repr(str(image))))


@pytest.mark.slow
def test_the_python_api_example_runs_and_is_reproducible(tmp_path):
    """The README's chain, run twice in fresh processes: the same history.csv (seeded where the
    run is assembled, not only in the CLI)."""
    from PIL import Image

    from eva8_utils.data import make_shapes

    image = tmp_path / "cat.png"
    Image.fromarray(make_shapes(1, 1, seed=0).x_test[0]).save(image)
    histories = []
    for i in range(2):
        run_dir = tmp_path / f"api{i}"
        code = _api_code(run_dir, image) + "\nprint('top', rows[0]['top'][0][0], cams.shape)\n"
        p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S,
                           env=cli_env(MPLBACKEND="Agg"))
        assert p.returncode == 0, p.stderr[-3000:]
        assert "top " in p.stdout and "(10, 32, 32)" in p.stdout
        assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "report.md").is_file()
        histories.append((run_dir / "history.csv").read_text())
    assert histories[0] == histories[1] and len(histories[0].splitlines()) == 3


def test_the_notebook_is_written_by_its_generator_and_keeps_its_default_parameters():
    import json
    import runpy

    pytest.importorskip("nbformat")  # the generator's own tool (requirements-dev.txt)
    cells = runpy.run_path(str(ROOT / "tools" / "make_notebook.py"), run_name="cells_only")["cells"]
    nb = json.loads((ROOT / "S7.ipynb").read_text())
    assert [c["source"] for c in cells] == ["".join(c["source"]) for c in nb["cells"]], \
        "edit tools/make_notebook.py, then regenerate S7.ipynb as its intro says"
    assert not [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert "papermill" not in nb["metadata"]  # python tools/make_notebook.py --clean after papermill


def _own_loop_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Your own loop"):]
    return section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]


def test_the_own_loop_example_runs_as_written(tmp_path):
    """The README's plain loop: at most 15 lines of code, no TrainConfig, and what it promises comes out
    (the test line per epoch, a history with both epochs, the two figures)."""
    code = _own_loop_code()
    lines = [ln for ln in code.strip().splitlines() if ln.strip() and not ln.startswith(("import", "from"))]
    assert len(lines) <= 15 and "TrainConfig" not in code and "build_config" not in code
    check = code + ("\nprint('epochs', history['epoch'], len(history['steps']))"
                    "\nprint('figures', type(mistakes).__name__, type(cams).__name__)\n")
    p = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S,
                       env=cli_env(MPLBACKEND="Agg"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "epochs [1, 2] 4" in p.stdout and "figures Figure Figure" in p.stdout
    assert len(re.findall(r"Test set: Average loss: \d+\.\d{4}, Accuracy: \d+/128 \(", p.stderr + p.stdout)) == 2
    for name in ("curves.png", "mistakes.png", "gradcam.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name


def test_the_mutation_script_lists_existing_test_files_and_refuses_an_unknown_module(capsys):
    import runpy

    tool = runpy.run_path(str(ROOT / "tools" / "mutation.py"), run_name="as_module")
    for module, tests in tool["MODULE_TESTS"].items():
        assert (ROOT / "eva8_utils" / f"{module}.py").is_file(), module
        for t in tests + tool["DESELECT"] + tool["RERUN_TESTS"].get(module, []):
            path, _, name = t.partition("::")
            assert (ROOT / path).is_file(), t
            assert not name or f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), t
    assert set(tool["RERUN_TESTS"]) <= set(tool["MODULE_TESTS"])
    assert tool["main"](["--list"]) == 0 and "rundir" in capsys.readouterr().out
    assert tool["main"](["nosuchmodule"]) == 2 and "no test files listed for nosuchmodule" in capsys.readouterr().out
