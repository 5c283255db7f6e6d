"""Benchmark 2: test accuracy after equal training-time budgets, our fast recipe vs the original.

Both recipes train on the same machine for the same wall-clock budget; at each mark
(default 5, 10 and 15 minutes of training, evaluation time excluded) the test
accuracy is measured on the full test split.

- ours: a recipe (``--recipe``, default ``fast_sgd``, the one RESULTS.md measured) exactly as the
  CLI runs it: built by ``eva8_utils.experiment.build``
  and trained by ``experiment.train`` (the same assembly, so lookahead, the frozen whitening
  bias and everything else the recipe sets are in), with ``--epochs`` setting the length of
  its schedule (fit it to the budget); accuracy reported plain and with flip+translate TTA.
- original: the original assignment's recipe: ResNet18, Adam lr 0.01, batch 128,
  the classic DataLoader (per-image torchvision transforms, num_workers 0), fp32.

    python benchmarks/bench_time_to_accuracy.py --data-dir data/cifar10-jpeg --recipe fast_sgd --epochs 7
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import add_data_args, classic_loader, load_images, machine, now, sync, write_json

from eva8_utils.config import RECIPES, build_config
from eva8_utils.data import DeviceLoader
from eva8_utils.engine import Callback, evaluate
from eva8_utils.errors import TrainingInterrupted
from eva8_utils.experiment import Experiment, train
from eva8_utils.models import create_model
from eva8_utils.utils import get_device, seed_everything


class Clock:
    """Training time with pauses for evaluation."""

    def __init__(self, device):
        self.device, self.total, self.t0 = device, 0.0, None

    def start(self):
        sync(self.device)
        self.t0 = now()

    def stop(self):
        sync(self.device)
        self.total += now() - self.t0
        self.t0 = None

    def elapsed(self):
        return self.total + (now() - self.t0 if self.t0 is not None else 0.0)


class MarkHooks(Callback):
    """Measures the test accuracy when the training clock passes each mark; the clock stops
    during these measurements and during fit's own per-epoch evaluation."""

    def __init__(self, exp, clock, marks):
        self.exp, self.clock, self.pending, self.results = exp, clock, list(marks), []
        self.last_step = None

    def measure(self, label_time):
        self.clock.stop()
        exp, amp = self.exp, self.exp.precision.dtype
        plain = evaluate(exp.model, exp.test_loader, device=exp.device, amp_dtype=amp)
        tta = evaluate(exp.model, exp.test_loader, device=exp.device, amp_dtype=amp, tta="flip_translate")
        print(f"ours at {label_time / 60:.1f} min: {plain['test_acc']:.2f}% (TTA {tta['test_acc']:.2f}%)", flush=True)
        self.clock.start()
        return {"minutes": round(label_time / 60, 2), "test_acc": plain["test_acc"], "test_acc_tta": tta["test_acc"]}

    def after_step(self, state):
        while self.pending and self.clock.elapsed() >= self.pending[0] * 60:
            self.results.append(self.measure(self.pending.pop(0) * 60))
        sync(self.exp.device)
        self.last_step = now()

    def after_epoch(self, state):
        self.clock.total -= now() - self.last_step  # fit's evaluation after the epoch is not training
        print(f"ours: epoch {state.epoch} done at {self.clock.elapsed() / 60:.2f} min of training", flush=True)


def run_ours(splits, device, marks, budget, epochs, seed, recipe="fast_sgd"):
    cfg = build_config(flags=dict(recipe=recipe, epochs=epochs, seed=seed, progress=False, tta="none",
                                  device=device.type, analysis=False))
    exp = Experiment(cfg)
    exp.load_data(splits)
    exp.build_model()
    exp.build_optimizer()
    clock = Clock(device)
    hooks = MarkHooks(exp, clock, marks)
    clock.start()
    try:
        train(exp, callbacks=[hooks], stop=lambda: clock.elapsed() >= budget * 60)
    except TrainingInterrupted:  # the budget ran out inside the schedule
        pass
    finished = clock.elapsed()
    results = hooks.results
    if hooks.pending:  # the run ended before these marks: its final weights stand for them
        final = hooks.measure(finished)
        results += [{**final, "minutes": m, "finished_at_minutes": round(finished / 60, 2)} for m in hooks.pending]
    return {"recipe": recipe, "epochs": epochs, "train_minutes": round(finished / 60, 2), "marks": results,
            "config": {k: v for k, v in cfg.to_dict().items()
                       if k in ("model", "batch_size", "lr", "epochs", "precision", "lookahead", "optimizer")}}


def run_original(splits, device, marks, budget, seed, batch_size=128, workers=0):
    seed_everything(seed)
    model = create_model("resnet18", zero_init_residual=False).to(device)  # the original init
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = classic_loader(splits.x_train, splits.y_train, splits.mean, splits.std, batch_size, workers, seed=seed)
    test = DeviceLoader(splits.x_test, splits.y_test, batch_size=500, mean=splits.mean, std=splits.std, device=device)
    clock, results, pending, steps = Clock(device), [], list(marks), 0
    clock.start()
    while pending:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            while pending and clock.elapsed() >= pending[0] * 60:
                clock.stop()
                r = evaluate(model, test, device=device)
                results.append({"minutes": pending.pop(0), "test_acc": r["test_acc"],
                                "images_seen": steps * batch_size})
                print(f"original at {results[-1]['minutes']} min: {r['test_acc']:.2f}% after "
                      f"{steps * batch_size} images", flush=True)
                clock.start()
            if not pending:
                break
    return {"recipe": "original (ResNet18, Adam lr 0.01, batch 128, classic loader, workers 0, fp32)",
            "marks": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p, "CIFAR-10 image folder (the JPEG copy); required for real numbers")
    p.add_argument("--marks", default="5,10,15", help="minutes of training at which to measure")
    p.add_argument("--recipe", choices=tuple(RECIPES), default="fast_sgd", help="our recipe (default: fast_sgd)")
    p.add_argument("--epochs", type=int, default=8, help="length of our one-cycle schedule (fit it to the budget)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", choices=("ours", "original"), default=None)
    p.add_argument("--out", default="benchmarks/out/time_to_accuracy.json")
    args = p.parse_args()
    device = get_device(args.device)
    splits, source = load_images(args.data_dir, synthetic_n=args.synthetic)
    marks = [float(m) for m in args.marks.split(",")]
    budget = max(marks)
    result = {"benchmark": "time_to_accuracy", "machine": machine(device), "data": source, "marks_minutes": marks}
    if args.only in (None, "ours"):
        result["ours"] = run_ours(splits, device, marks, budget, args.epochs, args.seed, args.recipe)
    if args.only in (None, "original"):
        result["original"] = run_original(splits, device, marks, budget, args.seed)
    write_json(args.out, result)
    parts = []
    for key in ("ours", "original"):
        if key in result:
            accs = ", ".join(f"{m['minutes']:g} min {m['test_acc']:.2f}%" for m in result[key]["marks"])
            parts.append(f"{key}: {accs}")
    print(f"time to accuracy on {result['machine']['device']} ({source}): " + "; ".join(parts))


if __name__ == "__main__":
    main()
