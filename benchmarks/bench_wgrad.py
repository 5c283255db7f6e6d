"""Training steps of the `fast` recipe with and without the matrix-product weight gradient (CPU).

Alternates fresh processes, one core each and one thread: ``--cpu-gemm-wgrad`` on, then off
(or the other way round, every other pair), each timing ``--steps`` real training steps
(engine.train_one_epoch: forward, backward, the recipe's Muon/SGD step) of fastnet on a
random batch of the recipe's size at ``--size`` pixels, after ``--warmup`` steps. Random
data: the step's time does not depend on the pixel values. Writes each process's mean step
time and the ratio of each pair (on / off).

    python benchmarks/bench_wgrad.py --size 26 --size 32 --pairs 4 --out benchmarks/out/wgrad_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(size: int, on: bool, steps: int, warmup: int, batch_size: int | None) -> dict:
    import torch

    from eva8_utils.config import build_config
    from eva8_utils.engine import train_one_epoch
    from eva8_utils.experiment import optimizer_from_config
    from eva8_utils.models import create_model, model_options
    from eva8_utils.models.cpu_conv import use_gemm_wgrad
    from eva8_utils.utils import keep_freed_memory

    keep_freed_memory()
    cfg = build_config(flags=dict(recipe="fast", dataset="shapes", device="cpu"))
    torch.manual_seed(0)
    model = create_model("fastnet", **model_options(cfg)).to(memory_format=torch.channels_last)
    use_gemm_wgrad(model, on)
    optimizer = optimizer_from_config(model, cfg)
    n = batch_size or cfg.batch_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (n,), generator=gen)
    taken = set()  # the convolutions whose weight gradient took the matrix products (seen in the first step)
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: taken.add(name) if out.grad_fn is not None
                                     and "_Conv3x3" in out.grad_fn.name() else None)
             for name, m in model.named_modules() if hasattr(m, "gemm_wgrad")]

    def run(n: int) -> None:
        train_one_epoch(model, [(x, y)] * n, optimizer, device=torch.device("cpu"), amp_dtype=torch.bfloat16,
                        label_smoothing=cfg.label_smoothing, progress=False, log_every=10**9)

    run(1)
    for h in hooks:
        h.remove()
    run(max(0, warmup - 1))
    t0 = time.perf_counter()
    run(steps)
    return {"step_s": (time.perf_counter() - t0) / steps, "gemm_convs": sorted(taken)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, action="append", help="image side in pixels (repeatable; default 26 and 32)")
    p.add_argument("--pairs", type=int, default=4, help="on/off pairs of processes per size")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--core", type=int, default=None, help="pin every process to this core (taskset)")
    p.add_argument("--out", default="benchmarks/out/wgrad_cpu.json")
    p.add_argument("--child", nargs=2, metavar=("SIZE", "ON"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(int(a.child[0]), a.child[1] == "1", a.steps, a.warmup, a.batch_size)))
        return
    if a.steps < 1 or a.warmup < 1 or a.pairs < 1 or min(a.size or [32]) < 16:
        p.error("--steps, --warmup and --pairs must be at least 1, --size at least 16 (fastnet's smallest input)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pin = ["taskset", "-c", str(a.core)] if a.core is not None else []
    rows = []
    for size in a.size or [26, 32]:
        for i in range(a.pairs):
            res = {}
            for on in ((True, False) if i % 2 == 0 else (False, True)):
                cmd = pin + [sys.executable, __file__, "--child", str(size), "1" if on else "0", "--steps",
                             str(a.steps), "--warmup", str(a.warmup)]
                cmd += ["--batch-size", str(a.batch_size)] if a.batch_size else []
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"bench_wgrad: a timed process failed: {out.stderr.strip().splitlines()[-1]}")
                res[on] = json.loads(out.stdout.strip().splitlines()[-1])
            on_s, off_s = res[True]["step_s"], res[False]["step_s"]
            rows.append({"size": size, "pair": i + 1, "on_s": round(on_s, 4), "off_s": round(off_s, 4),
                         "ratio": round(on_s / off_s, 3), "gemm_convs_on": res[True]["gemm_convs"],
                         "gemm_convs_off": res[False]["gemm_convs"]})
            print(json.dumps(rows[-1]), flush=True)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"steps": a.steps, "warmup": a.warmup, "threads": 1, "batch_size": a.batch_size or "the recipe's",
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
