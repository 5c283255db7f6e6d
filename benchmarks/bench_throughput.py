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

from common import add_data_args, classic_loader, load_images, machine, median, now, sync, write_json

from eva8_utils.augment import AugmentConfig
from eva8_utils.data import DeviceLoader
from eva8_utils.engine import _autocast, autocast_dtype
from eva8_utils.models import create_model
from eva8_utils.utils import get_device


def _batches(loader, n, epoch=1):
    """``n`` batches, cycling epochs."""
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


def time_steps(model, make_iter, n_batches, batch_size, device, repeats, amp_dtype, channels_last):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def step(x, y):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp_dtype):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rates = []
    for _ in range(repeats):
        it = make_iter()
        x, y = next(it)
        step(x.to(device), y.to(device))  # warm-up
        sync(device)
        t0 = now()
        for x, y in itertools.islice(it, n_batches):
            step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        sync(device)
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
    amp_dtype = autocast_dtype(device, "auto")
    channels_last = device.type in ("cuda", "cpu")
    aug = AugmentConfig(crop_padding=4, flip="random", cutout=16)
    ours = DeviceLoader(splits.x_train, splits.y_train, batch_size=bs, mean=splits.mean, std=splits.std,
                        device=device, train=True, aug=aug, seed=0, channels_last=channels_last)
    workers = [int(w) for w in args.workers.split(",")]
    makers = {"ours": lambda: _batches(ours, 10**9)}
    for w in workers:
        loader = classic_loader(splits.x_train, splits.y_train, splits.mean, splits.std, bs, w)
        makers[f"classic_w{w}"] = (lambda ld=loader: _batches(ld, 10**9))

    result = {"benchmark": "throughput", "machine": machine(device), "data": source, "batch_size": bs,
              "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
              "repeats": args.repeats, "data_images_per_s": {}, "step_images_per_s": {}}
    for name, make in makers.items():
        result["data_images_per_s"][name] = round(time_data(make, args.data_batches, bs, device, args.repeats), 1)
        print(f"data {name}: {result['data_images_per_s'][name]:.0f} img/s", flush=True)

    step_batches = dict(kv.split("=") for kv in args.step_batches.split(","))
    for model_name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(model_name).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        n = int(step_batches.get(model_name, 5))
        rates = {}
        for name, make in makers.items():
            rates[name] = round(time_steps(model, make, n, bs, device, args.repeats, amp_dtype, channels_last), 1)
            print(f"step {model_name} {name}: {rates[name]:.1f} img/s", flush=True)
        # the model alone, on one fixed batch: the step cost without any input pipeline
        fixed = next(iter(ours))
        rates["no_data"] = round(time_steps(model, lambda: itertools.repeat(fixed), n, bs, device, args.repeats,
                                            amp_dtype, channels_last), 1)
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
