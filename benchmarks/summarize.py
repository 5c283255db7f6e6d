"""Print the summary lines of a gpu.sh output folder (and write summary.json there).

    python benchmarks/summarize.py benchmarks/out/gpu [TARGET]

TARGET: the test accuracy with TTA whose time is reported (default 91, gpu.sh's).
Variants timed alone (``timed_NAME``) are given against the reference run's time when ``fast_ref`` ran.
Reads whatever the folder holds: a step that failed or was skipped is left out (steps.txt says which).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _fast_run(name: str, metrics: Path) -> dict:
    """One fastnet run's summary entry, and its line printed."""
    m = json.loads(metrics.read_text())
    print(f"{name} {m['epochs']} epochs: {m['train_time_s']} s training, test {m['test_acc']:.2f}% "
          f"(TTA {m.get('test_acc_tta', float('nan')):.2f}%)")
    return {k: m.get(k) for k in ("epochs", "test_acc", "test_acc_tta", "train_time_s", "epoch_time_s")}


def _screen(folder: Path) -> dict:
    """The screening runs (NAME_sSEED/metrics.json), grouped by NAME: per-seed results and the means."""
    groups: dict[str, list[dict]] = {}
    for p in sorted(folder.glob("*_s[0-9]*/metrics.json")):
        name, seed = p.parent.name.rsplit("_s", 1)
        m = json.loads(p.read_text())
        groups.setdefault(name, []).append({"seed": int(seed), "test_acc": m["test_acc"],
                                            "test_acc_tta": m.get("test_acc_tta"), "epochs": m["epochs"]})
    out = {}
    for name, runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        tta = [r["test_acc_tta"] for r in runs if r["test_acc_tta"] is not None]
        out[name] = {"runs": runs, "n": len(runs), "mean_test_acc": round(statistics.mean(r["test_acc"] for r in runs), 3),
                     "mean_test_acc_tta": round(statistics.mean(tta), 3) if tta else None,
                     "sd_test_acc_tta": round(statistics.stdev(tta), 3) if len(tta) > 1 else None}
        print(f"screen {name}: {len(runs)} seeds, test {out[name]['mean_test_acc']:.2f}% "
              f"(TTA {out[name]['mean_test_acc_tta']}%, sd {out[name]['sd_test_acc_tta']})")
    return out


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out/gpu")
    target = float(sys.argv[2]) if len(sys.argv) > 2 else 91.0
    gpu = (out / "gpu.txt").read_text().strip().splitlines() if (out / "gpu.txt").exists() else ["?"]
    summary = {"gpu": gpu, "target": target}
    r18 = out / "resnet18" / "metrics.json"
    if r18.exists():
        m = json.loads(r18.read_text())
        summary["resnet18"] = {k: m.get(k) for k in ("epochs", "test_acc", "test_acc_tta", "epoch_time_s",
                                                       "train_time_s", "device")}
        print(f"resnet18 recipe: {m['epochs']} epochs, {m.get('epoch_time_s')} s/epoch, test {m['test_acc']:.2f}% "
              f"(TTA {m.get('test_acc_tta', float('nan')):.2f}%) on {m.get('device')}")
    runs = [_fast_run("fast recipe", p) for p in
            sorted(out.glob("fast_[0-9]*/metrics.json"), key=lambda p: int(p.parent.name.split("_")[1]))]
    summary["fast"] = runs
    hit = [r for r in runs if (r.get("test_acc_tta") or 0) >= target]
    summary["fast_time_to_target_s"] = hit[0]["train_time_s"] if hit else None
    print(f"fast recipe time to {target:g}% (TTA): " + (f"{hit[0]['train_time_s']} s" if hit else "not reached"))
    ref = out / "fast_ref" / "metrics.json"
    if ref.exists():
        summary["fast_ref"] = _fast_run("fast recipe, reference run", ref)
        same = [r for r in runs if r["epochs"] == summary["fast_ref"]["epochs"]]
        if same:
            summary["fast_time_vs_ref"] = round(same[0]["train_time_s"] / summary["fast_ref"]["train_time_s"], 3)
            print(f"fast recipe time vs the reference run's: {summary['fast_time_vs_ref']}x")
    timed = sorted(out.glob("timed_*/metrics.json"))
    if timed:
        summary["timed"] = {}
    for p in timed:
        name = p.parent.name[len("timed_"):]
        entry = summary["timed"][name] = _fast_run(f"variant {name}", p)
        if "fast_ref" in summary:
            entry["time_vs_ref"] = round(entry["train_time_s"] / summary["fast_ref"]["train_time_s"], 3)
            print(f"variant {name} time vs the reference run's: {entry['time_vs_ref']}x")
    sgd = out / "fast_sgd" / "metrics.json"
    if sgd.exists():
        summary["fast_sgd"] = _fast_run("fast_sgd recipe", sgd)
    tp = out / "throughput.json"
    if tp.exists():
        t = json.loads(tp.read_text())
        summary["throughput"] = {k: t[k] for k in ("data_images_per_s", "step_images_per_s",
                                                   "data_ratio_ours_vs_classic", "step_ratio_ours_vs_classic",
                                                   "our_data_share_of_step")}
        print("throughput step ratio ours/classic: " + json.dumps(t["step_ratio_ours_vs_classic"]))
    nb = out / "notebook" / "metrics.json"
    if nb.exists():
        m = json.loads(nb.read_text())
        summary["notebook"] = {k: m.get(k) for k in ("epochs", "test_acc", "test_acc_tta", "epoch_time_s", "device")}
        print(f"notebook: {m['epochs']} epochs, test {m['test_acc']:.2f}% on {m.get('device')}")
    if (out / "screen").is_dir():
        summary["screen"] = _screen(out / "screen")
    steps = out / "steps.txt"
    summary["steps"] = steps.read_text().splitlines() if steps.exists() else []
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
