"""Exception types for mistakes a user can fix.

Entry points (``main.py``) turn every :class:`UserError` into one line on stderr and
exit code 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

# Short reasons for the OS errors a write meets (on Colab: a full disk, a full Drive, a Drive
# that disconnects).
WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded (on Google Drive: "
                "its storage is full)", errno.EIO: "input/output error (the drive may have disconnected)",
                errno.ENOTCONN: "the drive disconnected", errno.ESTALE: "stale file handle (the drive reconnected)",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted"}
# Errors that often pass: a Drive that drops for a moment. Writes retry them a few times.
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ENOTCONN, errno.ESTALE})


def os_reason(e: OSError) -> str:
    """A short reason for an OS error (``read-only file system``)."""
    return WRITE_ERRNOS.get(e.errno or 0) or (e.strerror or str(e) or type(e).__name__).lower()


class UserError(Exception):
    """A mistake in the input (flags, config, data, checkpoint) that the user can fix.

    The message is one line that says what is wrong and what to do.
    """

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An unknown name, a wrong type or a value out of range in the config."""


class DataError(UserError):
    """A dataset that cannot be read: missing folder, corrupt image, mixed sizes, ..."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe or made for another model."""


class UntrustedCodeError(CheckpointError):
    """A checkpoint whose model is built by code outside eva8_utils that the caller did not name."""


class WriteError(UserError):
    """A file of a run could not be written: a full disk or quota, a drive that dropped, a
    read-only folder. The message names the file, the reason and how to continue."""


class OutOfMemory(UserError):
    """A batch did not fit in the memory of the device; the message says what to try."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""

    exit_code = 3

    def __init__(self, epoch: int, batch: int, lr: float | None = None):
        self.epoch, self.batch, self.lr = epoch, batch, lr
        at_lr = f" at LR {lr:.3g}" if lr is not None else ""
        super().__init__(
            f"non-finite loss in epoch {epoch}, batch {batch}{at_lr}: training stopped and "
            f"the last good checkpoint is kept; lower the learning rate (--lr) or add "
            f"--grad-clip, then start again or --resume"
        )


class TrainingInterrupted(RuntimeError):
    """Training was stopped on request (Ctrl-C / SIGINT / SIGTERM) at a batch boundary."""

    exit_code = 130

    def __init__(self, epoch: int, batch: int, completed_epochs: int):
        self.epoch, self.batch, self.completed_epochs = epoch, batch, completed_epochs
        super().__init__(
            f"interrupted in epoch {epoch} at batch {batch}; "
            f"{completed_epochs} completed epoch(s) are saved"
        )
