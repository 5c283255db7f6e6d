"""Write a folder dataset (the CIFAR-10 JPEG copy) in airbench's format, so that airbench's
CifarLoader trains on the same images as this package:

    python benchmarks/airbench_data.py DATA_DIR OUT_DIR

DATA_DIR holds train/<class>/* and test/<class>/*; OUT_DIR gets train.pt and test.pt, each
``{'images': uint8 (N, H, W, 3), 'labels': int64 (N,), 'classes': [names]}`` (what
``airbench.CifarLoader(OUT_DIR, train=...)`` reads; given those files it downloads nothing).
The images are decoded by the package's own folder loader: the same pixels, the same class
order.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva8_utils.data import load_folder  # noqa: E402
from eva8_utils.errors import DataError  # noqa: E402


def write_airbench_files(data_dir: str | Path, out_dir: str | Path, cache_dir: str | Path | None = "") -> dict:
    """Decode ``data_dir`` and write ``out_dir``/train.pt and test.pt; returns the counts."""
    splits = load_folder(data_dir, cache_dir=cache_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test)):
        torch.save({"images": torch.from_numpy(x).contiguous(), "labels": torch.from_numpy(y).long(),
                    "classes": list(splits.classes)}, out / f"{name}.pt")
    return {"train": len(splits.y_train), "test": len(splits.y_test), "classes": len(splits.classes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="the folder with train/ and test/ (e.g. the unpacked CIFAR-10 JPEG copy)")
    parser.add_argument("out_dir", help="where train.pt and test.pt go")
    parser.add_argument("--cache-dir", default="", help="the package's decoded-image cache ('off' for none)")
    args = parser.parse_args(argv)
    try:
        counts = write_airbench_files(args.data_dir, args.out_dir, args.cache_dir)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}/train.pt ({counts['train']} images) and test.pt ({counts['test']}), "
          f"{counts['classes']} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
