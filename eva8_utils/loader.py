"""The device loader: a split held as uint8 on the training device, batched and augmented there.

CIFAR-sized data fits in device memory, so the images are decoded once, kept as uint8
where the model trains, and crop/flip/cutout (and the other augmentations of
:mod:`eva8_utils.augment`) run on whole batches with independent random parameters per
sample: the training step never waits on Python per image.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from . import augment as A
from .errors import DataError


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A generator seed for (seed, epoch): resumed runs redraw exactly the same epoch."""
    return (seed * 1_000_003 + epoch * 7_919 + salt * 104_729) % (2**63 - 1)


class DeviceLoader:
    """Batches from a split held as uint8 on ``device``.

    Train mode: a fresh permutation and fresh augmentation parameters per epoch, both
    drawn from ``(seed, epoch)``; every index is used once per epoch (a last batch
    smaller than 2 per rank is merged into the previous one, which keeps BatchNorm
    happy). Test mode: fixed order, last partial batch kept.

    Under torchrun each rank gets a contiguous part of every global batch (train) or
    a contiguous shard of the split (test), so the global batch is ``batch_size *
    world_size`` and every test image is seen exactly once.

    Args:
        images: uint8 (N, H, W, 3) numpy array or tensor.
        labels: int labels (N,).
        batch_size: images per batch per rank.
        mean, std: per-channel normalisation (in [0, 1] units).
        device: where images live and batches are made.
        train: shuffle and augment.
        aug: augmentation settings (train only); None = no augmentation.
        seed: base seed.
        shard: (rank, world_size), this process's place under torchrun.
        channels_last: return batches in channels_last memory format.
        drop_last: train mode: leave out the epoch's last partial global batch.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                 batch_size: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu", train: bool = False,
                 aug: A.AugmentConfig | None = None, seed: int = 0, shard: tuple[int, int] = (0, 1),
                 channels_last: bool = False, drop_last: bool = False):
        self.device = torch.device(device)
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {tuple(x.shape)} {x.dtype}")
        # (N, H, W, 3) -> (N, 3, H, W), stored contiguously on the device once.
        self.images = x.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        if len(self.labels) != len(self.images):
            raise ValueError("images and labels differ in length")
        self.batch_size = int(batch_size)
        self.train = train
        self.aug = aug if train else None
        self.seed = seed
        self.rank, self.world_size = int(shard[0]), int(shard[1])
        self.channels_last = channels_last
        self.drop_last = bool(drop_last and train)
        width = self.aug.mix_classes if self.aug is not None else 0
        self.num_classes = int(width) if width else int(self.labels.max()) + 1 if len(self.labels) else 0
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean_t, self._std_t = mean_t, std_t
        # normalise(u8) = u8 * scale - shift, one fused multiply-subtract per batch.
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = mean_t / std_t
        # cutout's fill in normalised units: 0 is the mean; a grey level v becomes (v - mean) / std
        fill = self.aug.cutout_fill if self.aug is not None else -1.0
        self._cut_fill = 0.0 if fill < 0 else (fill - mean_t) / std_t
        self.epoch = 0
        a = self.aug
        if a is not None and a.low_res_size and a.low_res_mode == "crop" and a.low_res_size > min(self.image_size):
            h, w = self.image_size
            raise DataError(f"--low-res-size {a.low_res_size} is larger than the {h}x{w} training images; with "
                            "--low-res-mode crop it must be at most their side (or use --low-res-mode resize)")

    def __len__(self) -> int:
        return len(self._plan())

    @property
    def description(self) -> str:
        """The log line that names the input path."""
        what = "augmented per batch there" if self.aug is not None else "normalised per batch there"
        return f"input: uint8 images on {self.device.type}, {what} (the package's device loader)"

    @property
    def num_samples(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation and augmentations the next pass uses."""
        self.epoch = int(epoch)

    def _plan(self) -> list[tuple[int, int]]:
        """(start, end) positions of this rank's batches within the epoch order."""
        n, w = self.num_samples, self.world_size
        if not self.train:
            shard = torch.tensor_split(torch.arange(n), w)[self.rank]
            if len(shard) == 0:
                return []
            lo, hi = int(shard[0]), int(shard[-1]) + 1
            return [(s, min(s + self.batch_size, hi)) for s in range(lo, hi, self.batch_size)]
        g = self.batch_size * w
        bounds = [(s, min(s + g, n)) for s in range(0, n, g)]
        if self.drop_last and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < g:
            bounds.pop()
        elif len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2 * w:
            bounds[-2] = (bounds[-2][0], n)
            bounds.pop()
        plan = []
        for s, e in bounds:
            part = torch.tensor_split(torch.arange(s, e), w)[self.rank]
            plan.append((int(part[0]), int(part[-1]) + 1))
        return plan

    def epoch_order(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The epoch's permutation (N,) and augmentation parameters, on the CPU."""
        n = self.num_samples
        if not self.train:
            return torch.arange(n), {}
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        perm = torch.randperm(n, generator=g)
        params = A.sample_params(n, self.aug, self.image_size, g) if self.aug is not None else {}
        if self.aug is not None and self.aug.flip == "alternate":
            # airbench94's flip: a random half of the images (drawn once from the seed) is
            # mirrored in odd epochs and the other half in even ones, so every image is
            # seen both ways every two epochs.
            base = torch.rand(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, 0, salt=7))) < 0.5
            params["flip"] = base[perm] ^ (self.epoch % 2 == 0)
        size = self.epoch_image_size()
        if self.aug is not None and self.aug.low_res_mode == "crop" and size != self.image_size:
            (h, w), (lh, lw) = self.image_size, size
            g2 = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, salt=13))
            params["win_y"] = torch.randint(0, h - lh + 1, (n,), generator=g2)
            params["win_x"] = torch.randint(0, w - lw + 1, (n,), generator=g2)
        return perm, params

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(0)

    def iterate(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch index ``start`` on (0-based): a run resumed in the
        middle of an epoch gets exactly the batches the interrupted one had left.

        With batch mixing the targets are soft, (B, num_classes) floats (see
        :func:`~eva8_utils.augment.mix_batch`).
        """
        perm, params = self.epoch_order()
        perm = perm.to(self.device, non_blocking=True)
        params = {k: v.to(self.device, non_blocking=True) for k, v in params.items()}
        plan = self._plan()
        mixing = self.aug is not None and self.aug.mixing
        if mixing:
            mix = A.sample_mix_params(len(plan), self.aug, self.epoch_image_size(),
                                      epoch_seed(self.seed, self.epoch, salt=11))
        for i in range(start, len(plan)):
            s, e = plan[i]
            idx = perm[s:e]
            x = self.transform(self.images.index_select(0, idx), A.slice_params(params, slice(s, e)))
            y = self.labels.index_select(0, idx)
            if mixing:
                x, y = A.mix_batch(x, y, self.num_classes, {k: v[i] for k, v in mix.items()})
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def transform(self, x_u8: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """uint8 (B,3,H,W) on the device -> normalised (augmented) float batch."""
        a = self.aug
        if a is not None and params and not a.colour and "affine" not in params \
                and ("crop_y" in params or "flip" in params) and ("crop_y" not in params or a.pad_mode == "reflect"):
            # Fast path (the fast recipes): crop and mirror the uint8 pixels in one gather, then
            # normalise; the same numbers as the general path below.
            x = A.crop_flip_u8(x_u8, a.crop_padding, params.get("crop_y"), params.get("crop_x"), params.get("flip"))
            x = x.float().mul_(self._scale).sub_(self._shift)
            if "cutout" in params:
                x = A.cutout(x, params.get("cut_size", a.cutout), params["cut_y"], params["cut_x"], params["cutout"],
                             self._cut_fill)
        elif a is not None and params:
            if a.colour:
                x = A.apply_colour(x_u8.float().div_(255), params)
                x = (x - self._mean_t) / self._std_t
            else:
                x = x_u8.float().mul_(self._scale).sub_(self._shift)
            x = A.apply_geometric(x, params, a, self._cut_fill)
        else:
            x = x_u8.float().mul_(self._scale).sub_(self._shift)
        size = self.epoch_image_size()
        if size != self.image_size:  # progressive resizing: an early epoch at low resolution
            if params and "win_y" in params:  # --low-res-mode crop
                x = A.window(x, size, params["win_y"], params["win_x"])
            else:
                x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True,
                                                    align_corners=False)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def epoch_image_size(self) -> tuple[int, int]:
        """(H, W) of this epoch's training batches: the images' own, or the low resolution of
        the first ``low_res_epochs`` epochs (progressive resizing)."""
        a = self.aug
        if a is not None and a.low_res_size and 1 <= self.epoch <= a.low_res_epochs:
            return (a.low_res_size, a.low_res_size)
        return self.image_size

    def batch_at(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, un-augmented images and labels at ``indices`` (for analysis)."""
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.device)
        x = self.images.index_select(0, idx).float().mul_(self._scale).sub_(self._shift)
        return x, self.labels.index_select(0, idx)


def make_loaders(splits: Any, cfg: Any, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> tuple[DeviceLoader, DeviceLoader]:
    """Train and test :class:`DeviceLoader` for a :class:`~eva8_utils.data.Splits` and a config
    (augmentation from ``cfg``)."""
    channels_last = bool(cfg.channels_last and device.type in ("cuda", "cpu"))
    aug = A.AugmentConfig.from_config(cfg, mix_classes=splits.num_classes)
    train = DeviceLoader(splits.x_train, splits.y_train, batch_size=cfg.batch_size, mean=splits.mean,
                         std=splits.std, device=device, train=True, aug=aug, seed=cfg.seed, shard=(rank, world_size),
                         channels_last=channels_last, drop_last=cfg.drop_last)
    test = DeviceLoader(splits.x_test, splits.y_test, batch_size=max(cfg.batch_size, 256),
                        mean=splits.mean, std=splits.std, device=device, train=False, shard=(rank, world_size),
                        channels_last=channels_last)
    return train, test
