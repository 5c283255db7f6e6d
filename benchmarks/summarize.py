"""Print the summary lines of a gpu.sh output folder (and write summary.json there).

    python benchmarks/summarize.py benchmarks/out/gpu

Per group of runs (the main job, the fast recipe, airbench94, airbench95): every seed's time and test
accuracy without and with TTA, and the means; the main job's seconds per epoch and MFU; the fp16 runs
next to the bf16 run of the same seed. Reads whatever the folder holds: a step that failed or was
skipped is left out (steps.txt says which).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

KEYS = ("epochs", "test_acc", "test_acc_tta", "train_time_s", "epoch_time_s", "wall_time_s", "precision",
        "train_tflops_per_s", "mfu")


def _run(folder: Path) -> dict | None:
    p = folder / "metrics.json"
    if not p.is_file():
        return None
    m = json.loads(p.read_text())
    return {k: m.get(k) for k in KEYS} if m.get("status") == "done" else None


def _group(name: str, runs: dict[int, dict]) -> dict:
    """Per-seed entries and their means, and the printed lines."""
    out: dict = {"runs": {str(s): r for s, r in sorted(runs.items())}}
    for key in ("test_acc", "test_acc_tta", "train_time_s", "epoch_time_s", "mfu"):
        values = [r[key] for r in runs.values() if r.get(key) is not None]
        if values:
            out[f"mean_{key}"] = round(statistics.mean(values), 4)
    for s, r in sorted(runs.items()):
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else ""
        print(f"{name} seed {s}: {r.get('train_time_s')} s training ({r.get('epoch_time_s')} s/epoch{mfu}), "
              f"test {r.get('test_acc')}% (TTA {r.get('test_acc_tta')}%)")
    if len(runs) > 1:
        print(f"{name}, mean of {len(runs)} seeds: test {out.get('mean_test_acc')}% "
              f"(TTA {out.get('mean_test_acc_tta')}%), {out.get('mean_train_time_s')} s training")
    return out


def _seeds(out: Path, prefix: str) -> dict[int, dict]:
    runs = {}
    for folder in out.glob(f"{prefix}_s[0-9]*"):
        r = _run(folder)
        if r is not None:
            runs[int(folder.name.rsplit("_s", 1)[1])] = r
    return runs


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out/gpu")
    gpu = (out / "gpu.txt").read_text().strip().splitlines() if (out / "gpu.txt").exists() else ["?"]
    summary: dict = {"gpu": gpu}
    print("card:", gpu[0])
    for name, prefix in (("main job", "main"), ("fast recipe", "fast")):
        runs = _seeds(out, prefix)
        if runs:
            summary[prefix] = _group(name, runs)
        fp16 = _run(out / f"{prefix}_fp16")
        if fp16 is not None:
            summary.setdefault(prefix, {})["fp16"] = fp16
            bf = runs.get(1, {})
            gap = (round(fp16["test_acc_tta"] - bf["test_acc_tta"], 2)
                   if fp16.get("test_acc_tta") is not None and bf.get("test_acc_tta") is not None else None)
            summary[prefix]["fp16_minus_seed1_tta"] = gap
            print(f"{name} in fp16, seed 1: {fp16['train_time_s']} s training, test {fp16['test_acc']}% "
                  f"(TTA {fp16['test_acc_tta']}%; {gap:+} points against seed 1)" if gap is not None else
                  f"{name} in fp16, seed 1: test {fp16['test_acc']}%")
    for v in ("airbench94", "airbench95"):
        p = out / f"{v}.json"
        if p.is_file():
            r = json.loads(p.read_text())
            summary[v] = r
            if "skipped" in r:
                print(f"{v}: skipped ({r['skipped']})")
            else:
                for run in r["runs"]:
                    print(f"{v} seed {run['seed']}: {run['train_time_s']} s, test {run['test_acc']}% "
                          f"(TTA {run['test_acc_tta']}%)")
    nb = _run(out / "notebook")
    if nb is not None:
        summary["notebook"] = nb
        print(f"notebook: {nb['epochs']} epochs, test {nb['test_acc']}%")
    tp = out / "throughput.json"
    if tp.exists():
        t = json.loads(tp.read_text())
        summary["throughput"] = {k: t.get(k) for k in ("step_images_per_s", "step_ratio_ours_vs_classic",
                                                       "data_images_per_s")}
    steps = out / "steps.txt"
    summary["steps"] = steps.read_text().splitlines() if steps.exists() else []
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
