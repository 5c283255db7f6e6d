"""Benchmark 5: test-time augmentation settings on trained checkpoints (no training).

For each run folder given, the final weights (``checkpoints/last.pt``) classify the test split
under every view of a fixed set: the image and its mirror, each shifted by up to ``--max-shift``
pixels in x and y (reflect padding, as in training). Each TTA scheme is a weighted mean of the
views' logits, so one pass over the views scores every scheme:

- ``none``, ``flip``, ``flip_translate``: the package's modes (``eva8_utils.engine.tta_logits``);
  ``flip_translate`` is recomputed here from the views and must match the package's to within
  bf16 rounding (checked on the first run, and the run's own ``metrics.json`` value is printed next to it).
- ``flip_shift4``: the mirror pair at the centre (weight 1/2) and at the four 1-pixel axial
  shifts (1/8 each).
- ``flip_shift8``: the mirror pair at the centre (1/2) and at all eight 1-pixel shifts (1/16 each).
- ``flip_grid3``: the mirror pair at the nine positions of the 3x3 grid, equal weights.
- ``flip_grid5``: the mirror pair at the 25 positions of the 5x5 grid (shifts up to 2), equal weights.

The schemes are fixed here before any number is seen, and every run's result is printed,
so a scheme that helps one model and hurts another shows it.

    python benchmarks/bench_tta.py --data-dir data/cifar10-jpeg runs/A runs/B ... [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eva8_utils.checkpoint import load_model  # noqa: E402
from eva8_utils.data import load_folder  # noqa: E402
from eva8_utils.engine import tta_logits  # noqa: E402
from eva8_utils.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from eva8_utils.utils import normalize  # noqa: E402


def views(x: torch.Tensor, max_shift: int):
    """(dy, dx, flipped) -> the view of the batch ``x`` shifted by (dy, dx) with reflect padding."""
    h, w = x.shape[-2:]
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    for dy in range(-p, p + 1):
        for dx in range(-p, p + 1):
            v = padded[..., p + dy:p + dy + h, p + dx:p + dx + w]
            yield (dy, dx, False), v
            yield (dy, dx, True), v.flip(-1)


def combine(logits: dict[tuple, torch.Tensor], weights: dict[tuple, float]) -> torch.Tensor:
    """A scheme's logits: the weighted mean of its views' logits."""
    return sum(w * logits[k] for k, w in weights.items())


def schemes(max_shift: int) -> dict[str, dict[tuple, float]]:
    """Each scheme: view key -> weight (weights sum to 1)."""
    pair = lambda dy, dx, w: {(dy, dx, False): w / 2, (dy, dx, True): w / 2}  # noqa: E731
    out = {"none": {(0, 0, False): 1.0}, "flip": pair(0, 0, 1.0)}
    # the package's flip_translate: 1/2 centre pair, 1/4 each for the pairs shifted by one pixel
    # up-left and down-right (the package reads padded[0:h, 0:w]: view(i, j) = image(i - 1, j - 1))
    out["flip_translate"] = {**pair(0, 0, 0.5), **pair(-1, -1, 0.25), **pair(1, 1, 0.25)}
    out["flip_shift4"] = {**pair(0, 0, 0.5), **{k: v for d in ((-1, 0), (1, 0), (0, -1), (0, 1))
                                                 for k, v in pair(*d, 0.125).items()}}
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    out["flip_shift8"] = {**pair(0, 0, 0.5), **{k: v for d in ring for k, v in pair(*d, 0.5 / 8).items()}}
    grid3 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    out["flip_grid3"] = {k: v for d in grid3 for k, v in pair(*d, 1 / 9).items()}
    if max_shift >= 2:
        grid5 = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
        out["flip_grid5"] = {k: v for d in grid5 for k, v in pair(*d, 1 / 25).items()}
    return out


@torch.no_grad()
def view_logits(model, x_all: torch.Tensor, max_shift: int, batch: int = 1000, amp: bool = True
                ) -> dict[tuple, torch.Tensor]:
    """Logits of every view of ``x_all`` (float32; the forward pass under bf16 autocast with ``amp``)."""
    out: dict[tuple, list] = {}
    for i in range(0, len(x_all), batch):
        x = x_all[i:i + batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            for key, v in views(x, max_shift):
                out.setdefault(key, []).append(model(v.contiguous(memory_format=torch.channels_last)).float())
    return {k: torch.cat(v) for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders with checkpoints/last.pt")
    p.add_argument("--data-dir", required=True, help="the image folder the runs were trained on")
    p.add_argument("--max-shift", type=int, default=2, choices=(1, 2))
    p.add_argument("--json", default="", help="write the results here")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (CheckpointError, DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in %, two decimals."""
    return round(100.0 * (logits.argmax(1) == y).float().mean().item(), 2)


@torch.no_grad()
def _run(args) -> int:
    missing = [r for r in args.runs if not (Path(r) / "checkpoints" / "last.pt").is_file()]
    if missing:
        raise CheckpointError(f"{missing[0]} has no checkpoints/last.pt; give run folders of finished runs")
    splits = load_folder(args.data_dir)
    y = torch.as_tensor(splits.y_test)
    results = {}
    for i, run in enumerate(args.runs):
        model, ckpt = load_model(Path(run) / "checkpoints" / "last.pt")
        model = model.to(memory_format=torch.channels_last)
        x = normalize(torch.as_tensor(splits.x_test).permute(0, 3, 1, 2), ckpt["mean"], ckpt["std"])
        logits = view_logits(model, x, args.max_shift)
        row = {}
        for name, weights in schemes(args.max_shift).items():
            row[name] = accuracy(combine(logits, weights), y)
        if i == 0:  # the recomputed flip_translate against the package's own function
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ref = torch.cat([tta_logits(model, x[j:j + 1000].contiguous(memory_format=torch.channels_last),
                                            "flip_translate").float() for j in range(0, len(x), 1000)])
            row["flip_translate_package"] = accuracy(ref, y)
        metrics = Path(run) / "metrics.json"
        if metrics.is_file():
            row["metrics_json_tta"] = json.loads(metrics.read_text()).get("test_acc_tta")
        results[str(run)] = row
        print(Path(run).name, json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"data": f"CIFAR-10 (JPEG copy) test split from {args.data_dir}",
                                               "max_shift": args.max_shift, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
