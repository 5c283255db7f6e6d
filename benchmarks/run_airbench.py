"""Run airbench94 / airbench95 (the `airbench` package, 0.1.8) on the data this package trains on,
on the same card, and write their times and accuracies as JSON:

    python benchmarks/airbench_data.py DATA_DIR AB_DIR         # train.pt / test.pt from the JPEG copy
    python benchmarks/run_airbench.py AB_DIR --variant 94 --seeds 3 --out airbench94.json

airbench's own protocol: one warm-up run first (not counted), then one timed run per seed; the time
is airbench's training time (its whitening init and the epochs, CUDA events), without evaluation.
Accuracy on the test split without and with its TTA (mirror + translate, ``tta_level=2``).
Needs CUDA: elsewhere (and without the package) it writes ``{"skipped": reason}`` and exits 0,
so benchmarks/gpu.sh's CPU smoke test passes through it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def run(data: Path, variant: str, seeds: int) -> dict | None:
    """The runs' results; ``{"skipped": why}`` without CUDA or airbench; None when ``data`` lacks the files."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "airbench needs CUDA"}
    try:
        import airbench
        from airbench import CifarLoader, evaluate
    except ImportError:
        return {"skipped": "airbench is not installed (pip install airbench==0.1.8)"}
    if not (data / "train.pt").is_file() or not (data / "test.pt").is_file():
        return None
    lib = getattr(airbench, f"lib_airbench{variant}")
    train = getattr(airbench, f"train{variant}")
    hyp = lib.hyp
    # airbench reads its test split from ./cifar10/test.pt: run in a folder where that is `data`
    work = Path(tempfile.mkdtemp(prefix="airbench"))
    (work / "cifar10").symlink_to(data.resolve(), target_is_directory=True)
    here = os.getcwd()
    os.chdir(work)
    try:
        def loader():
            return CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                               altflip=True)

        test_loader = CifarLoader("cifar10", train=False, batch_size=2000)
        train(loader(), run="warmup", verbose=False)
        runs = []
        for seed in range(1, seeds + 1):
            torch.manual_seed(seed)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model = train(loader(), run=seed, verbose=False)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            runs.append({"seed": seed, "train_time_s": round(seconds, 3),
                         "test_acc": round(100 * evaluate(model, test_loader, tta_level=0), 2),
                         "test_acc_tta": round(100 * evaluate(model, test_loader, tta_level=2), 2)})
            print(f"airbench{variant} seed {seed}: {seconds:.2f} s, {runs[-1]['test_acc']:.2f}% "
                  f"({runs[-1]['test_acc_tta']:.2f}% with TTA)", flush=True)
    finally:
        os.chdir(here)
    mean = {k: round(sum(r[k] for r in runs) / len(runs), 3) for k in ("train_time_s", "test_acc", "test_acc_tta")}
    return {"variant": f"airbench{variant}", "package": getattr(airbench, "__version__", "0.1.8"),
            "card": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": runs, "mean": mean}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="the folder with airbench's train.pt and test.pt")
    parser.add_argument("--variant", choices=("94", "95"), default="94")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    result = run(args.data, args.variant, args.seeds)
    if result is None:
        print(f"error: {args.data} holds no train.pt and test.pt; write them with benchmarks/airbench_data.py",
              file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(result.get("skipped") or f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
