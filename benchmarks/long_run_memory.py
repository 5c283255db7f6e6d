"""Memory under load: a long run (default 200 epochs) on a tiny shapes set, peak RSS per epoch.

Trains fastnet through the CLI's assembly (``experiment.build`` / ``train``) with a run folder (checkpoints, history and metrics
written every epoch) and records the process's current and peak RSS after each epoch.
Memory should stay flat: nothing grows with the number of epochs but the history.

    python benchmarks/long_run_memory.py --epochs 200 --out benchmarks/out/long_run_memory.json
"""

from __future__ import annotations

import argparse
import tempfile

from common import machine, write_json

from eva8_utils.config import build_config
from eva8_utils.engine import Callback
from eva8_utils.experiment import build, train
from eva8_utils.rundir import RunDir
from eva8_utils.utils import current_rss_mb, peak_rss_mb


class Track(Callback):
    def __init__(self, epochs):
        self.epochs, self.rss = epochs, {}

    def after_epoch(self, state):
        epoch = state.epoch
        self.rss[epoch] = (round(current_rss_mb(), 1), round(peak_rss_mb(), 1))
        if epoch in (1, 10, 50, 100, 150, 200) or epoch == self.epochs:
            print(f"epoch {epoch}: RSS {self.rss[epoch][0]} MiB, peak {self.rss[epoch][1]} MiB", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--test", type=int, default=64)
    p.add_argument("--out", default="benchmarks/out/long_run_memory.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = build_config(flags=dict(dataset="shapes", model="fastnet", width=0.5, epochs=args.epochs, batch_size=64,
                                      shapes_train=args.train, shapes_test=args.test, progress=False, tta="none",
                                      device="cpu", analysis=False, out=run_dir, checkpoint_minutes=0.0))
        exp = build(cfg)
        track = Track(args.epochs)
        train(exp, RunDir(run_dir), callbacks=[track])
    device, rss = exp.device, track.rss
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
