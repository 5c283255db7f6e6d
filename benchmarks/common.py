"""Shared pieces of the benchmarks: data, the classic pipeline, machine description, output."""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eva8_utils.data import CIFAR10_CLASSES, Splits, load_folder  # noqa: E402
from eva8_utils.utils import cpu_model, device_description  # noqa: E402



def machine(device: torch.device) -> dict:
    return {"device": device_description(device), "cpu": cpu_model() or platform.machine(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def add_data_args(p, data_help: str) -> None:
    """The data and device flags every real-data benchmark takes."""
    p.add_argument("--data-dir", default=None, help=data_help)
    p.add_argument("--synthetic", type=int, default=50_000,
                   help="number of random images used when --data-dir is not given (smoke tests)")
    p.add_argument("--device", default="auto")


def load_images(data_dir: str | None, synthetic_n: int = 50_000, size: int = 32) -> tuple[Splits, str]:
    """The CIFAR-10 JPEG copy when ``data_dir`` exists, else random uint8 images (said so)."""
    if data_dir and Path(data_dir).is_dir():
        return load_folder(data_dir), f"CIFAR-10 (JPEG copy) from {data_dir}"
    if data_dir:
        print(f"note: {data_dir} not found; using {synthetic_n} random {size}x{size} images instead", file=sys.stderr)
    g = np.random.default_rng(0)
    n_test = min(1000, max(1, synthetic_n // 5))
    x = g.integers(0, 256, (synthetic_n, size, size, 3), dtype=np.uint8)
    y = g.integers(0, 10, synthetic_n)
    xt = g.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8)
    yt = g.integers(0, 10, n_test)
    return Splits(x, y, xt, yt, list(CIFAR10_CLASSES), name="random"), f"random uint8 images ({synthetic_n})"


class ClassicDataset(torch.utils.data.Dataset):
    """The classic per-image pipeline over in-memory uint8 images, as torchvision's CIFAR10 does:
    PIL image -> RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ToTensor -> Normalize
    -> a 16x16 erase (RandomErasing with a fixed 1/4 area and aspect 1)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, train: bool = True):
        import torchvision.transforms as T

        self.images, self.labels = images, labels
        size = images.shape[1]
        erase = T.RandomErasing(p=1.0, scale=(256 / size ** 2, 256 / size ** 2), ratio=(1.0, 1.0), value=0)
        self.tf = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize(mean, std), erase]) if train else T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.tf(Image.fromarray(self.images[i])), int(self.labels[i])


def classic_loader(images, labels, mean, std, batch_size: int, workers: int, train: bool = True, seed: int = 0):
    ds = ClassicDataset(images, labels, mean, std, train)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=workers,
                                       drop_last=False, generator=torch.Generator().manual_seed(seed),
                                       persistent_workers=workers > 0)


def batches(loader, n, epoch=1):
    """``n`` batches of ``loader``, cycling its epochs."""
    out = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            yield batch
            out += 1
            if out >= n:
                return
        epoch += 1


class Batches:
    """``n`` batches of an iterator, moved to ``device``, with a length (what train_one_epoch wants)."""

    def __init__(self, it, n, device):
        self.it, self.n, self.device = it, n, device

    def __len__(self):
        return self.n

    def __iter__(self):
        for x, y in itertools.islice(self.it, self.n):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def median(xs):
    return float(statistics.median(xs))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now() -> float:
    return time.perf_counter()


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
