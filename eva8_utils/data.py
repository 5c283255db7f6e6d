"""Data sources and the in-memory device loader.

A source returns a :class:`Splits`: uint8 images ``(N, H, W, 3)``, int64 labels and
class names for a train and a test split, plus the per-channel mean/std of the train
split (measured, never ImageNet constants). Sources, by name in :data:`DATASETS`:

- ``cifar10``: torchvision's CIFAR10 download into a cache folder.
- ``folder``: an ImageFolder layout ``ROOT/{train,test|val}/<class>/*`` or the
  TinyImageNet layout (``val/images`` + ``val_annotations.txt``); decoded once and
  cached as an ``.npz`` keyed by the file list, sizes and mtimes.
- ``shapes``: procedural coloured shapes on a noisy background, made offline from a
  seed, with each object's bounding box (for CAM faithfulness checks).

:class:`DeviceLoader` keeps a whole split as uint8 on the training device and yields
normalised, augmented float batches: the training step never waits on Python per image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import DataError
from .loader import DeviceLoader, epoch_seed, make_loaders  # noqa: F401  (re-exported: the data side's names)
from .utils import atomic_path

logger = logging.getLogger("eva8_utils")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHAPE_CLASSES = ("circle", "square", "triangle", "plus", "ring", "diamond", "x", "hbar", "vbar", "frame")
_CACHE_VERSION = 2   # 2: 16-bit images scaled to 8 bits (1 clipped them)
# shapes: objects of radius 13-22% of the side, placed uniformly (a fixed-point guess such as
# the image centre finds 27% of them), nearly flat on a noisy background (noise std 0.02 on
# the object, 0.15 around it): what the CAM pointing game needs.
SHAPE_RADIUS = (0.13, 0.22)   # object radius range, fraction of the image side
SHAPE_NOISE = (0.02, 0.15)    # noise std of the object and of the background


@dataclass
class Splits:
    """A dataset in memory.

    Attributes:
        x_train, x_test: uint8 arrays (N, H, W, 3).
        y_train, y_test: int64 arrays (N,).
        classes: class names, index = label.
        mean, std: per-channel statistics of ``x_train`` in [0, 1] units.
        boxes_test, boxes_train: optional int arrays (N, 4) of object boxes
            ``(y0, x0, y1, x1)``, inclusive pixel coordinates (``shapes`` only).
        name: source name for logs and reports.
        skipped_files: non-image files that were ignored (``folder`` only).
        pending_cache: writes the decoded arrays to the cache once the data is accepted
            (:func:`commit_cache`); None when there is nothing to write.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    boxes_train: np.ndarray | None = None
    boxes_test: np.ndarray | None = None
    name: str = ""
    skipped_files: int = 0
    pending_cache: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[1])

    def __post_init__(self) -> None:
        if self.mean is None or self.std is None:
            self.mean, self.std = channel_stats(self.x_train)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, H, W, 3), in [0, 1] units.

    Computed in float64 over chunks, so 50,000 CIFAR images need little memory. The std
    is floored at 1/255 so that a constant channel does not divide by zero later.
    """
    n = images.shape[0]
    s = np.zeros(3)
    ss = np.zeros(3)
    count = 0
    for i in range(0, n, chunk):
        block = images[i:i + chunk].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        s += block.sum(0)
        ss += (block * block).sum(0)
        count += block.shape[0]
    mean = s / count
    std = np.maximum(np.sqrt(np.maximum(ss / count - mean * mean, 0.0)), 1.0 / 255)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of samples per class, (num_classes,) int64."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


# ---------------------------------------------------------------------------------------
# cifar10
# ---------------------------------------------------------------------------------------
def load_cifar10(data_dir: str | Path = "./data", download: bool = True) -> Splits:
    """CIFAR-10 through torchvision, downloaded into ``data_dir`` on first use.

    Raises:
        DataError: the files are missing and cannot be downloaded (e.g. offline).
    """
    from torchvision.datasets import CIFAR10

    folder = Path(data_dir)
    existed = folder.exists()
    before = set(folder.iterdir()) if folder.is_dir() else set()
    data_dir = str(data_dir)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        train = CIFAR10(data_dir, train=True, download=download)
        test = CIFAR10(data_dir, train=False, download=download)
    except Exception as e:  # network errors come in many types (URLError, OSError, ...)
        # leave nothing behind: no empty ./data, no half-downloaded archive
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.is_dir():
            for p in set(folder.iterdir()) - before:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"could not get CIFAR-10 into {data_dir} ({reason[:120]}); offline, use "
            f"--dataset folder --data-dir DIR (an image folder with train/ and test/) or --dataset shapes"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return Splits(
        x_train=np.ascontiguousarray(train.data), y_train=np.asarray(train.targets, dtype=np.int64),
        x_test=np.ascontiguousarray(test.data), y_test=np.asarray(test.targets, dtype=np.int64),
        classes=list(train.classes), name="cifar10",
    )


# ---------------------------------------------------------------------------------------
# folder (ImageFolder and TinyImageNet layouts)
# ---------------------------------------------------------------------------------------
@dataclass
class _SplitFiles:
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """All image files under ``folder`` (recursively, sorted) and the non-image files."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            (images if _is_image(p) else others).append(p)
    return images, others


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan_class_split(split_dir: Path, class_to_idx: dict[str, int]) -> _SplitFiles:
    out = _SplitFiles()
    for name in _class_folders(split_dir):
        if name not in class_to_idx:
            raise DataError(
                f"{split_dir / name} is a class folder that train/ does not have; "
                f"the test split must use the training classes"
            )
        images, others = _walk_images(split_dir / name)
        if not images:
            raise DataError(f"class folder {split_dir / name} holds no images; add images or remove the folder")
        out.files += images
        out.labels += [class_to_idx[name]] * len(images)
        out.skipped += others
    return out


def _scan_annotated_split(split_dir: Path, class_to_idx: dict[str, int]) -> _SplitFiles:
    """TinyImageNet's val layout: ``images/*`` and ``val_annotations.txt`` (file<TAB>class...)."""
    out = _SplitFiles()
    ann = split_dir / "val_annotations.txt"
    for lineno, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{ann} line {lineno} is not 'file<TAB>class'; fix or remove that line")
        fname, cls = parts[0].strip(), parts[1].strip()
        if cls not in class_to_idx:
            raise DataError(f"{ann} line {lineno} names class {cls!r}, which train/ does not have")
        path = split_dir / "images" / fname
        if not path.is_file():
            raise DataError(f"{ann} line {lineno} names {path}, which does not exist")
        out.files.append(path)
        out.labels.append(class_to_idx[cls])
    if not out.files:
        raise DataError(f"{ann} lists no images")
    return out


def _test_split_dir(root: Path) -> Path:
    """Prefer ``test/`` when it holds labelled class folders, else ``val/``."""
    for name in ("test", "val"):
        d = root / name
        if not d.is_dir():
            continue
        if (d / "val_annotations.txt").is_file():
            return d
        classes = _class_folders(d)
        # TinyImageNet's test/ is an unlabelled images/ folder: not usable for testing.
        if classes and not (classes == ["images"] and not (d / "val_annotations.txt").exists()):
            return d
    raise DataError(
        f"{root} has no labelled test split; expected {root}/test/<class>/* or {root}/val/<class>/* "
        f"(or val/images + val/val_annotations.txt)"
    )


def pil_to_array(im, image_size: int = 0) -> np.ndarray:
    """A PIL image as uint8 (H, W, 3) RGB, resized (bilinear) to ``image_size`` squared if > 0:
    the preparation every image gets, in training and in prediction."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (PNG, TIFF) grey: PIL's convert() would clip every value above 255 to white.
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{im.mode} pixel values outside 0..65535; save it as an 8- or 16-bit image")
        im = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif im.mode == "F":
        raise ValueError("floating-point pixels; save it as an 8- or 16-bit image")
    if im.mode != "RGB":
        im = im.convert("RGB")
    if image_size and im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).copy()


def decode_image(path: Path, image_size: int = 0) -> np.ndarray:
    """One image file through :func:`pil_to_array`.

    Raises:
        DataError: the file cannot be read as an image (named in the message).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_array(im, image_size)
    except Exception as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {str(e)[:80]}); "
                        f"remove or replace the file") from None


def _decode_all(files: Sequence[Path], image_size: int) -> np.ndarray:
    if not files:
        raise DataError("no images found")
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes without holding the GIL
        arrays = list(pool.map(lambda p: decode_image(p, image_size), files, chunksize=64))
    first = arrays[0].shape
    for path, arr in zip(files, arrays):
        if arr.shape != first:
            raise DataError(
                f"images have different sizes: {files[0]} is {first[1]}x{first[0]} and {path} is "
                f"{arr.shape[1]}x{arr.shape[0]}; pass --image-size N to resize all to N x N"
            )
    if first[0] != first[1]:
        raise DataError(f"images are {first[1]}x{first[0]}, not square ({files[0]}); "
                        f"pass --image-size N to resize them to N x N")
    return np.stack(arrays)


def _cache_key(root: Path, splits: dict[str, _SplitFiles], image_size: int) -> str:
    # File names as the OS's bytes (os.fsencode): a name that is not valid UTF-8 (caf\xe9.jpg
    # from a Latin-1 system) is read through a surrogate escape that .encode() refuses.
    h = hashlib.sha1(f"v{_CACHE_VERSION}|".encode() + os.fsencode(root.resolve()) + f"|{image_size}".encode())
    for name, sf in splits.items():
        h.update(name.encode())
        for p, y in zip(sf.files, sf.labels):
            st = p.stat()
            h.update(os.fsencode(p.relative_to(root)) + f"|{y}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "eva8_utils"


def load_folder(root: str | Path, image_size: int = 0, cache_dir: str | Path | None = "",
                defer_cache: bool = False) -> Splits:
    """Images from ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (or ``val``).

    Also reads TinyImageNet's ``val/images`` + ``val_annotations.txt`` directly. Images
    are converted to RGB; ``image_size`` > 0 resizes all of them to that square size.
    Non-image files are skipped with a warning.

    Args:
        root: dataset root.
        image_size: target side in pixels, 0 to keep the (common, square) size.
        cache_dir: where the decoded arrays are cached; ``""`` = the user cache,
            ``None`` or ``"off"`` = no cache.
        defer_cache: do not write a new cache file now, but leave the write in
            ``Splits.pending_cache`` for :func:`commit_cache`, once the data is accepted (a
            run refused for its data leaves no cache behind).

    Raises:
        DataError: missing folders, empty class folders, unreadable images, mixed sizes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data-dir {root} does not exist; give the folder that holds train/ and test/")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root} has no train/ folder; expected {root}/train/<class>/* and {root}/test/<class>/*")
    classes = _class_folders(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class folders; expected {train_dir}/<class>/<image files>")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    test_dir = _test_split_dir(root)
    scans = {"train": _scan_class_split(train_dir, class_to_idx)}
    scans["test"] = (_scan_annotated_split(test_dir, class_to_idx)
                     if (test_dir / "val_annotations.txt").is_file()
                     else _scan_class_split(test_dir, class_to_idx))
    skipped = scans["train"].skipped + scans["test"].skipped
    if skipped:
        logger.warning("skipped %d non-image file(s) in %s, e.g. %s", len(skipped), root, skipped[0])

    cache_file = None
    if cache_dir not in (None, "off"):
        cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        cache_file = cache_root / f"folder-{_cache_key(root, scans, image_size)}.npz"
        if cache_file.is_file():
            try:
                with np.load(cache_file) as z:
                    arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
                logger.info("loaded decoded images from cache %s", cache_file)
                return Splits(**arrays, classes=classes, name=f"folder:{root.name}", skipped_files=len(skipped))
            except Exception:
                logger.warning("ignoring unreadable cache file %s; decoding again", cache_file)

    x_train = _decode_all(scans["train"].files, image_size)
    x_test = _decode_all(scans["test"].files, image_size)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"train images are {x_train.shape[2]}x{x_train.shape[1]} but test images are "
            f"{x_test.shape[2]}x{x_test.shape[1]}; pass --image-size N to resize both"
        )
    arrays = dict(x_train=x_train, y_train=np.asarray(scans["train"].labels, dtype=np.int64),
                  x_test=x_test, y_test=np.asarray(scans["test"].labels, dtype=np.int64))
    splits = Splits(**arrays, classes=classes, name=f"folder:{root.name}", skipped_files=len(skipped))
    if cache_file is not None:
        splits.pending_cache = lambda: _write_cache(cache_file, arrays)
        if not defer_cache:
            commit_cache(splits)
    return splits


def _write_cache(cache_file: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError as e:
        logger.warning("could not write the cache %s (%s); continuing without it", cache_file, e)


def commit_cache(splits: Splits) -> None:
    """Write the decoded images' cache that :func:`load_folder` (``defer_cache=True``) left
    pending, once; nothing to do for other data."""
    write, splits.pending_cache = splits.pending_cache, None
    if write is not None:
        write()


# ---------------------------------------------------------------------------------------
# shapes: procedural, offline, labels and boxes known by construction
# ---------------------------------------------------------------------------------------
def _shape_mask(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of shape class ``k`` in unit coordinates ``u, v`` (radius 1 = the shape's size)."""
    au, av = np.abs(u), np.abs(v)
    rr = np.sqrt(u * u + v * v)
    cheb = np.maximum(au, av)
    if k == 0:
        return rr <= 1.0                                                 # circle
    if k == 1:
        return cheb <= 0.8                                               # square
    if k == 2:
        return (v >= -0.85) & (v <= 0.85) & (au <= (v + 0.85) * 0.6)     # triangle, apex up
    if k == 3:
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))  # plus
    if k == 4:
        return (rr <= 1.0) & (rr >= 0.6)                                 # ring
    if k == 5:
        return au + av <= 1.0                                            # diamond
    if k == 6:
        return (np.abs(au - av) <= 0.3) & (cheb <= 0.85)                 # x
    if k == 7:
        return (au <= 1.0) & (av <= 0.3)                                 # horizontal bar
    if k == 8:
        return (au <= 0.3) & (av <= 1.0)                                 # vertical bar
    return (cheb <= 0.9) & (cheb >= 0.55)                                # frame


def _shape_masks(labels: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean masks (N, H, W) of each sample's shape."""
    out = np.zeros(u.shape, dtype=bool)
    for k in range(len(SHAPE_CLASSES)):
        sel = labels == k
        if sel.any():
            out[sel] = _shape_mask(k, u[sel], v[sel])
    return out


def _render_shapes(n: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(SHAPE_CLASSES), n)
    radius = rng.uniform(SHAPE_RADIUS[0] * size, SHAPE_RADIUS[1] * size, n)
    cy = rng.uniform(radius, size - 1 - radius)
    cx = rng.uniform(radius, size - 1 - radius)
    bg = rng.uniform(0.0, 1.0, (n, 3))
    fg = rng.uniform(0.0, 1.0, (n, 3))
    close = np.linalg.norm(fg - bg, axis=1) < 0.5
    fg[close] = (bg[close] + 0.5) % 1.0                 # keep the object visible
    noise = rng.normal(0.0, 1.0, (n, size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u = (xx[None] - cx[:, None, None]) / radius[:, None, None]
    v = (yy[None] - cy[:, None, None]) / radius[:, None, None]
    masks = _shape_masks(labels, u, v)
    # A noisy background and a nearly flat object: figure and ground differ locally,
    # so evidence for the class sits on the object (what the CAM checks rely on).
    # Centres are uniform over the positions where the whole object fits.
    img = np.where(masks[..., None], fg[:, None, None, :] + SHAPE_NOISE[0] * noise,
                   bg[:, None, None, :] + SHAPE_NOISE[1] * noise)
    images = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.stack([rows.argmax(1), cols.argmax(1),
                      size - 1 - rows[:, ::-1].argmax(1), size - 1 - cols[:, ::-1].argmax(1)], axis=1)
    return images, labels.astype(np.int64), boxes.astype(np.int64)


def make_shapes(n_train: int = 4000, n_test: int = 1000, seed: int = 0, size: int = 32) -> Splits:
    """Procedural dataset: 10 classes of coloured shapes at random position, scale and colour.

    The train and test splits come from independent child seeds, so the same ``seed``
    gives the same bytes and the test split does not depend on ``n_train``.
    Boxes are the tight bounding boxes of each object's pixels.
    """
    s_train, s_test = np.random.SeedSequence(seed).spawn(2)
    xtr, ytr, btr = _render_shapes(n_train, np.random.default_rng(s_train), size)
    xte, yte, bte = _render_shapes(n_test, np.random.default_rng(s_test), size)
    return Splits(x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=list(SHAPE_CLASSES),
                  boxes_train=btr, boxes_test=bte, name="shapes")


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------
def _from_cfg_cifar10(cfg: Any) -> Splits:
    return load_cifar10(cfg.data_dir)


def _from_cfg_folder(cfg: Any) -> Splits:
    return load_folder(cfg.data_dir, image_size=cfg.image_size, cache_dir=cfg.cache_dir, defer_cache=True)


SHAPES_BYTES_PER_PIXEL = 115  # peak while a split is drawn (float64 noise, masks, ...), measured


def shapes_memory(n_train: int, n_test: int, size: int = 32) -> int:
    """Bytes :func:`make_shapes` needs at its peak: one split drawn in float64, both kept as uint8."""
    return max(n_train, n_test) * size * size * SHAPES_BYTES_PER_PIXEL + (n_train + n_test) * size * size * 3


def _from_cfg_shapes(cfg: Any) -> Splits:
    from .checks import check_fits_memory

    check_fits_memory(shapes_memory(cfg.shapes_train, cfg.shapes_test),
                      f"--shapes-train {cfg.shapes_train} --shapes-test {cfg.shapes_test}",
                      "use fewer images (the default is 4000 and 1000)")
    return make_shapes(cfg.shapes_train, cfg.shapes_test, seed=cfg.seed)


DATASETS: dict[str, Callable[[Any], Splits]] = {
    "cifar10": _from_cfg_cifar10,
    "folder": _from_cfg_folder,
    "shapes": _from_cfg_shapes,
}


def load_dataset(cfg: Any) -> Splits:
    """Load the dataset a config names (``cfg.dataset``), resized if ``cfg.image_size`` asks,
    reduced to a class-balanced subset if ``cfg.train_subset`` asks."""
    splits = DATASETS[cfg.dataset](cfg)
    pending = splits.pending_cache
    if cfg.image_size and splits.image_size != cfg.image_size:
        splits = resize_splits(splits, cfg.image_size)
    if getattr(cfg, "train_subset", 0) and cfg.train_subset < len(splits.y_train):
        splits = subset_train(splits, cfg.train_subset, cfg.seed)
    splits.pending_cache = pending  # a folder's cache is written once the run accepts the data
    return splits


def balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices drawn at random (seeded) with the classes as equal as possible, sorted.

    Each class gives ``n // k`` samples (fewer if it has fewer) and the remainder is
    drawn from what is left, so a class-sorted folder dataset is sampled fairly.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = min(int(n), len(labels))
    classes = np.unique(labels)
    per_class = n // len(classes)
    chosen = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(idx)[:per_class])
    picked = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    extra = rng.permutation(rest)[: n - len(picked)]
    return np.sort(np.concatenate([picked, extra])).astype(np.int64)


def subset_train(splits: Splits, n: int, seed: int) -> Splits:
    """A copy of ``splits`` whose training split is a class-balanced random subset of ``n`` images."""
    idx = balanced_indices(splits.y_train, n, seed)
    boxes = splits.boxes_train[idx] if splits.boxes_train is not None else None
    return Splits(x_train=splits.x_train[idx], y_train=splits.y_train[idx], x_test=splits.x_test,
                  y_test=splits.y_test, classes=splits.classes, boxes_train=boxes, boxes_test=splits.boxes_test,
                  name=f"{splits.name} (train subset {len(idx)})")


def resize_splits(splits: Splits, size: int) -> Splits:
    """Bilinearly resize both splits to ``size`` x ``size`` (boxes are dropped)."""
    def resize(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
        return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    boxes = None
    if splits.boxes_test is not None:
        scale = size / splits.image_size
        boxes = np.clip(np.floor(splits.boxes_test * scale).astype(np.int64), 0, size - 1)
    return Splits(x_train=resize(splits.x_train), y_train=splits.y_train, x_test=resize(splits.x_test),
                  y_test=splits.y_test, classes=splits.classes, boxes_test=boxes, name=splits.name)


def dataset_stats(splits: Splits) -> dict[str, Any]:
    """Per-channel mean/std of both splits and class counts, for the ``stats`` command."""
    test_mean, test_std = channel_stats(splits.x_test)
    return {
        "image_size": splits.image_size, "n_train": int(len(splits.y_train)), "n_test": int(len(splits.y_test)),
        "mean": splits.mean, "std": splits.std, "test_mean": test_mean, "test_std": test_std,
        "train_counts": class_counts(splits.y_train, splits.num_classes).tolist(),
        "test_counts": class_counts(splits.y_test, splits.num_classes).tolist(),
    }
