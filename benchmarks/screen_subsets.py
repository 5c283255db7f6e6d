"""Screening runs for levers the package does not offer: training on a subset of the images in later
epochs (the highest-loss ones, or a random control), and more Newton-Schulz steps for Muon.

Everything after this script's own flags goes to the CLI (``python -m eva8_utils.main``), so a run
is built by the CLI's assembly and writes a normal run folder; this script only patches, for this
one process, how the training loader picks an epoch's images and how many Newton-Schulz steps
``MuonSGD`` takes. Single process only (no torchrun).

    python benchmarks/screen_subsets.py --subset-from 2 --subset-fraction 0.8 -- \\
        --recipe fast --dataset folder --data-dir data/cifar10-jpeg --seed 1 --no-analysis --out runs/H2

With ``--subset-from K --subset-fraction F``, every epoch from K on trains on ``floor(F * N)`` of the
N training images, in a random order: with ``--select loss`` the images with the highest training
loss last seen (each image's per-sample loss from the last step that trained on it, under that
step's augmentation; ties in the order ``torch.argsort`` gives), with ``--select random`` a random
subset of the same size. The LR schedule's length is the run's real number of steps, so a linear or
cosine schedule still ends at 0.
"""

from __future__ import annotations

import argparse
import sys
import types

import torch
import torch.nn.functional as Fn

import eva8_utils.data as D
import eva8_utils.engine as E
import eva8_utils.experiment as X
from eva8_utils import augment as A
from eva8_utils.data import epoch_seed

SELECT = ("loss", "random")
STATE: dict = {"loss": None, "idx": None, "n_train": None}
OPTS = argparse.Namespace(subset_from=0, subset_fraction=1.0, select="loss", ns_steps=0)


def _active(loader: D.DeviceLoader) -> bool:
    return loader.train and OPTS.subset_from > 0 and loader.epoch >= OPTS.subset_from


def _bounds(n: int, batch: int, drop_last: bool) -> list[tuple[int, int]]:
    """The DeviceLoader's own batch plan for n training images on one process."""
    return _orig_plan(types.SimpleNamespace(num_samples=n, batch_size=batch, drop_last=drop_last, train=True,
                                            world_size=1, rank=0))


def subset_size(n: int) -> int:
    return int(OPTS.subset_fraction * n)


_orig_init, _orig_plan, _orig_order = D.DeviceLoader.__init__, D.DeviceLoader._plan, D.DeviceLoader.epoch_order


def _init(self, *args, **kwargs):
    _orig_init(self, *args, **kwargs)
    if self.train:
        if self.world_size > 1:
            raise SystemExit("screen_subsets.py: one process only (no torchrun)")
        STATE["n_train"], STATE["batch"], STATE["drop_last"] = len(self.images), self.batch_size, self.drop_last
        STATE["loss"] = torch.full((len(self.images),), float("inf"))  # never seen: hardest


def _plan(self):
    if not _active(self):
        return _orig_plan(self)
    return _bounds(subset_size(len(self.images)), self.batch_size, self.drop_last)


def _epoch_order(self):
    perm, params = _orig_order(self)
    if not _active(self):
        return perm, params
    n, m = len(self.images), subset_size(len(self.images))
    alternate = self.aug is not None and self.aug.flip == "alternate"  # airbench's flip belongs to the image
    if alternate:  # each image's mirroring this epoch, as the loader drew it (params are per position in perm)
        flip_of = torch.empty_like(params["flip"])
        flip_of[perm] = params["flip"]
    if OPTS.select == "random":
        chosen = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 31)))[:m]
    else:
        chosen = torch.argsort(STATE["loss"], descending=True)[:m]
    g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, salt=29))
    perm = chosen[torch.randperm(m, generator=g)]
    params = A.slice_params(params, slice(0, m))  # augmentation parameters are per position
    if alternate:
        params["flip"] = flip_of[perm]
    return perm, params


def _iterate(self, start: int = 0):
    """The loader's own batches, noting which images each one holds (for the loss)."""
    if self.train and self.aug is not None and self.aug.mixing:
        raise SystemExit("screen_subsets.py: batch mixing (--mixup/--cutmix) is not supported")
    perm, plan = (self.epoch_order()[0], self._plan()) if self.train else (None, None)
    for i, batch in enumerate(_orig_iterate(self, start), start):
        if perm is not None:
            s, e = plan[i]
            STATE["idx"] = perm[s:e]
        yield batch


_orig_iterate = D.DeviceLoader.iterate


def _cross_entropy(out, y, label_smoothing=0.0, **kw):
    """The training loss, keeping each image's loss (training steps only: grad enabled, default reduction)."""
    idx = STATE["idx"]
    if torch.is_grad_enabled() and not kw and idx is not None and out.shape[0] == len(idx):
        per = Fn.cross_entropy(out, y, label_smoothing=label_smoothing, reduction="none")
        STATE["loss"][idx] = per.detach().float().cpu()
        return per.mean()
    return Fn.cross_entropy(out, y, label_smoothing=label_smoothing, **kw)


class _Schedule(E.Schedule):
    """The run's schedule, its length set to the real number of steps."""

    def __init__(self, optimizer, name="none", *, epochs, steps_per_epoch, **kw):
        super().__init__(optimizer, name, epochs=epochs, steps_per_epoch=steps_per_epoch, **kw)
        if OPTS.subset_from > 0:
            small = len(_bounds(subset_size(STATE["n_train"]), STATE["batch"], STATE["drop_last"]))
            full_epochs = min(epochs, OPTS.subset_from - 1)
            self.total_steps = full_epochs * steps_per_epoch + (epochs - full_epochs) * small
            print(f"screen_subsets: {self.total_steps} steps ({full_epochs} epochs of {steps_per_epoch}, "
                  f"{epochs - full_epochs} of {small})", file=sys.stderr)


def _patch() -> None:
    D.DeviceLoader.__init__ = _init
    D.DeviceLoader._plan = _plan
    D.DeviceLoader.epoch_order = _epoch_order
    D.DeviceLoader.iterate = _iterate
    E.F = types.SimpleNamespace(**{k: getattr(Fn, k) for k in dir(Fn) if not k.startswith("__")})
    E.F.cross_entropy = _cross_entropy
    X.Schedule = _Schedule
    if OPTS.ns_steps:
        init = E.MuonSGD.__init__

        def muon_init(self, groups, lr, momentum=0.85, muon_momentum=0.6, nesterov=True, ns_steps=3):
            init(self, groups, lr, momentum, muon_momentum, nesterov, OPTS.ns_steps)
        E.MuonSGD.__init__ = muon_init


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(usage="%(prog)s [--subset-from K --subset-fraction F] [--select {loss,random}] "
                                      "[--ns-steps N] -- CLI-FLAGS", description=__doc__.split("\n\n")[0],
                                epilog="Flags after -- go to python -m eva8_utils.main.")
    p.add_argument("--subset-from", type=int, default=0, help="first epoch trained on a subset (0 = never)")
    p.add_argument("--subset-fraction", type=float, default=1.0, help="fraction of the training images per epoch")
    p.add_argument("--select", choices=SELECT, default="loss", help="highest loss last seen, or random")
    p.add_argument("--ns-steps", type=int, default=0, help="Newton-Schulz steps of MuonSGD (0 = its default, 3)")
    p.parse_args(own, namespace=OPTS)
    problem = ("--subset-from must be 0 (off) or >= 2 (epoch 1 trains on every image), with --subset-fraction in "
               "(0, 1)" if OPTS.subset_from < 0 or (OPTS.subset_from and not 0 < OPTS.subset_fraction < 1)
               or OPTS.subset_from == 1 else
               "--ns-steps must be >= 0" if OPTS.ns_steps < 0 else
               "give the CLI's flags after --, e.g. -- --recipe fast --dataset shapes" if not rest else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    _patch()
    from eva8_utils.main import main as cli
    return cli(rest)


if __name__ == "__main__":
    sys.exit(main())
