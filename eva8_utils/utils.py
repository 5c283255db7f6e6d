"""Small shared helpers: seeding, device choice, (de)normalisation, atomic files, logging."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import TRANSIENT_ERRNOS, ConfigError, os_reason

logger = logging.getLogger("eva8_utils")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_device(name: str = "auto") -> torch.device:
    """Resolve ``auto | cpu | cuda | mps`` to an available :class:`torch.device`.

    Raises:
        ConfigError: the requested device is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but MPS is not available; use --device auto or cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ConfigError(f"--device {name!r} is not valid; choose one of: auto, cpu, cuda, mps")
    return torch.device(name)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), e.g. 'AMD EPYC 7B13'; '' when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def device_description(device: torch.device) -> str:
    """Human-readable device name, e.g. 'cuda (Tesla T4, compute capability 7.5)' or
    'cpu (Intel(R) Xeon(R) Processor, 2 threads)': timings are only comparable on the same hardware."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        model = cpu_model()
        return f"cpu ({model + ', ' if model else ''}{n} thread{'s' if n != 1 else ''})"
    return device.type


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0,1] float images (N,3,H,W) -> normalised float (N,3,H,W)."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`: normalised (N,3,H,W) or (3,H,W) -> [0,1] floats.

    Values are clamped to [0, 1] so that the result can be shown as an image.
    """
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    out = (x * s + m).clamp_(0, 1)
    return out[0] if squeeze else out


def to_hwc_numpy(x: torch.Tensor) -> np.ndarray:
    """(3,H,W) or (N,3,H,W) tensor -> (H,W,3) or (N,H,W,3) float numpy array."""
    x = x.detach().float().cpu()
    return (x.permute(1, 2, 0) if x.dim() == 3 else x.permute(0, 2, 3, 1)).numpy()


# ---------------------------------------------------------------------------------------
# Atomic files: a kill at any moment leaves the old file or the new one, never a torn one.
# ---------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Seconds to wait before each retry of a write that met a transient error (EIO, ENOTCONN,
# ESTALE: a Drive that dropped for a moment); after the last one the error stands.
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)


def _commit(tmp: Path, path: Path) -> None:
    """The last step of every atomic write: fsync the temporary file, rename it over ``path``."""
    with open(tmp, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        yield tmp_path
        _commit(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def retrying(action: Callable[[], object], what: str | Path) -> object:
    """``action()``, again after each of :data:`RETRY_DELAYS` while it raises a transient
    OSError (EIO, ENOTCONN, ESTALE); logs one warning the first time. Other errors, and
    the error after the last retry, are raised."""
    delays = list(RETRY_DELAYS)
    while True:
        try:
            return action()
        except OSError as e:
            if e.errno not in TRANSIENT_ERRNOS or not delays:
                raise
            if len(delays) == len(RETRY_DELAYS):
                logger.warning("writing %s failed (%s); retrying up to %d times (%s s apart)", what, os_reason(e),
                               len(delays), ", ".join(f"{d:g}" for d in delays))
            time.sleep(delays.pop(0))


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Atomically write ``path``: ``write(tmp)`` fills a temporary file, which is then
    fsynced and renamed over ``path``; transient errors are retried (:func:`retrying`)."""
    def once() -> None:
        with atomic_path(path) as tmp:
            write(tmp)

    retrying(once, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename; transient errors retried)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------------------------
# Logging: the library logs; entry points decide where it goes.
# ---------------------------------------------------------------------------------------
class _TqdmSafeHandler(logging.StreamHandler):
    """Writes log lines without breaking an active tqdm bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _RunLogFile(logging.FileHandler):
    """log.txt: a write that fails for a moment is retried; one that keeps failing (a full
    disk) stops the file with one warning on the screen, and the log goes on there."""

    failed: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is not None:
            return
        text = self.format(record) + self.terminator

        def write() -> None:
            try:
                if self.stream is None:
                    self.stream = self._open()
                self.stream.write(text)
                self.stream.flush()
            except OSError:
                stream, self.stream = self.stream, None
                with contextlib.suppress(OSError, ValueError):
                    if stream is not None:
                        stream.close()
                raise

        try:
            retrying(write, self.baseFilename)
        except OSError as e:
            self.failed = os_reason(e)
            logger.warning("%s cannot be written (%s): the log goes on on the screen only", self.baseFilename,
                           self.failed)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().close()


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO,
                  stream=None) -> logging.Logger:
    """Send the package's log lines to ``stream`` (stdout) and optionally ``log_file``.

    Calling it again replaces the handlers it added before (safe in notebooks).
    """
    log = logging.getLogger("eva8_utils")
    for h in list(log.handlers):
        if getattr(h, "_eva8", False):
            log.removeHandler(h)
            h.close()
    console = _TqdmSafeHandler(stream or sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    console._eva8 = True  # type: ignore[attr-defined]
    log.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = _RunLogFile(log_file, encoding="utf-8", delay=True)
        fh.setFormatter(logging.Formatter("%(message)s"))
        fh._eva8 = True  # type: ignore[attr-defined]
        log.addHandler(fh)
    log.setLevel(level)
    log.propagate = False
    return log


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux/macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def current_rss_mb() -> float:
    """Current resident set size in MiB (Linux: /proc; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def model_summary(model: torch.nn.Module, image_size: int = 32, num_channels: int = 3) -> str:
    """A torchinfo table (output shapes, parameters, mult-adds) for one (1, 3, H, W) input.

    Runs in eval mode (BatchNorm statistics are not touched) and restores the model's
    mode. Without torchinfo installed, returns parameter counts and a hint.
    """
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        from torchinfo import summary
    except ImportError:
        return (f"{type(model).__name__}: {n_params:,} parameters ({n_train:,} trainable)\n"
                f"(install torchinfo for the layer-by-layer table: pip install torchinfo)")
    was_training = model.training
    device = next(model.parameters()).device
    try:
        stats = summary(model, input_size=(1, num_channels, image_size, image_size), device=device,
                        mode="eval", verbose=0, depth=3,
                        col_names=("output_size", "num_params", "mult_adds"), row_settings=("var_names",))
    finally:
        model.train(was_training)
    return str(stats)
