"""Your own per-image pipeline (albumentations or torchvision), run in DataLoader workers.

``--train-transform module:callable`` (and ``--test-transform``) names a callable that maps
one image to a (3, H, W) float tensor:

- an albumentations pipeline (``A.Compose([...])``, recognised by its module) is called as
  albumentations expects, ``t(image=hwc_uint8_array)["image"]``;
- anything else (a torchvision v2 ``Compose``, a function) is called with a PIL image.

Normalisation follows one rule, said in the log: a pipeline that ends its work with a
``Normalize`` (albumentations' or torchvision's) normalises, and the package uses that
Normalize's mean/std wherever it shows or makes images (the test split, the pictures);
a pipeline without one returns images in [0, 1] (or uint8) and the package normalises them
with the dataset's mean/std, as on the fast path. Never both.

Such a run goes through a standard ``torch.utils.data.DataLoader`` (worker processes sized
to the machine, ``pin_memory`` on CUDA, persistent workers) into the same training loop,
run folder, resume (also in the middle of an epoch), analysis and report as the default
GPU-batched path, which stays the default and the fastest.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .loader import epoch_seed

logger = logging.getLogger("eva8_utils")

_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def resolve(ref: str, flag: str = "--train-transform") -> Callable:
    """The callable a ``package.module:attribute`` reference names (imported now).

    Raises:
        ConfigError: not such a reference, a module that cannot be imported, no such attribute, not callable.
    """
    from .models import import_modules

    if not _REF.match(ref):
        raise ConfigError(f"{flag} {ref!r} is not package.module:callable; give e.g. mytransforms:train_tf")
    module, _, attr = ref.partition(":")
    import_modules([module], what=f"{flag} {ref}:")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{flag} {ref}: module {module} has no attribute {attr!r}")
    if not callable(obj):
        raise ConfigError(f"{flag} {ref}: {attr} is not callable; give the pipeline (e.g. an A.Compose) itself")
    return obj


def is_albumentations(t: Callable) -> bool:
    return type(t).__module__.split(".")[0] == "albumentations"


def _steps(t: Any) -> list:
    """The transforms inside a (nested) Compose, in order."""
    inner = getattr(t, "transforms", None)
    if not isinstance(inner, (list, tuple)):
        return [t]
    return [s for x in inner for s in _steps(x)]


def pipeline_normalisation(t: Callable) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) in [0, 1] units of the pipeline's ``Normalize``, or None when it has none."""
    for step in reversed(_steps(t)):
        if type(step).__name__ == "Normalize" and hasattr(step, "mean") and hasattr(step, "std"):
            mean = np.broadcast_to(np.asarray(step.mean, dtype=float), (3,))
            std = np.broadcast_to(np.asarray(step.std, dtype=float), (3,))
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return None


def apply(t: Callable, image: np.ndarray) -> Any:
    """Run one pipeline on one (H, W, 3) uint8 image, called the way its library expects."""
    if is_albumentations(t):
        return t(image=image)["image"]
    from PIL import Image

    return t(Image.fromarray(image))


def to_tensor(out: Any, ref: str) -> torch.Tensor:
    """A pipeline's output as a float (3, H, W) tensor, in [0, 1] when it was uint8.

    Raises:
        ConfigError: not an image tensor/array of 3 channels (one line naming what it got).
    """
    if isinstance(out, np.ndarray) and out.ndim == 3 and out.shape[-1] == 3:
        out = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
    if not isinstance(out, torch.Tensor):
        what = type(out).__name__ + (f" of shape {tuple(out.shape)}" if hasattr(out, "shape") else "")
        raise ConfigError(f"{ref} returned {what}; it must return a (3, H, W) tensor: end it with "
                          f"ToTensorV2() (albumentations) or ToImage() + ToDtype(torch.float32, scale=True) (torchvision)")
    if out.dim() != 3 or out.shape[0] != 3:
        raise ConfigError(f"{ref} returned a tensor of shape {tuple(out.shape)}; it must be (3, H, W) with 3 "
                          f"channels (a ToGray keeps 3 channels by default)")
    return out.float().div_(255) if out.dtype == torch.uint8 else out.float()


class _Images(torch.utils.data.Dataset):
    """uint8 (N, H, W, 3) images and labels, each image through a pipeline (in the worker)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable, ref: str):
        self.images, self.labels, self.transform, self.ref = images, labels, transform, ref

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_tensor(apply(self.transform, self.images[i]), self.ref), int(self.labels[i])


def _seed_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)  # torch seeds each worker; numpy-based pipelines follow


def default_workers() -> int:
    """Worker processes for a per-image pipeline: one per core this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


class _Order(torch.utils.data.Sampler):
    """The indices of the current pass (set before each pass; persistent workers keep running)."""

    def __init__(self):
        self.indices: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class PipelineLoader:
    """Batches of a split through a per-image pipeline, made in DataLoader workers and moved
    to ``device``: the same interface as :class:`~eva8_utils.loader.DeviceLoader` (``set_epoch``,
    ``iterate(start)``, ``batch_at``, ``labels``), so the loop, resume and analysis treat it alike.

    Train mode: a permutation per epoch drawn from ``(seed, epoch)`` (a last batch of one
    image is left out: BatchNorm needs two); the augmentations are as random as the pipeline.
    ``normalise``: the (mean, std) the package applies after the pipeline (None: the pipeline
    normalises itself); ``display``: the (mean, std) the batches are normalised with either way.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable, *, ref: str, batch_size: int,
                 device: torch.device, train: bool, seed: int, normalise: tuple | None, display: tuple,
                 workers: int | None = None, channels_last: bool = False):
        self.device, self.train, self.seed, self.epoch = torch.device(device), train, seed, 0
        self.batch_size, self.channels_last, self.ref = int(batch_size), channels_last, ref
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.mean, self.std = display
        self._norm = None if normalise is None else tuple(
            torch.tensor(v, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) for v in normalise)
        self._disp = tuple(torch.tensor(v, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
                           for v in display)
        self.workers = default_workers() if workers is None else int(workers)
        self._order = _Order()
        self._loader = torch.utils.data.DataLoader(
            _Images(images, labels, transform, ref), batch_size=self.batch_size, sampler=self._order,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
            worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(seed))

    @property
    def num_samples(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        n = self.num_samples
        if not self.train:
            return list(range(n))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        if n % self.batch_size == 1 and n > 1:
            order = order[:-1]
        return order.tolist()

    def __len__(self) -> int:
        return -(-len(self._indices()) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(0)

    def iterate(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch index ``start`` on (a resumed epoch skips the done ones)."""
        self._order.indices = self._indices()[start * self.batch_size:]
        for x, y in self._loader:
            yield self._finish(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self._norm is not None:
            x = (x - self._norm[0]) / self._norm[1]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch_at(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, un-augmented images and labels at ``indices`` (for the analysis)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = torch.from_numpy(self.images[idx.numpy()]).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return (x - self._disp[0]) / self._disp[1], self.labels[idx.to(self.device)]


def describe(transform: Callable, ref: str, workers: int, normalised_by_pipeline: bool) -> str:
    """The log line that names the input path."""
    kind = "albumentations" if is_albumentations(transform) else "PIL images"
    norm = "by the pipeline's Normalize" if normalised_by_pipeline else "by the package (the dataset's mean/std)"
    return f"input: your pipeline {ref} ({kind}), DataLoader, {workers} workers; normalisation {norm}"


def check_output(transform: Callable, ref: str, image: np.ndarray) -> tuple[int, ...]:
    """Run the pipeline once on ``image`` before training; its output shape, or a one-line ConfigError."""
    try:
        out = apply(transform, image)
    except Exception as e:  # the user's code: say what it raised, in one line
        raise ConfigError(f"{ref} failed on a training image: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                          if str(e) else f"{ref} failed on a training image: {type(e).__name__}") from None
    return tuple(to_tensor(out, ref).shape)


def make_pipeline_loaders(splits: Any, cfg: Any, device: torch.device, workers: int | None = None) -> tuple[Any, Any]:
    """Train and test loaders when ``cfg.train_transform`` / ``cfg.test_transform`` name pipelines
    (a split without one gets the device loader). ``splits.mean/std`` become the pipeline's
    Normalize's when it has one, so the test split, the pictures and the checkpoint use them."""
    from .loader import make_loaders

    chosen = {}
    for split, ref in (("train", cfg.train_transform), ("test", cfg.test_transform)):
        if ref:
            t = resolve(ref, f"--{split}-transform")
            check_output(t, f"--{split}-transform {ref}", getattr(splits, f"x_{split}")[0])
            own = pipeline_normalisation(t)
            if own is not None:
                splits.mean, splits.std = own
            chosen[split] = (t, ref, own)
    loaders = dict(zip(("train", "test"), make_loaders(splits, cfg, device)))
    for split, (t, ref, own) in chosen.items():
        old = loaders[split]
        loaders[split] = PipelineLoader(
            getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}"), t, ref=f"--{split}-transform {ref}",
            batch_size=old.batch_size, device=device, train=split == "train", seed=cfg.seed,
            normalise=None if own else (splits.mean, splits.std), display=(splits.mean, splits.std),
            workers=workers, channels_last=old.channels_last)
        loaders[split].description = describe(t, ref, loaders[split].workers, own is not None)
    return loaders["train"], loaders["test"]
