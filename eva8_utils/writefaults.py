"""What a run folder says when a write fails: a full disk or Drive quota, a Drive that
dropped, a folder that became read-only.

:class:`WriteFaults` remembers the last complete checkpoint (its epoch) and the size of a
checkpoint, turns an ``OSError`` of a write into one :class:`~eva8_utils.errors.WriteError`
line (the file, the OS reason, the space a checkpoint needs, how to continue), and puts
the files of a half-saved epoch back as they were, so that ``history.csv`` and the
checkpoints agree on the last finished epoch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import WriteError, os_reason

_FIX = {errno.ENOSPC: "free space on that drive",
        errno.EDQUOT: "free storage (on Google Drive: delete files and empty its bin)",
        errno.ENOTCONN: "mount the drive again (Colab: drive.mount('/content/drive', force_remount=True))",
        errno.EIO: "check that the drive is mounted (Colab: drive.mount('/content/drive', force_remount=True))",
        errno.ESTALE: "mount the drive again (Colab: drive.mount('/content/drive', force_remount=True))",
        errno.EROFS: "make the folder writable", errno.EACCES: "make the folder writable",
        errno.EPERM: "make the folder writable"}


def _size(n: float) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


def _holds(path: Path, text: str | None) -> bool:
    """Whether ``path`` holds ``text`` (None: does not exist); False when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8") == text if text is not None else not path.exists()
    except OSError:
        return False


class WriteFaults:
    """The failure side of a :class:`~eva8_utils.rundir.RunDir`.

    Attributes:
        saved_at: ``(epoch, batch)`` of ``checkpoints/last.pt`` (batch None at an epoch's
            end), or None before the first checkpoint.
        checkpoint_bytes: about the size of the next ``last.pt``.
        csv_texts: what history.csv and steps.csv hold (the last texts written).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.saved_at: tuple[int, int | None] | None = None
        self.prev_at: tuple[int, int | None] | None = None
        self.checkpoint_bytes: int | None = None
        self.csv_texts: tuple[str, str] | None = None

    # ------------------------------------------------------------------ what was saved
    def saved(self, epoch: int, partial: dict | None = None) -> None:
        self.prev_at, self.saved_at = self.saved_at, (int(epoch), int(partial["batch"]) if partial else None)

    def csv_written(self, texts: tuple[str, str]) -> None:
        self.csv_texts = texts

    def estimate(self, exp) -> None:
        """A checkpoint's size before the first one is written: the weights and, for the
        optimizer's state (created at its first step), as much again."""
        from .checkpoint import state_bytes

        if self.checkpoint_bytes is None and exp.model is not None:
            weights = state_bytes(exp.model.state_dict())
            opt = state_bytes(exp.optimizer.state_dict()) if exp.optimizer is not None else 0
            self.checkpoint_bytes = weights + (opt or weights)

    # ------------------------------------------------------------------ failing
    @contextlib.contextmanager
    def guard(self, path: Path) -> Iterator[None]:
        """Turn an OSError of a write to ``path`` into a :class:`WriteError`."""
        try:
            yield
        except OSError as e:
            if Path(path).name == "last.pt":
                self._put_back_last()
            raise self.error(Path(path), e) from None

    def error(self, path: Path, e: OSError) -> WriteError:
        """The one line: the file, the reason, the space a checkpoint needs, what to do."""
        reason = os_reason(e)
        need = ""
        if self.checkpoint_bytes:
            need = f" (checkpoints/last.pt needs about {_size(self.checkpoint_bytes)}"
            with contextlib.suppress(OSError):
                need += f"; {_size(shutil.disk_usage(path.parent if path.parent.exists() else self.path).free)} free"
            need += ")"
        fix = _FIX.get(e.errno or 0, "make the folder writable")
        err = WriteError(f"cannot write {path}: {reason}{need}; {fix}, then run again with --out {self.path} "
                         f"--resume to continue {self.resume_point()}")
        err.reason, err.errno = reason, e.errno  # type: ignore[attr-defined]
        return err

    def resume_point(self) -> str:
        if self.saved_at is None:
            return "(no complete checkpoint yet: it starts from the beginning)"
        epoch, batch = self.saved_at
        if batch is None:
            return f"from the last complete checkpoint, checkpoints/last.pt after epoch {epoch}"
        return f"from the last complete checkpoint, checkpoints/last.pt at batch {batch} of epoch {epoch + 1}"

    def roll_back(self, err: WriteError, csv_before: tuple[str, str] | None,
                  saved_before: tuple[int, int | None] | None) -> WriteError:
        """Put the files of a half-saved epoch back as they were after the previous one:
        last.pt (from prev.pt), history.csv and steps.csv. Returns ``err``, with the
        resume point it names corrected; a roll-back that fails is said in it."""
        from .utils import atomic_write_text

        problems = []
        if self.saved_at != saved_before:  # last.pt of this epoch was written: take it back
            last, prev = self.path / "checkpoints" / "last.pt", self.path / "checkpoints" / "prev.pt"
            try:
                if prev.is_file():
                    os.replace(prev, last)
                else:
                    last.unlink(missing_ok=True)
                self.saved_at, self.prev_at = saved_before, None
            except OSError as e:
                problems.append(f"last.pt ({os_reason(e)})")
        for name, text in zip(("history.csv", "steps.csv"), csv_before or (None, None)):
            if _holds(self.path / name, text):
                continue  # its own write failed, or it was never written: it holds the previous epoch
            try:
                if text is None:
                    (self.path / name).unlink(missing_ok=True)
                else:
                    atomic_write_text(self.path / name, text)
            except OSError as e:
                problems.append(f"{name} ({os_reason(e)})")
        self.csv_texts = csv_before
        msg = str(err).rsplit(" to continue ", 1)[0] + " to continue " + self.resume_point()
        if problems:
            msg += f"; {', '.join(problems)} could not be put back to that epoch (--resume rewrites them)"
        new = WriteError(msg)
        new.reason, new.errno = err.reason, err.errno  # type: ignore[attr-defined]
        return new

    def _put_back_last(self) -> None:
        """A failed write of last.pt after prev.pt took the old one's place: the old one
        becomes last.pt again (a rename needs no space)."""
        last, prev = self.path / "checkpoints" / "last.pt", self.path / "checkpoints" / "prev.pt"
        if not last.exists() and prev.is_file():
            with contextlib.suppress(OSError):
                os.replace(prev, last)
                self.prev_at = None
