"""Benchmark 4: the resnet18 recipe against two classic settings, ResNet18 at full width on a
seeded, class-balanced subset of the training split, each for the same number of epochs.

The main job (ResNet18, 20 epochs) needs a GPU; on a CPU the whole training split costs
about 8 minutes an epoch. This runs the full 20-epoch schedule on a subset instead
(default 5,000 training images, the full test split), side by side:

- recipe:  ``--recipe resnet18`` (SGD nesterov, batch 512, one-cycle to LR 0.4, label smoothing 0.1)
- classic: SGD momentum 0.9 (no nesterov), LR 0.1, batch 128, weight decay 5e-4, cosine, no label smoothing
- adam:    the original assignment's Adam at LR 0.01, batch 128, constant LR, no weight decay or smoothing
- recipe_ema / recipe_mixup / recipe_cutmix: the recipe with an EMA of the weights (decay 0.95 per
  step: 200 steps in all, a horizon of about 2 epochs), MixUp (alpha 0.2) or CutMix (alpha 1.0).
  5,000 images for 20 epochs overfit, which is where weight averaging and batch mixing should help.

Everything else is the same (ResNet18 with its zero-initialised residual scales, crop(pad 4) +
flip + 16x16 cutout on the device, precision auto, seed 1, flip+translate TTA at the end). Each
setting is one CLI run (``python -m eva8_utils.main``), so it goes through the same assembly as
every other run; its run folder is kept under ``--out-dir``.

    python benchmarks/bench_resnet18_subset.py --data-dir data/cifar10-jpeg
    python benchmarks/bench_resnet18_subset.py --smoke        # a tiny check on the shapes dataset
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {
    "recipe": ["--recipe", "resnet18"],
    "recipe_ema": ["--recipe", "resnet18", "--ema", "0.95"],
    "recipe_mixup": ["--recipe", "resnet18", "--mixup", "0.2"],
    "recipe_cutmix": ["--recipe", "resnet18", "--cutmix", "1.0"],
    "classic": ["--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--no-nesterov", "--weight-decay", "5e-4",
                "--batch-size", "128", "--scheduler", "cosine", "--label-smoothing", "0"],
    "adam": ["--optimizer", "adam", "--lr", "0.01", "--batch-size", "128", "--scheduler", "none",
             "--weight-decay", "0", "--label-smoothing", "0"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="CIFAR-10 image folder (the JPEG copy)")
    p.add_argument("--subset", type=int, default=5000, help="training images (class-balanced, seeded; 0 = the whole split, a GPU run)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", nargs="+", choices=sorted(SETTINGS), default=["recipe", "classic", "adam"],
                   help="settings to run (default: recipe classic adam)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes data, 1 epoch: checks the script only")
    p.add_argument("--out-dir", default="benchmarks/out/resnet18_subset")
    p.add_argument("--out", default="", help="JSON summary (default: OUT_DIR/summary.json)")
    args = p.parse_args()
    if args.smoke:
        data = ["--dataset", "shapes", "--shapes-train", "128", "--shapes-test", "32"]
        epochs, source = 1, "shapes (smoke check)"
        smoke = ["--batch-size", "32"]  # after each setting's own flags: 128 images hold no batch of 512
    elif args.data_dir and Path(args.data_dir).is_dir():
        data, smoke = ["--dataset", "folder", "--data-dir", args.data_dir], []
        epochs, source = args.epochs, f"CIFAR-10 (JPEG copy) from {args.data_dir}"
    else:
        sys.exit(f"error: --data-dir {args.data_dir!r} is not a folder; give the CIFAR-10 JPEG copy or use --smoke")
    out_dir = Path(args.out_dir)
    results = {"benchmark": "resnet18_subset", "data": source, "train_subset": args.subset, "epochs": epochs,
               "seed": args.seed, "runs": {}}
    for name in args.only:
        run_dir = out_dir / name
        cmd = [sys.executable, "-m", "eva8_utils.main", *data, "--model", "resnet18", *SETTINGS[name], *smoke,
               "--train-subset", str(args.subset), "--epochs", str(epochs), "--seed", str(args.seed),
               "--tta", "flip_translate", "--no-analysis", "--no-progress", "--out", str(run_dir), "--overwrite"]
        print("==", name, ":", " ".join(cmd[1:]), flush=True)
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        if rc != 0:  # the run printed its own one-line error above; stop with its exit code, nothing summarised
            sys.exit(rc)
        m = json.loads((run_dir / "metrics.json").read_text())
        results["runs"][name] = {k: m.get(k) for k in ("test_acc", "test_acc_tta", "best_test_acc", "epochs",
                                                        "epoch_time_s", "train_time_s", "device", "ema_test_acc",
                                                        "ema_test_acc_tta")}
        results["runs"][name]["flags"] = SETTINGS[name]
    out = Path(args.out) if args.out else out_dir / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results["runs"].items():
        print(f"{name}: {r['test_acc']:.2f}% (TTA {r['test_acc_tta']:.2f}%), {r['epoch_time_s']:.1f} s/epoch")


if __name__ == "__main__":
    main()
