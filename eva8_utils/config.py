"""TrainConfig: every knob of a run in one typed dataclass, plus named recipes.

Plain data: this module imports nothing from the rest of the package but its errors.
It checks types, ranges and the choices it owns (``FIELD_CHOICES``); names that live in
a registry (models, datasets, optimizers, schedulers, CAM methods) are checked by
:func:`eva8_utils.experiment.check_names`, which asks each registry, when a run is
assembled.

Precedence when a run is configured (lowest first): the dataclass defaults, the named
``recipe``, the YAML file (``--config``), then explicit command-line flags. The
resolved config is saved with every run and every checkpoint.

The defaults are the assignment: ResNet18 on CIFAR-10 for 20 epochs with
RandomCrop(32, padding=4), horizontal flip and a 16x16 cutout, SGD + OneCycle.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ConfigError

# Choices owned here (the modules that implement them import these lists).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
NORMS = ("batch", "group", "layer")
TTA_MODES = ("none", "flip", "flip_translate")
PAD_MODES = ("zeros", "reflect")
FLIP_MODES = ("random", "alternate", "none")
LOW_RES_MODES = ("resize", "crop")
ANNEAL = ("linear", "cos")
CLIP_MODES = ("norm", "value")
CAM_SMOOTH = ("none", "aug", "eigen")
WHITEN_BIAS_LR = ("schedule", "linear")

# Flag groups of --help, in order.
GROUPS = ("data", "augmentation", "model", "optimisation", "schedule", "run", "analysis")

# Settings that steer a run without changing what it computes: a resumed run may change
# them, and two runs that differ only here are the same experiment.
RUN_CONTROL = ("out", "resume", "overwrite", "progress", "log_every", "analysis", "readme_images",
               "checkpoint_minutes", "tensorboard", "num_images", "cam_method", "cam_layer", "cam_smooth",
               "device", "data_dir", "cache_dir")

_group = "run"
MAX_SEED = 2**32 - 1   # NumPy's seeds stop there; torch's at 2**64 - 1


# ---------------------------------------------------------------------------------------
# Recipes: named presets, applied under YAML values and explicit flags.
# ---------------------------------------------------------------------------------------
RECIPES: dict[str, dict[str, Any]] = {
    # The assignment, tuned for 20 epochs: ResNet18, crop+flip+cutout, SGD nesterov,
    # OneCycle with linear warm-up/decay, label smoothing, TTA reported at the end.
    "resnet18": dict(
        model="resnet18", epochs=20, batch_size=512, optimizer="sgd", lr=0.4, momentum=0.9,
        nesterov=True, weight_decay=5e-4, scheduler="onecycle", pct_start=0.25,
        div_factor=10.0, final_div_factor=100.0, anneal="linear", cycle_momentum=False,
        label_smoothing=0.1, crop_padding=4, pad_mode="zeros", flip="random", cutout=16,
        tta="flip_translate",
    ),
    # fastnet tuned for the shortest time to a target accuracy, after airbench94 (see
    # benchmarks/RESULTS.md), with SGD: 2-pixel translations with reflect padding and flips, no
    # cutout, SGD nesterov 0.85 with LR 0.75 per 512 images (mean loss) and a 64x LR on the norm
    # biases, weight decay 1.33e-3, label smoothing 0.2, a triangular one-cycle (x0.2 -> peak at
    # 23% -> x0.07), lookahead slow weights, the whitening (fitted on a class-balanced sample)
    # with its bias frozen after 3 epochs, airbench94's alternating flip, TTA at the end.
    "fast_sgd": dict(
        model="fastnet", epochs=10, batch_size=512, optimizer="sgd", lr=0.75, momentum=0.85,
        nesterov=True, weight_decay=1.33e-3, bias_lr_scale=64.0, scheduler="onecycle",
        pct_start=0.23, div_factor=5.0, final_div_factor=2.857, anneal="linear",
        cycle_momentum=False, label_smoothing=0.2, crop_padding=2, pad_mode="reflect",
        flip="alternate", cutout=0, lookahead=True, tta="flip_translate", whiten_bias_epochs=3,
    ),
}
# The fast recipe: fast_sgd with Muon for the convolution filters (airbench94_muon's settings:
# batch 2000 with the partial batch dropped, Muon LR 0.24 and momentum 0.6, SGD nesterov 0.85 for
# the head and biases at airbench94_muon's per-image LRs and decay, a linear decay to 0, no
# lookahead) for 10 epochs, the first 6 on 26x26 images (progressive resizing). Measured faster
# and more accurate than fast_sgd: benchmarks/RESULTS.md, benchmark 4.
RECIPES["fast"] = dict(
    RECIPES["fast_sgd"], optimizer="muon", lr=0.24, momentum=0.85, muon_momentum=0.6, bias_lr_scale=441.7,
    head_lr_scale=6.9, weight_decay=0.0167, scheduler="linear", batch_size=2000, drop_last=True,
    lookahead=False, epochs=10, low_res_size=26, low_res_epochs=6,
)
RECIPES = {name: RECIPES[name] for name in ("resnet18", "fast", "fast_sgd")}  # the order --help lists


def _f(default: Any, help: str, *, choices: tuple[str, ...] | None = None, registry: str | None = None,
       group: str | None = None) -> Any:
    """A dataclass field carrying its help text, flag group and choices as metadata.

    ``choices``: a list owned by this module; ``registry``: the name of a registry that
    owns the list (asked at run time, see :func:`eva8_utils.experiment.choices`).
    """
    meta: dict[str, Any] = {"help": help, "group": group or _group}
    if choices is not None:
        meta["choices"] = choices
    if registry is not None:
        meta["registry"] = registry
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a run. Units are given in each help text."""

    # --- data ---------------------------------------------------------------------------
    dataset: str = _f("cifar10", "data source", registry="datasets", group="data")
    data_dir: str = _f("./data", "cifar10: download/cache folder; folder: ROOT with train/ and test/ (or val/)",
                       group="data")
    cache_dir: str = _f("", "where decoded folder datasets are cached (.npz); '' = ~/.cache/eva8_utils, "
                            "'off' = no cache", group="data")
    image_size: int = _f(0, "resize images to N x N pixels; 0 = keep their (common, square) size", group="data")
    shapes_train: int = _f(4000, "shapes dataset: number of training images", group="data")
    shapes_test: int = _f(1000, "shapes dataset: number of test images", group="data")
    train_subset: int = _f(0, "train on a seeded, class-balanced random subset of N training images (0 = all)",
                           group="data")

    # --- augmentation (train split only, batched on the device) ---------------------------
    crop_padding: int = _f(4, "random crop after padding by this many pixels per side (0 = off)",
                           group="augmentation")
    pad_mode: str = _f("zeros", "padding for the random crop (zeros = the dataset mean)", choices=PAD_MODES,
                       group="augmentation")
    flip: str = _f("random", "horizontal flip (random: p=0.5 per sample and epoch; alternate: a random half once, "
                             "then every image mirrored on alternate epochs, as airbench94)",
                   choices=FLIP_MODES, group="augmentation")
    cutout: int = _f(16, "cutout square side in pixels, filled with the dataset mean (0 = off)", group="augmentation")
    cutout_p: float = _f(1.0, "probability of applying cutout to a sample", group="augmentation")
    cutout_holes: int = _f(1, "cutout squares per sample (CoarseDropout's num_holes)", group="augmentation")
    cutout_min: int = _f(0, "> 0: each cutout square's side is drawn per square from [--cutout-min, --cutout] "
                            "(CoarseDropout's hole size range); 0 = always --cutout", group="augmentation")
    cutout_fill: float = _f(-1.0, "cutout squares' grey level in [0, 1] (0 = black, CoarseDropout's fill), or -1 = "
                                  "the dataset mean", group="augmentation")
    affine_p: float = _f(0.0, "probability of a random shift/scale/rotate per sample (0 = off)", group="augmentation")
    affine_shift: float = _f(0.0625, "affine: max shift as a fraction of the image side", group="augmentation")
    affine_scale: float = _f(0.1, "affine: max relative scale change (0.1 = 0.9x..1.1x)", group="augmentation")
    affine_rotate: float = _f(15.0, "affine: max rotation in degrees", group="augmentation")
    grayscale_p: float = _f(0.0, "probability of converting a sample to grayscale", group="augmentation")
    jitter_p: float = _f(0.0, "probability of brightness/contrast jitter per sample", group="augmentation")
    brightness: float = _f(0.2, "jitter: max brightness change (fraction)", group="augmentation")
    contrast: float = _f(0.2, "jitter: max contrast change (fraction)", group="augmentation")
    low_res_size: int = _f(0, "progressive resizing: train the first --low-res-epochs epochs on N x N images "
                              "(see --low-res-mode); 0 = off", group="augmentation")
    low_res_epochs: int = _f(0, "progressive resizing: how many epochs at --low-res-size", group="augmentation")
    low_res_mode: str = _f("resize", "progressive resizing: resize = shrink the whole (augmented) image; crop = "
                                     "a random N x N window of it, so objects keep the size they have at test time",
                           choices=LOW_RES_MODES, group="augmentation")
    mixup: float = _f(0.0, "MixUp alpha: mix each batch with itself rolled by one, lambda ~ Beta(alpha, alpha), "
                           "soft targets (0 = off)", group="augmentation")
    cutmix: float = _f(0.0, "CutMix alpha: paste a box of area 1-lambda from the rolled batch, lambda ~ "
                            "Beta(alpha, alpha) (0 = off; with --mixup too, each batch picks one at random)",
                       group="augmentation")
    mix_p: float = _f(1.0, "probability that a batch is mixed (with --mixup or --cutmix)", group="augmentation")
    train_transform: str = _f("", "your own per-image pipeline for the training split, package.module:callable "
                                  "(an albumentations Compose, a torchvision v2 Compose, or a function of a PIL "
                                  "image) returning a (3, H, W) tensor; it runs in DataLoader workers instead of "
                                  "the flags above ('' = the package's GPU-batched augmentation)",
                              group="augmentation")
    test_transform: str = _f("", "your own per-image pipeline for the test split (as --train-transform; '' = the "
                                 "images as they are, normalised)", group="augmentation")

    # --- model --------------------------------------------------------------------------
    model: str = _f("resnet18", "a registered model name, or package.module:callable (the callable takes "
                                "num_classes and returns an nn.Module)", registry="models", group="model")
    imports: list = _f([], "modules to import before the model is looked up (they may register models); "
                           "on the command line --import MODULE, repeatable", group="model")
    norm: str = _f("batch", "normalisation layers (ResNets, custom_resnet, fastnet)", choices=NORMS, group="model")
    groups: int = _f(8, "number of groups for --norm group", group="model")
    dropout: float = _f(0.0, "dropout probability before the classifier (models that define it)", group="model")
    width: float = _f(1.0, "channel width multiplier (fastnet)", group="model")
    whiten_bias_epochs: int = _f(0, "fastnet: train the whitening bias for N epochs (at the base LR, with Muon at "
                                    "the biases' LR), then freeze it; 0 = all run (models without a whitening "
                                    "layer ignore it)", group="model")
    whiten_bias_lr: str = _f("schedule", "fastnet: the whitening bias's LR over its whiten_bias_epochs (schedule: the "
                                         "run's LR schedule, then frozen, as airbench94; linear: from its start "
                                         "linearly down to 0, as airbench94_muon)", choices=WHITEN_BIAS_LR,
                             group="model")

    # --- optimisation -------------------------------------------------------------------
    epochs: int = _f(20, "number of training epochs", group="optimisation")
    batch_size: int = _f(512, "images per step per process (under torchrun the global batch is this x world "
                              "size)", group="optimisation")
    drop_last: bool = _f(False, "drop each epoch's last partial training batch", group="optimisation")
    optimizer: str = _f("sgd", "optimizer; muon = Muon for the weight matrices and filters, SGD with Nesterov "
                               "momentum for the classifier head and the biases", registry="optimizers",
                        group="optimisation")
    lr: Any = _f(0.4, "learning rate: the peak for onecycle, the start for the others; 'auto' = the LR "
                      "finder's suggestion", group="optimisation")
    momentum: float = _f(0.9, "SGD momentum (Adam beta1)", group="optimisation")
    nesterov: bool = _f(True, "Nesterov momentum for SGD", group="optimisation")
    weight_decay: float = _f(5e-4, "L2 weight decay (decoupled for adamw; none on Muon's weights)",
                             group="optimisation")
    bias_lr_scale: float = _f(1.0, "LR multiplier for biases and norm parameters (their weight decay is divided "
                                   "by it)", group="optimisation")
    head_lr_scale: float = _f(1.0, "LR multiplier for the classifier head's weight (its weight decay is divided "
                                   "by it)", group="optimisation")
    muon_momentum: float = _f(0.6, "muon: momentum of the Muon-trained weights (--momentum is the SGD part's)",
                              group="optimisation")
    label_smoothing: float = _f(0.1, "label smoothing of the training loss (the test loss is plain "
                                     "cross-entropy)", group="optimisation")
    l1: float = _f(0.0, "L1 penalty lambda on the weights (added to the backpropagated loss, reported apart)",
                   group="optimisation")
    grad_clip: float = _f(0.0, "clip gradients to this max norm/value (0 = off)", group="optimisation")
    grad_clip_mode: str = _f("norm", "norm (global L2 norm) or value (element-wise)", choices=CLIP_MODES,
                             group="optimisation")
    lookahead: bool = _f(False, "slow weights every 5 steps after 3 epochs, averaging more as training ends, "
                                "copied back after every epoch (airbench94)", group="optimisation")
    ema: float = _f(0.0, "keep an exponential moving average of the weights with this decay per step (e.g. "
                         "0.999; BatchNorm statistics are averaged too), evaluated every epoch; 0 = off",
                    group="optimisation")

    # --- schedule -----------------------------------------------------------------------
    scheduler: str = _f("onecycle", "LR schedule", registry="schedulers", group="schedule")
    pct_start: float = _f(0.25, "onecycle: fraction of steps spent warming up", group="schedule")
    div_factor: float = _f(10.0, "onecycle: start LR = lr / div_factor", group="schedule")
    final_div_factor: float = _f(100.0, "onecycle: final LR = start LR / final_div_factor", group="schedule")
    anneal: str = _f("linear", "onecycle: the shape of the warm-up and the decay", choices=ANNEAL, group="schedule")
    cycle_momentum: bool = _f(False, "onecycle: cycle momentum inversely to the LR", group="schedule")
    warmup_epochs: float = _f(0.0, "linear/cosine/step/exponential/plateau: linear warm-up length in epochs "
                                   "(per step)", group="schedule")
    step_size: int = _f(10, "step: epochs between LR drops", group="schedule")
    step_gamma: float = _f(0.1, "step: LR factor at each drop", group="schedule")
    exp_gamma: float = _f(0.95, "exponential: LR factor per epoch", group="schedule")
    plateau_patience: int = _f(2, "plateau: epochs without test-loss improvement before a drop", group="schedule")
    plateau_factor: float = _f(0.1, "plateau: LR factor at a drop", group="schedule")
    plateau_threshold: float = _f(1e-4, "plateau: relative improvement that counts", group="schedule")
    min_lr: float = _f(0.0, "plateau: lower bound on the LR", group="schedule")

    # --- run ----------------------------------------------------------------------------
    recipe: str = _f("", "named preset applied under the other settings ('' = none)",
                     choices=("",) + tuple(RECIPES), group="run")
    seed: int = _f(1, "random seed: same seed, same run on CPU", group="run")
    device: str = _f("auto", "where to train", choices=DEVICES, group="run")
    precision: str = _f("auto", "auto = bf16 on CUDA GPUs of compute capability >= 8.0 (A100, H100) and on CPUs "
                                "with native bf16, fp16 + GradScaler on 7.x (T4, V100), else fp32",
                        choices=PRECISIONS, group="run")
    channels_last: bool = _f(True, "channels_last memory format (CUDA and CPU)", group="run")
    compile: bool = _f(False, "torch.compile the model (CUDA)", group="run")
    sync_bn: bool = _f(False, "convert BatchNorm to SyncBatchNorm under torchrun", group="run")
    log_every: int = _f(10, "steps between progress-bar updates (each update syncs with the device)", group="run")
    progress: bool = _f(True, "show tqdm progress bars", group="run")
    out: str = _f("", "run folder; '' = runs/<timestamp>-<model>", group="run")
    resume: bool = _f(False, "continue the run in --out from its last checkpoint", group="run")
    overwrite: bool = _f(False, "replace an existing run in --out", group="run")
    checkpoint_minutes: float = _f(10.0, "also checkpoint inside an epoch every this many minutes, so --resume "
                                         "continues at the exact batch (0 = epoch ends only)", group="run")
    tensorboard: bool = _f(False, "write TensorBoard scalars, images and hyperparameters into RUN/tensorboard "
                                  "(needs the tensorboard package)", group="run")

    # --- analysis -----------------------------------------------------------------------
    tta: str = _f("flip_translate", "test-time augmentation for the final evaluation, reported next to the plain "
                                    "accuracy", choices=TTA_MODES, group="analysis")
    analysis: bool = _f(True, "after training, write the pictures, report.md and CAM metrics", group="analysis")
    cam_method: str = _f("gradcam", "class-activation-map method", registry="cam_methods", group="analysis")
    cam_layer: str = _f("", "dotted module name for CAMs; '' = the model's default (a layer of at least 7x7)",
                        group="analysis")
    cam_smooth: str = _f("none", "CAM smoothing", choices=CAM_SMOOTH, group="analysis")
    num_images: int = _f(10, "misclassified images (and their CAMs) to show", group="analysis")
    lr_find: bool = _f(False, "run the LR range test before training and save its plot", group="analysis")
    lr_find_iters: int = _f(100, "LR finder: number of steps in the sweep", group="analysis")
    readme_images: bool = _f(False, "also copy the images to image/README/", group="analysis")

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (YAML- and checkpoint-safe)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with ``changes`` applied."""
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    @property
    def lr_is_auto(self) -> bool:
        return isinstance(self.lr, str) and self.lr == "auto"

    def validate(self) -> "TrainConfig":
        """Check types, ranges and the choices owned here; raise :class:`ConfigError` with one
        line naming the fix. Registry names are checked by ``experiment.check_names``."""
        _check_types(self)
        for name, f in _FIELDS.items():
            if "choices" in f.metadata:
                one_of(name, getattr(self, name), f.metadata["choices"])
        _check_ranges(self)
        _check_pipelines(self)
        return self


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def field_names() -> list[str]:
    return list(_FIELDS)


def field_meta(name: str) -> dict[str, Any]:
    """The help text, group and choices of a field."""
    return dict(_FIELDS[name].metadata)


def flag(name: str) -> str:
    """The command-line flag of a field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def one_of(name: str, value: Any, choices) -> None:
    """Raise the one-line error of a value that is not among ``choices``."""
    if value not in choices:
        listed = ", ".join(sorted(c for c in choices if c))
        raise ConfigError(f"{flag(name)} {value!r} is not valid; choose one of: {listed}")


def _check_types(cfg: TrainConfig) -> None:
    if isinstance(cfg.flip, bool):  # configs saved before flip had modes: true/false
        cfg.flip = "random" if cfg.flip else "none"
    if isinstance(cfg.imports, str):
        cfg.imports = [cfg.imports] if cfg.imports else []
    for name, f in _FIELDS.items():
        value = getattr(cfg, name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if name == "lr":
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or value == "auto"
            want = "a number or 'auto'"
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
            want = "a list of module names"
        elif isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            want = "a number"
        else:
            ok, want = isinstance(value, str), "a string"
        if not ok:
            raise ConfigError(f"{flag(name)} must be {want}, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(cfg, name, float(value))
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag(name)} must be finite, got {value!r}")
    if isinstance(cfg.lr, int):
        cfg.lr = float(cfg.lr)


def _check_pipelines(cfg: TrainConfig) -> None:
    """A per-image pipeline replaces the package's batch augmentation; mixing needs that path."""
    if cfg.train_transform and (cfg.mixup > 0 or cfg.cutmix > 0):
        raise ConfigError("--mixup/--cutmix mix whole batches on the package's own augmentation path; with "
                          "--train-transform leave them out (or drop --train-transform)")


def _check_ranges(cfg: TrainConfig) -> None:
    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{flag(name)} must be {what}, got {getattr(cfg, name)!r}")

    _check_optimisation_ranges(cfg, need)
    _check_data_and_run_ranges(cfg, need)


def _check_optimisation_ranges(cfg: TrainConfig, need: Callable[[bool, str, str], None]) -> None:
    need(cfg.epochs >= 1, "epochs", ">= 1")
    need(cfg.batch_size >= 1, "batch_size", ">= 1")
    if not cfg.lr_is_auto:
        need(cfg.lr > 0, "lr", "> 0 (or 'auto')")
    need(0 <= cfg.momentum < 1, "momentum", "in [0, 1)")
    need(cfg.weight_decay >= 0, "weight_decay", ">= 0")
    need(cfg.bias_lr_scale > 0, "bias_lr_scale", "> 0")
    need(cfg.head_lr_scale > 0, "head_lr_scale", "> 0")
    need(0 <= cfg.muon_momentum < 1, "muon_momentum", "in [0, 1)")
    need(0 < cfg.pct_start < 1, "pct_start", "in (0, 1)")
    need(cfg.div_factor > 0, "div_factor", "> 0")
    need(cfg.final_div_factor > 0, "final_div_factor", "> 0")
    need(0 <= cfg.warmup_epochs < cfg.epochs, "warmup_epochs", f">= 0 and < --epochs ({cfg.epochs})")
    need(cfg.step_size >= 1, "step_size", ">= 1")
    need(0 < cfg.step_gamma <= 1, "step_gamma", "in (0, 1]")
    need(0 < cfg.exp_gamma <= 1, "exp_gamma", "in (0, 1]")
    need(cfg.plateau_patience >= 0, "plateau_patience", ">= 0")
    need(0 < cfg.plateau_factor < 1, "plateau_factor", "in (0, 1)")
    need(cfg.plateau_threshold >= 0, "plateau_threshold", ">= 0")
    need(cfg.min_lr >= 0, "min_lr", ">= 0")
    need(0 <= cfg.label_smoothing < 1, "label_smoothing", "in [0, 1)")
    need(cfg.l1 >= 0, "l1", ">= 0")
    need(cfg.grad_clip >= 0, "grad_clip", ">= 0 (0 = off)")
    need(cfg.ema == 0 or 0 < cfg.ema < 1, "ema", "0 (off) or a decay in (0, 1), e.g. 0.999")
    need(0 <= cfg.seed <= MAX_SEED, "seed", f"in [0, {MAX_SEED}] (2**32 - 1)")
    need(cfg.log_every >= 1, "log_every", ">= 1")
    need(cfg.checkpoint_minutes >= 0, "checkpoint_minutes", ">= 0 (0 = only at the end of each epoch)")


def _check_data_and_run_ranges(cfg: TrainConfig, need: Callable[[bool, str, str], None]) -> None:
    need(cfg.image_size == 0 or cfg.image_size >= 8, "image_size", "0 (keep) or >= 8")
    need(cfg.shapes_train >= 10, "shapes_train", ">= 10")
    need(cfg.shapes_test >= 1, "shapes_test", ">= 1")
    need(cfg.train_subset >= 0, "train_subset", ">= 0 (0 = all)")
    need(cfg.crop_padding >= 0, "crop_padding", ">= 0 (0 = off)")
    need(cfg.cutout >= 0, "cutout", ">= 0 (0 = off)")
    need(cfg.cutout_holes >= 1, "cutout_holes", ">= 1")
    need(cfg.cutout_fill == -1 or 0 <= cfg.cutout_fill <= 1, "cutout_fill", "-1 (the mean) or in [0, 1]")
    need(0 <= cfg.cutout_min <= cfg.cutout, "cutout_min", f">= 0 and at most --cutout ({cfg.cutout})")
    for p in ("cutout_p", "affine_p", "grayscale_p", "jitter_p", "mix_p"):
        need(0 <= getattr(cfg, p) <= 1, p, "a probability in [0, 1]")
    need(cfg.mixup >= 0, "mixup", ">= 0 (0 = off)")
    need(cfg.low_res_size == 0 or cfg.low_res_size >= 8, "low_res_size", "0 (off) or >= 8")
    if cfg.low_res_size and not 0 <= cfg.low_res_epochs < cfg.epochs:
        raise ConfigError(f"--low-res-epochs must be >= 0 and < --epochs ({cfg.epochs}), got {cfg.low_res_epochs}: "
                          f"the last epochs see full-size images; give --low-res-epochs too (e.g. "
                          f"{min(cfg.epochs - 1, round(0.6 * cfg.epochs))}) or more --epochs")
    need(cfg.cutmix >= 0, "cutmix", ">= 0 (0 = off)")
    need(0 <= cfg.affine_shift <= 0.5, "affine_shift", "in [0, 0.5]")
    need(0 <= cfg.affine_scale < 1, "affine_scale", "in [0, 1)")
    need(0 <= cfg.affine_rotate <= 180, "affine_rotate", "in [0, 180] degrees")
    need(0 <= cfg.brightness < 1, "brightness", "in [0, 1)")
    need(0 <= cfg.contrast < 1, "contrast", "in [0, 1)")
    need(0 <= cfg.dropout < 1, "dropout", "in [0, 1)")
    need(cfg.groups >= 1, "groups", ">= 1")
    need(cfg.width > 0, "width", "> 0")
    need(cfg.whiten_bias_epochs >= 0, "whiten_bias_epochs", ">= 0 (0 = never frozen)")
    if cfg.whiten_bias_lr == "linear" and cfg.whiten_bias_epochs == 0:
        raise ConfigError("--whiten-bias-lr linear needs --whiten-bias-epochs N (N >= 1): the LR falls to 0 over "
                          "those epochs")
    need(cfg.num_images >= 1, "num_images", ">= 1")
    need(cfg.lr_find_iters >= 10, "lr_find_iters", ">= 10")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; give one of them")
    if cfg.resume and not cfg.out:
        raise ConfigError("--resume needs --out RUN_DIR (the run folder to continue)")


# ---------------------------------------------------------------------------------------
# Building a config from layers.
# ---------------------------------------------------------------------------------------
class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"duplicate key {key!r} on line {line}")
        self.key, self.line = key, line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping giving the same key twice (safe_load keeps
    the last value silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: construct_mapping says so itself
                break
            if duplicate:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` (the same safe constructors) that raises :class:`DuplicateKeyError`
    on a key given twice."""
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (``yaml.safe_load`` only) and check its keys.

    Raises:
        ConfigError: the file is missing, is not a mapping, or has unknown keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give the path of a YAML file")
    try:
        data = safe_load_unique(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as e:
        raise ConfigError(f"config file {path} gives {e.key!r} twice (line {e.line}); keep one of them") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}; fix its syntax") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read ({type(e).__name__}); give a UTF-8 YAML file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value")
    unknown = sorted(str(k) for k in data if k not in _FIELDS)
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown key(s): {', '.join(unknown)}; "
            f"valid keys are the TrainConfig fields (see --help)"
        )
    return data


def build_config(yaml_values: dict[str, Any] | None = None, flags: dict[str, Any] | None = None,
                 base: dict[str, Any] | None = None) -> TrainConfig:
    """Resolve a config: defaults < base (e.g. a resumed run's config) < recipe < YAML < flags.

    Args:
        yaml_values: values read by :func:`load_yaml`.
        flags: values given explicitly on the command line (or by a caller); a value of
            ``None`` counts as not given, so that the recipe's (or the default) value holds
            (the notebook's ``EPOCHS = None``).
        base: a full config to start from instead of the defaults.

    Returns:
        A validated :class:`TrainConfig`.
    """
    yaml_values = dict(yaml_values or {})
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = sorted(k for k in list(yaml_values) + list(flags) if k not in _FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {k: v for k, v in (base or {}).items() if k in _FIELDS}
    recipe = flags.get("recipe", yaml_values.get("recipe", values.get("recipe", "")))
    if recipe:
        one_of("recipe", recipe, _FIELDS["recipe"].metadata["choices"])
        # A recipe chosen now (not inherited from a resumed base) is applied over the base.
        if recipe != values.get("recipe"):
            values.update(RECIPES[recipe])
    values.update(yaml_values)
    values.update(flags)
    values["recipe"] = recipe
    return TrainConfig(**values).validate()


def experiment_settings(cfg: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """The settings that decide what a run computes (all but :data:`RUN_CONTROL`)."""
    d = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    return {k: v for k, v in d.items() if k not in RUN_CONTROL and k in _FIELDS}
