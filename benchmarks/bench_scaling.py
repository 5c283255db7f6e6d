"""Benchmark 3: how the cost grows with the dataset size, the image size and the batch size.

For each (images, side) pair a fresh process builds that many random uint8 images,
keeps them on the device in a DeviceLoader with crop+flip+cutout, and trains fastnet
for --steps steps; it reports training images/s, the epoch time this implies
(images / rate: a projection, the timed part is --steps steps), and the process's
peak memory (peak RSS on CPU, peak allocated memory on CUDA). Then the throughput
for several batch sizes at 32x32.

    python benchmarks/bench_scaling.py --out benchmarks/out/scaling_cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import ROOT, machine, write_json


def child(n: int, side: int, batch: int, steps: int, device_name: str, model_name: str) -> dict:
    import numpy as np
    import torch

    from common import Batches, batches, now, sync
    from eva8_utils.config import build_config
    from eva8_utils.data import Splits
    from eva8_utils.engine import Step, train_one_epoch
    from eva8_utils.experiment import Experiment
    from eva8_utils.utils import peak_rss_mb

    g = np.random.default_rng(0)
    x = g.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    y = g.integers(0, 10, n)
    splits = Splits(x, y, x[:16], y[:16], [str(i) for i in range(10)], mean=(0.5,) * 3, std=(0.25,) * 3,
                    name="random")
    # the assignment's augmentation (crop pad 4, flip, 16x16 cutout), built as the CLI builds a run
    exp = Experiment(build_config(flags=dict(dataset="folder", model=model_name, batch_size=batch, device=device_name,
                                             cutout=min(16, side), lr=1e-3, scheduler="none", progress=False)))
    exp.load_data(splits)
    del x, splits
    exp.build_model()
    exp.build_optimizer()
    device = exp.device
    it = batches(exp.train_loader, steps + 1)

    def step_block(k):
        train_one_epoch(exp.train_model, Batches(it, k, device), exp.optimizer, device,
                        step=Step(amp_dtype=exp.precision.dtype, log_every=10**9), progress=False)

    step_block(1)  # the first step warms up
    sync(device)
    t0 = now()
    step_block(steps)
    sync(device)
    rate = steps * batch / (now() - t0)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
    return {"images": n, "side": side, "batch": batch, "steps_timed": steps, "images_per_s": round(rate, 1),
            "epoch_s_projected": round(n / rate, 1), "peak_mem_mb": round(mem, 1),
            "data_mb": round(n * side * side * 3 / 2**20, 1)}


def run_child(args_list: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args_list], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="fastnet")
    p.add_argument("--sizes", default="10000,25000,50000")
    p.add_argument("--sides", default="32,64")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-sizes", default="32,64,128,256,512,1024")
    p.add_argument("--images-per-batch-test", type=int, default=4096, help="images timed per batch size")
    p.add_argument("--out", default="benchmarks/out/scaling.json")
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        n, side, batch, steps, dev, model = args.child
        print(json.dumps(child(int(n), int(side), int(batch), int(steps), dev, model)))
        return

    import torch

    from eva8_utils.utils import get_device

    device = get_device(args.device)
    result = {"benchmark": "scaling", "machine": machine(device), "model": args.model, "by_size": [],
              "by_batch": []}
    for side in [int(s) for s in args.sides.split(",")]:
        for n in [int(v) for v in args.sizes.split(",")]:
            r = run_child([str(n), str(side), str(args.batch), str(args.steps), str(device), args.model])
            result["by_size"].append(r)
            print(f"{n} images {side}x{side}: {r['images_per_s']:.0f} img/s, epoch ~{r['epoch_s_projected']:.0f} s, "
                  f"peak memory {r['peak_mem_mb']:.0f} MiB (data {r['data_mb']:.0f} MiB)", flush=True)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        steps = max(3, args.images_per_batch_test // bs)
        r = run_child([str(max(10000, bs * (steps + 2))), "32", str(bs), str(steps), str(device), args.model])
        result["by_batch"].append(r)
        print(f"batch {bs}: {r['images_per_s']:.0f} img/s, peak memory {r['peak_mem_mb']:.0f} MiB", flush=True)
    write_json(args.out, result)
    s = result["by_size"]
    print("scaling on " + result["machine"]["device"] + ": " + "; ".join(
        f"{r['images']//1000}k@{r['side']}px {r['epoch_s_projected']:.0f} s/epoch {r['peak_mem_mb']:.0f} MiB" for r in s))


if __name__ == "__main__":
    main()
