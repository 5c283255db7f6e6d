"""torchrun with gloo on CPU: 2 ranks x batch B == 1 process x batch 2B (no BatchNorm)."""

import json
import subprocess
import sys
import time

import pytest
import torch

from conftest import HANG_S, ROOT, cli_env, read_metrics, run_cli, shared_between_workers
from eva8_utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

COMMON = ["--dataset", "shapes", "--shapes-train", "512", "--shapes-test", "101", "--model", "fastnet",
          "--norm", "layer", "--width", "0.5", "--epochs", "2", "--no-analysis", "--tta", "none", "--seed", "5",
          "--precision", "fp32", "--no-progress", "--lr", "0.2"]


def _torchrun(args, nproc=2, timeout=HANG_S):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "eva8_utils.main", *args]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=timeout)


def _assert_finished(proc, out):
    """The torchrun run succeeded. One exception is tolerated, with a warning: a rank killed by
    SIGABRT while gloo shuts down *after* the run finished (rank 0 logged "done" and wrote
    metrics.json with status done). This was seen once in CI on 2 cores and not reproduced
    in 18 local repeats, with or without extra CPU load."""
    if proc.returncode == 0:
        return
    finished = "done: test accuracy" in proc.stdout and read_metrics(out).get("status") == "done"
    assert finished and "SIGABRT" in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    import warnings

    warnings.warn("a rank aborted during gloo shutdown after the run had finished")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    def build(base):
        t0 = time.perf_counter()
        two = _torchrun(COMMON + ["--batch-size", "32", "--out", str(base / "two")])
        t_two = time.perf_counter() - t0
        _assert_finished(two, base / "two")
        t0 = time.perf_counter()
        one = run_cli(COMMON + ["--batch-size", "64", "--out", str(base / "one")], OMP_NUM_THREADS="1")
        t_one = time.perf_counter() - t0
        assert one.returncode == 0, one.stderr[-3000:]
        (base / "timing.json").write_text(json.dumps({"two_ranks_s": t_two, "one_process_s": t_one}))

    return shared_between_workers(tmp_path_factory, "ddp", build)


def test_two_ranks_give_the_same_weights_as_one_process_with_double_batch(runs):
    base = runs
    a = load_checkpoint(base / "two" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(base / "one" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in a)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"max |w_2ranks - w_1proc| after 2 epochs: {diff:.3g}; timing {(base / 'timing.json').read_text()}")
    assert diff < 1e-4
    ha, hb = (read_metrics(base / n) for n in ("two", "one"))
    assert ha["test_acc"] == pytest.approx(hb["test_acc"], abs=1e-9)
    assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4)


def test_every_test_image_is_counted_once_and_only_rank0_writes(runs):
    base = runs
    log = (base / "two" / "log.txt").read_text()
    assert log.count("/101 (") == 2  # 101 test images over 2 ranks, each counted once, per epoch
    assert "x 2 ranks" in log and "batch 32 x 2" in log
    assert log.count("EPOCH: 1/2") == 1  # only rank 0 logs
    assert sorted(p.name for p in (base / "two").iterdir()) == sorted(p.name for p in (base / "one").iterdir())


def test_a_checkpoint_from_two_ranks_resumes_in_one_process_and_back(runs, tmp_path):
    base = runs
    import shutil

    def rewind(run):
        """As if the run had been killed after epoch 1: its prev.pt, metrics.json still "running"."""
        (run / "checkpoints" / "last.pt").unlink()  # fall back to prev.pt (epoch 1)
        m = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**m, "status": "running"}))

    # Rewind each run to epoch 1 and finish it under the other world size.
    out = tmp_path / "two_to_one"
    shutil.copytree(base / "two", out)
    rewind(out)
    proc = run_cli(["--out", str(out), "--resume", "--batch-size", "64"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(base / "one" / "checkpoints" / "last.pt")["model"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    out = tmp_path / "one_to_two"
    shutil.copytree(base / "one", out)
    rewind(out)
    proc = _torchrun(["--out", str(out), "--resume", "--batch-size", "32"])
    _assert_finished(proc, out)
    a = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(base / "two" / "checkpoints" / "last.pt")["model"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
