"""Plots for RESULTS.md from the benchmark JSON files.

    python benchmarks/plot_results.py benchmarks/results/time_to_accuracy_cpu.json benchmarks/results/scaling_cpu.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.figure import Figure


def time_to_accuracy(data: dict, out: Path) -> None:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for key, label, style in (("ours", "fast recipe (fastnet)", "o-"), ("original", "original (ResNet18, Adam)", "s-")):
        if key in data:
            marks = data[key]["marks"]
            other = data[key].get("machine", {}).get("cpu")  # a side measured on another machine says so
            if other and other != data["machine"]["cpu"]:
                label += f", on {other}"
            ax.plot([m["minutes"] for m in marks], [m["test_acc"] for m in marks], style, label=label)
            if key == "ours":
                ax.plot([m["minutes"] for m in marks], [m["test_acc_tta"] for m in marks], "o--",
                        label="fast recipe, with TTA", alpha=0.7)
    ax.set_xlabel("training time (minutes, evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"CIFAR-10 (JPEG copy), {data['machine']['cpu']}, {data['machine']['cpu_cores']} cores", fontsize=9)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out, dpi=110)


def scaling(data: dict, out: Path) -> None:
    fig = Figure(figsize=(10, 4), layout="constrained")
    a, b = fig.subplots(1, 2)
    for side in sorted({r["side"] for r in data["by_size"]}):
        rows = [r for r in data["by_size"] if r["side"] == side]
        a.plot([r["images"] for r in rows], [r["epoch_s_projected"] for r in rows], "o-", label=f"{side}x{side}")
    a.set_xlabel("training images")
    a.set_ylabel("seconds per epoch (projected)")
    a.set_title("Epoch time vs dataset size")
    a.grid(alpha=0.3)
    a.legend()
    rows = data["by_batch"]
    b.plot([r["batch"] for r in rows], [r["images_per_s"] for r in rows], "o-")
    b.set_xscale("log", base=2)
    b.set_ylim(bottom=0)
    b.set_xlabel("batch size")
    b.set_ylabel("training images/s")
    b.set_title("Throughput vs batch size (32x32)")
    b.grid(alpha=0.3)
    fig.suptitle(f"{data['model']} on {data['machine']['device']}")
    fig.savefig(out, dpi=110)


def main() -> None:
    for arg in sys.argv[1:]:
        path = Path(arg)
        data = json.loads(path.read_text())
        out = Path(__file__).parent / (path.stem + ".png")
        {"time_to_accuracy": time_to_accuracy, "scaling": scaling}[data["benchmark"]](data, out)
        print("wrote", out)


if __name__ == "__main__":
    main()
