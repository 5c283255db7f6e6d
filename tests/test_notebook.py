"""S7.ipynb is the CLI, cell by cell: same run folder, same history; re-running it resumes or shows, never replaces."""

import ast
import json
import shutil

import pytest

from conftest import HANG_S, ROOT, read_metrics, run_cli

pytestmark = pytest.mark.slow

PARAMS = dict(DATASET="shapes", MODEL="fastnet", EPOCHS=2, BATCH_SIZE=128, MAX_LR=0.4, SEED=2,
              SAVE_README_IMAGES=False, RUN_LR_FINDER=True, USE_DRIVE=True, NUM_IMAGES=6,
              EXTRA={"shapes_train": 512, "shapes_test": 128, "lr_find_iters": 10, "progress": False, "width": 0.5})
CLI_ARGS = ["--dataset", "shapes", "--model", "fastnet", "--epochs", "2", "--batch-size", "128", "--lr", "0.4",
            "--seed", "2", "--shapes-train", "512", "--shapes-test", "128", "--lr-find", "--lr-find-iters", "10",
            "--no-progress", "--width", "0.5", "--num-images", "6"]


def _execute(tmp_path, name, **params):
    papermill = pytest.importorskip("papermill")
    import nbformat

    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(ROOT / "S7.ipynb"), str(out), parameters={**PARAMS, **params}, cwd=str(ROOT),
                               kernel_name="python3", progress_bar=False, execution_timeout=HANG_S)
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    return nb, text, images


@pytest.mark.heavy
def test_the_notebook_is_the_cli_cell_by_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    readme_images = ROOT / "image" / "README"
    before = {p.name: p.stat().st_mtime_ns for p in readme_images.glob("*.png")}
    run_dir = tmp_path / "nbrun"

    # 1. a new run, with the optional norm sweep
    nb, text, images = _execute(tmp_path, "first", RUN_DIR=str(run_dir), RUN_NORM_SWEEP=True, SWEEP_EPOCHS=1)
    assert "| new run" in text and "precision: " in text
    assert "Test set: Average loss:" in text and "/128 (" in text and "LR finder: " in text
    assert images >= 9  # samples, LR finder, curves, misclassified, gradcam, confusion, per-class, sweep figures
    for name in ("config.yaml", "log.txt", "summary.txt", "history.csv", "steps.csv", "report.md",
                 "checkpoints/last.pt", "images/curves.png", "images/gradcam.png", "images/samples.png",
                 "images/lr_finder.png", "images/confusion_matrix.png", "images/per_class_accuracy.png"):
        assert (run_dir / name).is_file(), name
    m = read_metrics(run_dir)
    assert m["status"] == "done" and "cam_road_correct" in m and "per_class_acc" in m
    assert (tmp_path / "nbrun-norms" / "compare.md").is_file()
    assert len(list((tmp_path / "nbrun-norms").glob("misclassified_norm-*.png"))) == 3
    for cell in nb.cells:  # the package does the work: no function or class is defined in the notebook
        if cell.cell_type == "code":
            src = "\n".join(ln[: len(ln) - len(ln.lstrip())] + "pass" if ln.strip().startswith(("%", "!")) else ln
                            for ln in cell.source.splitlines())
            assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda, ast.AsyncFunctionDef))
                           for n in ast.walk(ast.parse(src))), cell.source[:80]
    assert {p.name: p.stat().st_mtime_ns for p in readme_images.glob("*.png")} == before

    # 2. the CLI with the same settings writes the same history
    cli = tmp_path / "cli"
    proc = run_cli(CLI_ARGS + ["--out", str(cli)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    history = (run_dir / "history.csv").read_text()
    assert (cli / "history.csv").read_text() == history
    assert (cli / "steps.csv").read_text() == (run_dir / "steps.csv").read_text()
    assert set(p.name for p in cli.iterdir()) == set(p.name for p in run_dir.iterdir())

    # 3. run all again: a finished run is shown, not retrained, not changed
    last = (run_dir / "checkpoints" / "last.pt").read_bytes()
    metrics_before = (run_dir / "metrics.json").read_text()
    _, text, images = _execute(tmp_path, "again", RUN_DIR=str(run_dir))
    assert "| finished: showing it" in text and "EPOCH: " not in text and images >= 5
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == last
    assert (run_dir / "metrics.json").read_text() == metrics_before

    # 4. a run cut off after epoch 1 (as after a Colab disconnect) is resumed to the same history
    shutil.copy(run_dir / "checkpoints" / "prev.pt", run_dir / "checkpoints" / "last.pt")
    m = json.loads(metrics_before)
    m["status"] = "running"
    (run_dir / "metrics.json").write_text(json.dumps(m))
    _, text, _ = _execute(tmp_path, "resumed", RUN_DIR=str(run_dir))
    assert "| resuming" in text and "EPOCH: 2/2" in text and "EPOCH: 1/2" not in text
    assert (run_dir / "history.csv").read_text() == history and read_metrics(run_dir)["status"] == "done"

    # 5. OVERWRITE starts over; other settings without it are refused with the reason
    with pytest.raises(Exception) as e:
        _execute(tmp_path, "other", RUN_DIR=str(run_dir), EPOCHS=3)
    assert "holds a run with other settings (epochs 2 there vs 3 here)" in str(e.value)
    _, text, _ = _execute(tmp_path, "overwrite", RUN_DIR=str(run_dir), OVERWRITE=True)
    assert "| starting over (OVERWRITE)" in text and "EPOCH: 1/2" in text
    assert (run_dir / "history.csv").read_text() == history
    assert (run_dir / "log.txt").read_text().count("run folder: ") == 1  # the old log was replaced


def test_a_wrong_parameter_stops_the_notebook_with_one_line_and_writes_nothing(tmp_path):
    papermill = pytest.importorskip("papermill")
    import nbformat

    out, run_dir = tmp_path / "bad.ipynb", tmp_path / "badrun"
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(ROOT / "S7.ipynb"), str(out), cwd=str(ROOT), kernel_name="python3",
                                   progress_bar=False, execution_timeout=HANG_S,
                                   parameters=dict(DATASET="shapes", RECIPE="fast", EPOCHS=5, USE_DRIVE=False,
                                                   RUN_DIR=str(run_dir)))
    assert e.value.ename == "ConfigError" and "--low-res-epochs must be >= 0 and < --epochs (5)" in e.value.evalue
    errors = [o for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert [o.traceback for o in errors] == [[f"error: {e.value.evalue}"]]  # the line, no traceback
    assert not run_dir.exists()
