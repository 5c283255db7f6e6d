"""The training loader alone (no model), one epoch at a time, per recipe (benchmark 4 in RESULTS.md).

For each recipe, the training loader that a run of it builds (``Experiment.load_data``, the
CLI's assembly) yields whole epochs of augmented batches and nothing else runs: a full-size
epoch, and for a recipe with progressive resizing also its first, low-resolution one. Each
figure is the median of ``--repeats`` passes (after one untimed pass). Compare two versions of
the package by running this script from each checkout on the same machine.

    python benchmarks/bench_loader.py --data-dir data/cifar10-jpeg --recipes fast_sgd,fast --out benchmarks/out/loader_cpu.json
"""

from __future__ import annotations

import argparse
import sys

from common import add_data_args, load_images, machine, median, now, sync, write_json

from eva8_utils.config import RECIPES, build_config
from eva8_utils.errors import ConfigError
from eva8_utils.experiment import Experiment


def time_epoch(loader, epoch: int, device, repeats: int) -> dict:
    loader.set_epoch(epoch)
    for _ in loader:  # untimed pass: first-touch costs
        pass
    times, n, shape = [], 0, None
    for _ in range(repeats):
        sync(device)
        t0, n = now(), 0
        for x, _y in loader:
            n += 1
        sync(device)
        times.append(now() - t0)
        shape = list(x.shape)
    return {"epoch": epoch, "batches": n, "batch_shape": shape, "seconds": round(median(times), 3),
            "all_seconds": [round(t, 3) for t in times]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(p, "CIFAR-10 image folder (e.g. data/cifar10-jpeg)")
    p.add_argument("--recipes", default="fast_sgd,fast", help="comma-separated recipe names")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/out/loader.json")
    args = p.parse_args(argv)
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or not recipes or args.repeats < 1:
        print(f"error: --recipes takes names from {', '.join(RECIPES)} (got {args.recipes!r}) and --repeats must be "
              f">= 1 (got {args.repeats})", file=sys.stderr)
        return 2
    splits, data = load_images(args.data_dir, args.synthetic)
    result = {"benchmark": "training loader alone, one epoch", "data": data, "repeats": args.repeats, "recipes": {}}
    for name in recipes:
        try:
            cfg = build_config(flags=dict(recipe=name, device=args.device, batch_size=min(
                RECIPES[name].get("batch_size", 512), len(splits.y_train))))
            exp = Experiment(cfg)
            exp.load_data(splits)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        loader = exp.train_loader
        epochs = {"full_size": time_epoch(loader, cfg.epochs, exp.device, args.repeats)}
        if cfg.low_res_size and cfg.low_res_epochs:
            epochs["low_res"] = time_epoch(loader, 1, exp.device, args.repeats)
        result["recipes"][name] = epochs
        result["machine"] = machine(exp.device)
        print(name, {k: (v["batch_shape"], v["seconds"]) for k, v in epochs.items()})
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
