"""Shared helpers: run the CLI in a subprocess or in-process, tiny datasets, one trained smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``python -m eva8_utils.main ARGS`` in a subprocess; returns the completed process."""
    return subprocess.run([sys.executable, "-m", "eva8_utils.main", *args], cwd=cwd or ROOT, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The documented smoke run: fastnet on shapes for 3 epochs, with the full analysis."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    proc = run_cli(["--dataset", "shapes", "--model", "fastnet", "--epochs", "3", "--out", str(out),
                    "--no-progress"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def shapes_small():
    from eva8_utils.data import make_shapes

    return make_shapes(512, 200, seed=5)
