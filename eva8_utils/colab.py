"""Colab helpers for the notebook: keep the run folder on Google Drive, and show a
mistake in the parameters as one line (as the command line does), not a traceback.

A Colab VM's disk is gone after a disconnect; a run folder on Drive survives it, and
re-running the notebook then continues the run from its last checkpoint (the
notebook's run folder rules are :meth:`eva8_utils.rundir.RunDir.open_for`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger("eva8_utils")

DRIVE_MOUNT = Path("/content/drive")
DRIVE_ROOT = DRIVE_MOUNT / "MyDrive" / "eva8_utils"


def in_colab() -> bool:
    """Whether this is a Google Colab runtime."""
    if "google.colab" in sys.modules:
        return True
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def run_folder(run_dir: str | Path, use_drive: bool = True) -> Path:
    """Where the notebook's run folder lives.

    In Colab with ``use_drive``: Google Drive is mounted (it asks for permission once) and
    the folder is ``MyDrive/eva8_utils/<run_dir>``. Anywhere else, or with
    ``use_drive=False``: ``run_dir`` as given (the VM's local disk in Colab).
    """
    run_dir = Path(run_dir)
    if not (use_drive and in_colab()):
        return run_dir
    from google.colab import drive  # type: ignore[import-not-found]

    if not (DRIVE_MOUNT / "MyDrive").is_dir():
        drive.mount(str(DRIVE_MOUNT))
    target = run_dir if run_dir.is_absolute() else DRIVE_ROOT / run_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("run folder on Google Drive: %s", target)
    return target


def one_line_errors() -> bool:
    """In IPython or Jupyter (Colab included): show a :class:`~eva8_utils.errors.UserError`
    (a mistake in the parameters, the data or a checkpoint) as the one line the command line
    prints, ``error: <what is wrong and what to do>``, instead of a traceback. The cell still
    fails, so Run all stops there; any other exception (a bug) keeps its traceback.

    Returns:
        Whether the handler was installed (False outside IPython).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    from .errors import UserError

    def _one_line(shell, etype, value, tb, tb_offset=None):
        stb = [f"error: {value}"]
        shell._showtraceback(etype, value, stb)  # the cell's error output: this line only
        return stb

    shell.set_custom_exc((UserError,), _one_line)
    return True
