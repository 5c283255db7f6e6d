"""Images per second of the two input paths, each feeding the real training step.

- device: the package's own path (uint8 on the training device, crop + flip + cutout per batch there);
- pipeline: a course-style albumentations pipeline (flip, shift/scale/rotate, CoarseDropout, ToGray,
  Normalize, ToTensorV2) given as --train-transform, in DataLoader workers (one per core).

Same model, optimizer, batch size and machine; the first steps of each path are a warm-up.

    python benchmarks/bench_input_paths.py --data-dir DIR/cifar10-jpeg --model fastnet --steps 20
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from common import ROOT, add_data_args, load_images, machine, now, sync, write_json

from eva8_utils.config import build_config
from eva8_utils.engine import Step, train_one_epoch
from eva8_utils.experiment import Experiment

PIPELINE = textwrap.dedent("""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    train_tf = A.Compose([
        A.HorizontalFlip(),
        A.Affine(translate_percent=0.05, scale=(0.95, 1.05), rotate=(-15, 15), p=0.5),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(16, 16), hole_width_range=(16, 16),
                        fill=tuple(int(255 * m) for m in MEAN), p=0.5),
        A.ToGray(p=0.1),
        A.Normalize(mean=MEAN, std=STD),
        ToTensorV2(),
    ])
""")


class Steps:
    """The first ``n`` batches of a loader's epoch, with a length (what train_one_epoch wants)."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                return
            yield batch


def rate(splits, flags: dict, steps: int, warmup: int) -> tuple[float, str]:
    exp = Experiment(build_config(flags=flags))
    exp.load_data(splits)
    exp.build_model()
    exp.build_optimizer()
    step = Step(amp_dtype=exp.precision.dtype, scaler=exp.scaler, log_every=10**9)
    exp.train_loader.set_epoch(1)
    train_one_epoch(exp.train_model, Steps(exp.train_loader, warmup), exp.optimizer, exp.device, step=step,
                    progress=False)
    sync(exp.device)
    exp.train_loader.set_epoch(2)
    t0 = now()
    train_one_epoch(exp.train_model, Steps(exp.train_loader, steps), exp.optimizer, exp.device, step=step,
                    progress=False)
    sync(exp.device)
    return steps * exp.cfg.batch_size / (now() - t0), exp.train_loader.description


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "CIFAR-10 JPEG copy (DIR/train, DIR/test); random images when absent")
    p.add_argument("--model", default="fastnet")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="benchmarks/out/input_paths.json")
    args = p.parse_args()
    scratch = ROOT / "benchmarks" / "out"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "bench_pipeline_tf.py").write_text(PIPELINE)
    sys.path.insert(0, str(scratch))
    splits, source = load_images(args.data_dir, args.synthetic)
    base = dict(dataset="folder", model=args.model, batch_size=args.batch_size, device=args.device, progress=False,
                scheduler="none", lr=0.01)
    results = {}
    for name, extra in (("device", {}), ("pipeline", {"train_transform": "bench_pipeline_tf:train_tf"})):
        images_per_s, description = rate(splits, {**base, **extra}, args.steps, args.warmup)
        results[name] = {"images_per_s": round(images_per_s, 1), "path": description}
        print(f"{name}: {images_per_s:.0f} images/s ({description})", flush=True)
    results["device_over_pipeline"] = round(results["device"]["images_per_s"] / results["pipeline"]["images_per_s"], 2)
    import torch

    write_json(args.out, {"benchmark": "input_paths", "data": source, "model": args.model,
                          "batch_size": args.batch_size, "steps": args.steps,
                          "machine": machine(torch.device("cpu" if args.device == "auto" else args.device)),
                          "command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
                          **results})


if __name__ == "__main__":
    main()
