"""Benchmark 1: input pipeline and training-step throughput, ours vs the classic DataLoader.

Ours: the whole split as uint8 on the device, crop+flip+cutout batched there
(eva8_utils.data.DeviceLoader). Classic: torch DataLoader over the same images with
per-image torchvision transforms (RandomCrop(32, padding=4), flip, ToTensor, Normalize,
a 16x16 erase), num_workers 0 (as in the original assignment) and 2.

Measured: images/s of the data alone, and of a full training step (forward, backward,
SGD step) for each model with batches from each pipeline; ratios ours/classic; and the
share of our data path in our step time. Each figure is the median of --repeats runs.

    python benchmarks/bench_throughput.py --data-dir data/cifar10-jpeg --out benchmarks/out/throughput_cpu.json
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from common import Batches, add_data_args, batches, classic_loader, load_images, machine, median, now, sync, write_json

from eva8_utils.config import build_config
from eva8_utils.data import DeviceLoader
from eva8_utils.engine import Step, train_one_epoch
from eva8_utils.experiment import Experiment
from eva8_utils.utils import get_device


def time_data(make_iter, n_batches, batch_size, device, repeats):
    rates = []
    for _ in range(repeats):
        it = make_iter()
        first = next(it)  # worker start-up and first-batch costs are not counted
        del first
        sync(device)
        t0 = now()
        for x, y in itertools.islice(it, n_batches):
            x = x.to(device, non_blocking=True)
        sync(device)
        rates.append(n_batches * batch_size / (now() - t0))
    return median(rates)


def time_steps(exp, make_iter, n_batches, batch_size, repeats):
    """Images per second of the real training step (engine.train_one_epoch) on the assembled
    model and optimizer, fed by ``make_iter``."""
    def run(it, n):
        train_one_epoch(exp.train_model, Batches(it, n, exp.device), exp.optimizer, exp.device,
                        step=Step(amp_dtype=exp.precision.dtype, scaler=exp.scaler, log_every=10**9), progress=False)

    rates = []
    for _ in range(repeats):
        it = make_iter()
        run(it, 1)  # warm-up
        sync(exp.device)
        t0 = now()
        run(it, n_batches)
        sync(exp.device)
        rates.append(n_batches * batch_size / (now() - t0))
    return median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "CIFAR-10 image folder (JPEG copy); random images if missing")
    p.add_argument("--models", default="fastnet,resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-batches", type=int, default=40, help="batches timed for the data-only rate")
    p.add_argument("--step-batches", type=str, default="fastnet=8,resnet18=3",
                   help="batches timed per training-step measurement, per model")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", default="0,2", help="classic DataLoader num_workers values")
    p.add_argument("--out", default="benchmarks/out/throughput.json")
    args = p.parse_args()

    device = get_device(args.device)
    splits, source = load_images(args.data_dir, synthetic_n=args.synthetic)
    bs = args.batch_size
    # the training loader of the assignment's augmentation (crop pad 4, flip, 16x16 cutout), as the CLI builds it
    base = dict(dataset="folder", batch_size=bs, crop_padding=4, flip="random", cutout=16, device=device.type,
                progress=False, lr=1e-3, scheduler="none")
    data_exp = Experiment(build_config(flags=base))
    data_exp.load_data(splits)
    ours = data_exp.train_loader
    channels_last = ours.channels_last
    workers = [int(w) for w in args.workers.split(",")]
    makers = {"ours": lambda: batches(ours, 10**9)}
    for w in workers:
        loader = classic_loader(splits.x_train, splits.y_train, splits.mean, splits.std, bs, w)
        makers[f"classic_w{w}"] = (lambda ld=loader: batches(ld, 10**9))

    result = {"benchmark": "throughput", "machine": machine(device), "data": source, "batch_size": bs,
              "precision": data_exp.precision.name,
              "repeats": args.repeats, "data_images_per_s": {}, "step_images_per_s": {}}
    for name, make in makers.items():
        result["data_images_per_s"][name] = round(time_data(make, args.data_batches, bs, device, args.repeats), 1)
        print(f"data {name}: {result['data_images_per_s'][name]:.0f} img/s", flush=True)

    step_batches = dict(kv.split("=") for kv in args.step_batches.split(","))
    for model_name in args.models.split(","):
        exp = Experiment(build_config(flags={**base, "model": model_name}))  # the same assembly as the CLI
        exp.load_data(splits)
        exp.build_model()
        exp.build_optimizer()
        n = int(step_batches.get(model_name, 5))
        rates = {}
        for name, make in makers.items():
            rates[name] = round(time_steps(exp, make, n, bs, args.repeats), 1)
            print(f"step {model_name} {name}: {rates[name]:.1f} img/s", flush=True)
        # the model alone, on one fixed batch: the step cost without any input pipeline
        fixed = next(iter(ours))
        rates["no_data"] = round(time_steps(exp, lambda: itertools.repeat(fixed), n, bs, args.repeats), 1)
        result["step_images_per_s"][model_name] = rates

    d = result["data_images_per_s"]
    result["data_ratio_ours_vs_classic"] = {k: round(d["ours"] / v, 1) for k, v in d.items() if k != "ours"}
    result["step_ratio_ours_vs_classic"] = {
        m: {k: round(r["ours"] / v, 2) for k, v in r.items() if k.startswith("classic")}
        for m, r in result["step_images_per_s"].items()}
    # share of our data path in our step: (1/data_rate) / (1/step_rate)
    result["our_data_share_of_step"] = {m: round(r["ours"] / d["ours"], 4) for m, r in result["step_images_per_s"].items()}
    write_json(args.out, result)
    shares = ", ".join(f"{m} {100 * s:.1f}%" for m, s in result["our_data_share_of_step"].items())
    ratios = ", ".join(f"{m}: " + "/".join(f"{v}x" for v in r.values())
                       for m, r in result["step_ratio_ours_vs_classic"].items())
    print(f"throughput on {result['machine']['device']}: data ours {d['ours']:.0f} img/s vs classic "
          + ", ".join(f"{k} {v:.0f}" for k, v in d.items() if k != "ours")
          + f"; step ratio ours/classic (workers {args.workers}): {ratios}; our data share of a step: {shares}")


if __name__ == "__main__":
    main()
