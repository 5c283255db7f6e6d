"""Memory under load: a long run (default 200 epochs) on a tiny shapes set, peak RSS per epoch.

Trains fastnet through ``fit`` with a run folder (checkpoints, history and metrics
written every epoch) and records the process's current and peak RSS after each epoch.
Memory should stay flat: nothing grows with the number of epochs but the history.

    python benchmarks/long_run_memory.py --epochs 200 --out benchmarks/out/long_run_memory.json
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from common import machine, write_json

from eva8_utils.config import TrainConfig
from eva8_utils.data import make_loaders, make_shapes
from eva8_utils.engine import fit, optimizer_from_config, schedule_from_config
from eva8_utils.models import model_from_config, prepare_model
from eva8_utils.utils import current_rss_mb, peak_rss_mb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--test", type=int, default=64)
    p.add_argument("--out", default="benchmarks/out/long_run_memory.json")
    args = p.parse_args()
    cfg = TrainConfig(dataset="shapes", model="fastnet", width=0.5, epochs=args.epochs, batch_size=64,
                      shapes_train=args.train, shapes_test=args.test, progress=False, tta="none")
    device = torch.device("cpu")
    splits = make_shapes(args.train, args.test, seed=0)
    train, test = make_loaders(splits, cfg, device)
    model = prepare_model(model_from_config(cfg, 10), train, device)
    opt = optimizer_from_config(model, cfg)
    rss = {}

    def track(epoch, _):
        rss[epoch] = (round(current_rss_mb(), 1), round(peak_rss_mb(), 1))
        if epoch in (1, 10, 50, 100, 150, 200) or epoch == args.epochs:
            print(f"epoch {epoch}: RSS {rss[epoch][0]} MiB, peak {rss[epoch][1]} MiB", flush=True)

    with tempfile.TemporaryDirectory() as run_dir:
        fit(model, train, test, opt, schedule_from_config(opt, cfg, len(train)), cfg, device=device,
            run_dir=run_dir, on_epoch_end=track)
    e10, elast = rss[min(10, args.epochs)], rss[args.epochs]
    result = {"benchmark": "long_run_memory", "machine": machine(device), "epochs": args.epochs,
              "rss_mb_at_epoch_10": e10[0], f"rss_mb_at_epoch_{args.epochs}": elast[0],
              "peak_rss_mb_at_epoch_10": e10[1], f"peak_rss_mb_at_epoch_{args.epochs}": elast[1],
              "per_epoch": {k: v for k, v in rss.items()}}
    write_json(args.out, result)
    print(f"memory over {args.epochs} epochs: RSS {e10[0]} MiB at epoch 10, {elast[0]} MiB at epoch {args.epochs}; "
          f"peak {e10[1]} -> {elast[1]} MiB")


if __name__ == "__main__":
    main()
