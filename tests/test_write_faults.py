"""Faults a Colab run meets: a full disk or Drive quota, a Drive that drops, memory that runs out.

Every write of a run goes through ``utils._commit`` (fsync + rename of a temporary file);
the tests make it raise an OSError for one file from its n-th write on, and check the one
line on stderr, exit code 2, what metrics.json says, that no temporary file is left, and
that ``--resume`` then gives the history of a run that never failed (same seed).
"""

import errno
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY, read_metrics, run_cli, shared_between_workers
from eva8_utils import utils
from eva8_utils.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.fault

ARGS = TINY + ["--epochs", "3"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    def build(folder):
        proc = run_cli(ARGS + ["--out", str(folder / "run")])
        assert proc.returncode == 0, proc.stderr[-2000:]

    return shared_between_workers(tmp_path_factory, "write-faults-straight", build) / "run"


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(utils, "RETRY_DELAYS", (0.0, 0.0, 0.0))


def fail_writes(monkeypatch, name: str, code: int, first: int, last: int | None = None) -> list[int]:
    """Writes of the file ``name`` number ``first`` to ``last`` (default: all after) raise
    OSError(code); returns the list of attempts, one entry per write of ``name``."""
    real, attempts = utils._commit, []

    def commit(tmp, path):
        if Path(path).name == name:
            attempts.append(1)
            if len(attempts) >= first and (last is None or len(attempts) <= last):
                raise OSError(code, os.strerror(code))
        real(tmp, path)

    monkeypatch.setattr(utils, "_commit", commit)
    return attempts


def temporary_files(run: Path) -> list[str]:
    return [p.name for p in run.rglob("*.tmp")]


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def epochs_in(run: Path) -> tuple[int, int]:
    """The last finished epoch as history.csv and checkpoints/last.pt say it (0: none)."""
    rows = len((run / "history.csv").read_text().splitlines()) - 1 if (run / "history.csv").exists() else 0
    last = run / "checkpoints" / "last.pt"
    return rows, int(load_checkpoint(last)["epoch"]) if last.exists() else 0


def resumes_to_the_straight_history(run: Path, straight: Path) -> None:
    proc = run_cli(["--out", str(run), "--resume", "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "history.csv").read_text() == (straight / "history.csv").read_text()
    assert (run / "steps.csv").read_text() == (straight / "steps.csv").read_text()
    assert read_metrics(run)["status"] == "done"


def improving_epochs(straight: Path) -> list[int]:
    rows = [line.split(",") for line in (straight / "history.csv").read_text().splitlines()[1:]]
    best, out = -1.0, []
    for row in rows:
        if float(row[4]) > best:
            best = float(row[4])
            out.append(int(row[0]))
    return out


def test_disk_full_at_last_pt_of_epoch_2(monkeypatch, tmp_path, straight):
    run = tmp_path / "run"
    fail_writes(monkeypatch, "last.pt", errno.ENOSPC, first=2)
    line = one_line(run_cli(ARGS + ["--out", str(run)]))
    assert f"cannot write {run / 'checkpoints' / 'last.pt'}: no space left on the device" in line
    assert "checkpoints/last.pt needs about " in line and " MB" in line
    assert line.endswith(f"--out {run} --resume to continue from the last complete checkpoint, "
                         f"checkpoints/last.pt after epoch 1")
    m = read_metrics(run)
    assert m["status"] == "failed" and m["error"] == "WriteError: " + line[len("error: "):]
    assert m["epochs"] == 1 and epochs_in(run) == (1, 1)
    assert temporary_files(run) == []
    monkeypatch.undo()
    resumes_to_the_straight_history(run, straight)


def test_quota_at_best_pt_puts_the_epoch_back(monkeypatch, tmp_path, straight):
    """best.pt fails after last.pt of the same epoch was written: last.pt and history.csv
    go back to the previous epoch, so that they agree."""
    better = improving_epochs(straight)
    nth = 2 if len(better) >= 2 else 1
    epoch = better[nth - 1]
    run = tmp_path / "run"
    fail_writes(monkeypatch, "best.pt", errno.EDQUOT, first=nth)
    line = one_line(run_cli(ARGS + ["--out", str(run)]))
    assert f"cannot write {run / 'checkpoints' / 'best.pt'}: disk quota exceeded" in line
    if epoch > 1:
        assert line.endswith(f"checkpoints/last.pt after epoch {epoch - 1}")
    else:
        assert line.endswith("(no complete checkpoint yet: it starts from the beginning)")
    assert epochs_in(run) == (epoch - 1, epoch - 1)
    m = read_metrics(run)
    assert m["status"] == "failed" and m["epochs"] == epoch - 1
    assert temporary_files(run) == []
    monkeypatch.undo()
    resumes_to_the_straight_history(run, straight)


def test_a_drive_that_stays_gone_at_history_csv_is_retried_then_one_line(monkeypatch, tmp_path, straight):
    run = tmp_path / "run"
    attempts = fail_writes(monkeypatch, "history.csv", errno.EIO, first=2)
    proc = run_cli(ARGS + ["--out", str(run)])
    line = one_line(proc)
    assert len(attempts) == 1 + 4  # epoch 1, then epoch 2: the write and three retries
    assert proc.stdout.count("retrying up to 3 times") == 1
    assert f"cannot write {run / 'history.csv'}: input/output error (the drive may have disconnected)" in line
    assert "drive.mount('/content/drive', force_remount=True)" in line
    assert line.endswith("checkpoints/last.pt after epoch 1")
    assert epochs_in(run) == (1, 1) and read_metrics(run)["status"] == "failed"
    assert temporary_files(run) == []
    monkeypatch.undo()
    resumes_to_the_straight_history(run, straight)


def test_a_drive_that_comes_back_is_a_retry_and_the_run_goes_on(monkeypatch, tmp_path, straight):
    run = tmp_path / "run"
    attempts = fail_writes(monkeypatch, "last.pt", errno.ENOTCONN, first=2, last=3)
    proc = run_cli(ARGS + ["--out", str(run)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(attempts) == 3 + 2  # three epochs, two failed attempts in epoch 2
    log = (run / "log.txt").read_text()
    assert log.count("failed (the drive disconnected); retrying up to 3 times") == 1
    assert (run / "history.csv").read_text() == (straight / "history.csv").read_text()
    assert read_metrics(run)["status"] == "done" and temporary_files(run) == []


def test_metrics_json_that_cannot_be_written_is_said_in_the_line(monkeypatch, tmp_path, straight):
    """metrics.json fails at the end of epoch 2 (its 3rd write): the epoch's checkpoint and
    history are complete, and marking the run failed cannot be written either."""
    run = tmp_path / "run"
    fail_writes(monkeypatch, "metrics.json", errno.ENOSPC, first=3)
    line = one_line(run_cli(ARGS + ["--out", str(run)]))
    assert f"cannot write {run / 'metrics.json'}: no space left on the device" in line
    assert "checkpoints/last.pt after epoch 2" in line
    assert line.endswith("metrics.json could not be updated either (no space left on the device): it still says "
                         "running")
    assert read_metrics(run)["status"] == "running" and epochs_in(run) == (2, 2)
    assert temporary_files(run) == []
    monkeypatch.undo()
    resumes_to_the_straight_history(run, straight)


@pytest.mark.parametrize("name", ["curves.png", "report.md"])
def test_a_picture_or_report_that_cannot_be_written_is_a_warning(monkeypatch, tmp_path, name):
    run = tmp_path / "run"
    fail_writes(monkeypatch, name, errno.ENOSPC, first=1)
    proc = run_cli(TINY[:-4] + ["--epochs", "1", "--analysis", "--num-images", "2", "--out", str(run)])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    where = "images/curves.png" if name == "curves.png" else "report.md"
    warning = (f"{where} could not be written (no space left on the device); training and checkpoints are saved: "
               f"redo the pictures and the report later with: eva8 analyse --out {run}")
    assert warning in proc.stdout
    m = read_metrics(run)
    assert m["status"] == "done" and warning in m["warnings"]
    assert not (run / where).exists() and temporary_files(run) == []
    assert (run / "images" / "confusion_matrix.png").is_file()  # the other pictures are drawn
    monkeypatch.undo()
    if name == "curves.png":  # the analysis again, from the checkpoint
        proc = run_cli(["analyse", "--out", str(run)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (run / "images" / "curves.png").is_file() and (run / "report.md").is_file()
        again = read_metrics(run)
        assert again["status"] == "done" and again["test_acc"] == m["test_acc"] and again["epochs"] == 1


_OOM = {"cuda": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        "cpu": lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 "
                                    "bytes. Error code 12 (Cannot allocate memory)"),
        "memoryerror": MemoryError}


def patch_forward(monkeypatch, error, after: int) -> None:
    """fastnet's forward raises ``error()`` on full batches (64 images) after ``after`` calls."""
    from eva8_utils.models.fastnet import FastNet

    real, calls = FastNet.forward, []

    def forward(self, x):
        if x.shape[0] == 64:
            calls.append(1)
            if len(calls) > after:
                raise error()
        return real(self, x)

    monkeypatch.setattr(FastNet, "forward", forward)


@pytest.mark.parametrize("kind", sorted(_OOM))
def test_out_of_memory_in_training_is_one_line_and_the_run_resumes(monkeypatch, tmp_path, straight, kind):
    run = tmp_path / "run"
    patch_forward(monkeypatch, _OOM[kind], after=6)  # epoch 1: 4 training + 1 test batch; then epoch 2
    line = one_line(run_cli(ARGS + ["--out", str(run)]))
    assert line.startswith("error: out of memory in training at batch size 64 (fastnet, ")
    assert "try --batch-size 32" in line and "--overwrite" in line
    assert line.endswith("which continues from the last complete checkpoint, checkpoints/last.pt after epoch 1)")
    m = read_metrics(run)
    assert m["status"] == "failed" and m["error"].startswith("OutOfMemory: out of memory in training")
    assert epochs_in(run) == (1, 1) and temporary_files(run) == []
    monkeypatch.undo()
    resumes_to_the_straight_history(run, straight)


def test_out_of_memory_while_evaluating_says_so(monkeypatch, tmp_path):
    run = tmp_path / "run"
    patch_forward(monkeypatch, _OOM["cuda"], after=4)  # epoch 1: 4 training batches, then the test batch
    line = one_line(run_cli(ARGS + ["--out", str(run)]))
    assert line.startswith("error: out of memory in the evaluation of the test split (training) at batch size 64")
    assert read_metrics(run)["status"] == "failed" and epochs_in(run) == (0, 0)


def test_out_of_memory_in_the_lr_finder_is_one_line_and_writes_nothing(monkeypatch, tmp_path):
    run = tmp_path / "run"
    patch_forward(monkeypatch, _OOM["cuda"], after=3)
    line = one_line(run_cli(ARGS + ["--lr-find", "--out", str(run)]))
    assert line.startswith("error: out of memory in the LR range test (--lr-find / --lr auto) at batch size 64")
    assert "try --batch-size 32" in line and line.endswith("nothing was written")
    assert not run.exists()


def test_a_checkpoint_write_that_fills_the_disk_raises_the_os_error(monkeypatch, tmp_path):
    """torch.save meets ENOSPC in the middle of its zip file (its writer then raises a
    RuntimeError): the OSError comes out, the old checkpoint stays, no temporary file."""
    import builtins

    from eva8_utils import checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(10)}, "epoch": 1})

    class Full:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, b):
            self.written += len(b)
            if self.written > 100_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(b)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(checkpoint, "open", lambda *a, **k: Full(builtins.open(*a, **k)), raising=False)
    with pytest.raises(OSError) as e:
        save_checkpoint(path, {"model": {"w": torch.zeros(1_000_000)}, "epoch": 2}, keep_previous=True)
    assert e.value.errno == errno.ENOSPC and e.value.__suppress_context__
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_roll_back_that_cannot_be_written_is_said_and_resume_repairs_it(monkeypatch, tmp_path, straight):
    """last.pt of epoch 2 fails and history.csv cannot be put back either: the line says so,
    and --resume rewrites history.csv from the checkpoint it continues from."""
    run = tmp_path / "run"
    fail_writes(monkeypatch, "last.pt", errno.ENOSPC, first=2)
    fail_writes(monkeypatch, "history.csv", errno.ENOSPC, first=3)  # the roll-back's write
    line = one_line(run_cli(ARGS + ["--out", str(run)]))
    assert "checkpoints/last.pt after epoch 1; history.csv (no space left on the device) could not be put back to " \
           "that epoch (--resume rewrites them)" in line
    assert epochs_in(run) == (2, 1) and temporary_files(run) == []
    monkeypatch.undo()
    patch_forward(monkeypatch, _OOM["cpu"], after=0)  # a resume that stops at its first batch
    one_line(run_cli(["--out", str(run), "--resume", "--no-progress"]))
    assert epochs_in(run) == (1, 1)  # history.csv was rewritten from the checkpoint when the resume started
    monkeypatch.undo()
    resumes_to_the_straight_history(run, straight)
