"""Shared helpers: run the CLI in a subprocess or in-process, tiny datasets, one trained smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist (``-n``), each worker gets one core: torch in the worker and in the CLI
# processes it starts uses one thread, so that two workers do not fight over two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def build_once(root: Path, name: str, build) -> Path:
    """``root/shared-NAME``, filled by ``build(folder)`` unless an earlier call did, under a file
    lock, so that parallel processes wait for one build and reuse it. A build that fails
    leaves no mark, so the next caller tries again (and fails the same way)."""
    import fcntl
    import shutil

    folder, built = root / f"shared-{name}", root / f"shared-{name}.built"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            built.touch()
    return folder


def shared_between_workers(tmp_path_factory, name: str, build) -> Path:
    """A folder that ``build(folder)`` fills once per pytest run, also under pytest-xdist:
    the workers share the run's common temporary folder (:func:`build_once`)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # .../pytest-N: shared by the workers of this pytest run
    return build_once(root, name, build)


# A subprocess's time limit: a guard against a hang, never a speed check, so that no test's
# outcome depends on how busy the machine is (the longest test takes about 4 minutes alone on
# 2 cores, and several times that beside another worker). Speed goals live in benchmarks/.
HANG_S = 1200

# A tiny, fast configuration for end-to-end runs on CPU.
TINY = ["--dataset", "shapes", "--shapes-train", "256", "--shapes-test", "64", "--model", "fastnet",
        "--batch-size", "64", "--no-progress", "--no-analysis", "--tta", "none", "--seed", "3"]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = HANG_S, **env: str) -> subprocess.CompletedProcess:
    """``python -m eva8_utils.main ARGS``; returns the completed process (returncode, stdout, stderr).

    Runs in this process (the CLI's ``main``, output captured): starting Python and importing
    torch costs seconds per call. Given environment variables (e.g. ``PYTHONPATH`` for a
    user's module, ``OMP_NUM_THREADS``), it starts a real process with them.
    """
    if env:
        return subprocess.run([sys.executable, "-m", "eva8_utils.main", *args], cwd=cwd or ROOT,
                              env=cli_env(**env), capture_output=True, text=True, timeout=timeout)
    return run_in_process(args, cwd)


def run_in_process(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI's ``main(args)`` in this process, stdout/stderr captured, the working folder and
    the package's log handlers restored afterwards."""
    import contextlib
    import io
    import logging

    from eva8_utils.main import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse --help
                code = e.code if isinstance(e.code, int) else 0
    finally:
        os.chdir(here)
        log = logging.getLogger("eva8_utils")
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


SMOKE_ARGS = ["--dataset", "shapes", "--model", "fastnet", "--epochs", "3", "--no-progress"]


def build_smoke_run(folder: Path) -> None:
    proc = run_cli(SMOKE_ARGS + ["--out", str(folder / "run")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The documented smoke run: fastnet on shapes for 3 epochs, with the full analysis."""
    return shared_between_workers(tmp_path_factory, "smoke", build_smoke_run) / "run"


def pytest_sessionstart(session):
    """With workers, the controller process has nothing to do while they run: it starts the
    smoke run at once, in the background, through :func:`build_once` (the same lock), so that
    no worker sits waiting for it later. If that build fails, the first test that needs the
    run builds it again and shows why."""
    config = session.config
    whole_suite = not config.option.keyword and all(Path(a).resolve() in (ROOT, ROOT / "tests") for a in config.args)
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None) or not whole_suite:
        return
    code = "import sys, conftest; conftest.build_once(conftest.Path(sys.argv[1]), 'smoke', conftest.build_smoke_run)"
    root = config._tmp_path_factory.getbasetemp()
    config._eva8_prebuild = subprocess.Popen(
        [sys.executable, "-c", code, str(root)], cwd=ROOT,
        env=cli_env(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")])),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pytest_collection_modifyitems(config, items):
    """The tests that read the smoke run go last, which gives its background build time."""
    items.sort(key=lambda item: "smoke_run" in getattr(item, "fixturenames", ()))  # stable


def pytest_sessionfinish(session):
    proc = getattr(session.config, "_eva8_prebuild", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def shapes_small():
    from eva8_utils.data import make_shapes

    return make_shapes(512, 200, seed=5)
