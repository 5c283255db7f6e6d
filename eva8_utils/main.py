"""The command line: flags in, a run folder (or a table) out.

    python -m eva8_utils.main [flags]                 # train (or: eva8 [flags])
    python -m eva8_utils.main stats   --dataset folder --data-dir DIR
    python -m eva8_utils.main predict --checkpoint RUN/checkpoints/best.pt IMAGE_OR_FOLDER...
    python -m eva8_utils.main demo    --checkpoint RUN/checkpoints/best.pt [--export DIR]
    python -m eva8_utils.main compare RUN_DIR... --out DIR
    python -m eva8_utils.main sweep   --out DIR --norm batch group layer [training flags]
    torchrun --nproc_per_node=N -m eva8_utils.main [flags]

Training goes through :func:`eva8_utils.experiment.run_experiment`, the same assembly the
notebook and the benchmarks use. A mistake in the input is one line on stderr and exit
code 2, before anything is written; a non-finite loss exits with 3, Ctrl-C with 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from .cli import Parser, StopRequest, add_config_flags, command, field_help, flag_table  # noqa: F401 (also used from here)
from .config import TrainConfig, build_config, load_yaml
from .errors import ConfigError, NonFiniteLossError, TrainingInterrupted, UserError
from .utils import setup_logging

logger = logging.getLogger("eva8_utils")

SUBCOMMANDS = {
    "stats": "per-channel mean/std and class counts of a dataset",
    "predict": "classify image files or folders with a trained checkpoint (table, CSV, optional CAM overlays)",
    "demo": "a local web app (Gradio) for a checkpoint: upload an image, see top-k and the CAM; --export DIR "
            "writes a Hugging Face Space",
    "compare": "overlay the curves of several runs, tabulate them, one misclassified grid per run",
    "analyse": "draw the pictures, CAM checks and report of a finished run again from its checkpoint",
    "sweep": "train every combination of the values given to flags (e.g. --norm batch group layer), then compare",
}

EXAMPLES = """examples:
  eva8                                               # the assignment: ResNet18, CIFAR-10, 20 epochs
  eva8 --recipe fast --dataset folder --data-dir DIR # the fast recipe on an image folder
  eva8 --dataset shapes --model fastnet --epochs 3   # a one-minute check on the built-in dataset
  eva8 --out runs/r18 --resume                       # continue an interrupted run (at the exact batch)
  eva8 --import mymodels --model mynet               # a model your module registers
  eva8 --model mymodels:MyNet --lr-find --lr auto    # any callable(num_classes) -> nn.Module
  eva8 --config my.yaml --epochs 30                  # YAML (safe_load) + flags; flags win
  eva8 sweep --out runs/norms --norm batch group layer --dataset shapes --model fastnet --epochs 3
  eva8 analyse --out runs/r18                        # its pictures and report again, from the checkpoint
  eva8 compare runs/a runs/b --labels A B --out runs/compare
  eva8 predict --checkpoint runs/r18/checkpoints/best.pt cat.jpg photos/ --cam
  eva8 predict --checkpoint shared.pt --model mymodels:MyNet cat.jpg  # your code, named: see docs/checkpoints.md
  eva8 demo --checkpoint runs/r18/checkpoints/best.pt
"""


# ---------------------------------------------------------------------------------------
# The training parser (its pieces live in cli.py, shared with the subcommands)
# ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The training CLI: one flag per TrainConfig field (``--batch-size`` for batch_size)."""
    subs = "\n".join(f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items())
    p = Parser(
        prog=command(),
        description="Train an image classifier and write a run folder (curves, misclassified images, GradCAM, "
                    "confusion matrix, checkpoints, report). The defaults are the assignment: ResNet18 on "
                    f"CIFAR-10, 20 epochs, crop+flip+cutout, SGD + OneCycle.\n\nsubcommands ({command()} SUBCOMMAND "
                    f"--help):\n{subs}",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings (flags override it)")
    add_config_flags(p)
    return p


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Resolve the config of a run from command-line arguments.

    Precedence: defaults < a resumed run's saved config < recipe < ``--config`` YAML < flags.
    """
    ns = vars(build_parser().parse_args(argv))
    config_path = ns.pop("config", None)
    yaml_values = load_yaml(config_path) if config_path else {}
    resume = ns.get("resume", yaml_values.get("resume", False))
    if resume and ns.get("overwrite", yaml_values.get("overwrite")):
        raise ConfigError("--resume and --overwrite contradict each other; give one of them")
    base = None
    if resume:
        out = ns.get("out", yaml_values.get("out", ""))
        if not out:
            raise ConfigError("--resume needs --out RUN_DIR (the run folder to continue)")
        from .rundir import RunDir

        saved = RunDir(out).saved_config()
        if saved is None:
            raise ConfigError(f"--resume: {out} holds no run (no config.yaml); start it without --resume")
        base = {k: v for k, v in saved.items() if k not in ("resume", "overwrite", "out")}
    return build_config(yaml_values, ns, base=base)


def train_main(argv: Sequence[str]) -> int:
    from .experiment import run_experiment

    cfg = config_from_args(argv)
    with StopRequest() as stop:
        run_experiment(cfg, stop=stop)
    return 0


# ---------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------
def stats_main(argv: Sequence[str]) -> int:
    """``eva8 stats --dataset ... [--data-dir ...]``: mean/std and class counts."""
    from .data import commit_cache, dataset_stats, load_dataset
    from .experiment import check_names

    p = Parser(prog=command("stats"), description="Per-channel mean/std and class counts of a dataset.",
               argument_default=argparse.SUPPRESS)
    add_config_flags(p, ("dataset", "data_dir", "cache_dir", "image_size", "shapes_train", "shapes_test", "seed"))
    cfg = build_config(flags=vars(p.parse_args(argv)))
    check_names(cfg)
    splits = load_dataset(cfg)
    s = dataset_stats(splits)
    commit_cache(splits)
    fmt = _fmt3
    print(f"dataset: {splits.name}  image size: {s['image_size']}x{s['image_size']}  classes: {len(splits.classes)}"
          + (f"  (skipped {splits.skipped_files} non-image files)" if splits.skipped_files else ""))
    print(f"train split: {s['n_train']} images, mean {fmt(s['mean'])}, std {fmt(s['std'])}")
    print(f"test split:  {s['n_test']} images, mean {fmt(s['test_mean'])}, std {fmt(s['test_std'])}")
    width = max(len(c) for c in splits.classes)
    print(f"{'class':<{width}}  {'train':>7}  {'test':>7}")
    for c, a, b in zip(splits.classes, s["train_counts"], s["test_counts"]):
        print(f"{c:<{width}}  {a:>7}  {b:>7}")
    return 0


def _fmt3(v: Sequence[float]) -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in v) + ")"


# ---------------------------------------------------------------------------------------
# predict, demo, compare, sweep (each lives in its own module)
# ---------------------------------------------------------------------------------------
def predict_main(argv: Sequence[str]) -> int:
    from .predict import predict_cli

    return predict_cli(argv)


def demo_main(argv: Sequence[str]) -> int:
    from .demo import demo_cli

    return demo_cli(argv)


def compare_main(argv: Sequence[str]) -> int:
    from .compare import compare_cli

    return compare_cli(argv)


def sweep_main(argv: Sequence[str]) -> int:
    from .compare import sweep_cli

    return sweep_cli(argv)


def analyse_main(argv: Sequence[str]) -> int:
    """``eva8 analyse --out RUN``: the analysis of a finished run again (nothing is trained)."""
    from .experiment import analyse_run

    p = Parser(prog=command("analyse"), description="Draw the pictures, the CAM checks and report.md of a finished "
               "run again from its checkpoints/last.pt (e.g. after a picture could not be written).")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder")
    analyse_run(p.parse_args(argv).out)
    return 0


COMMANDS = {"analyse": analyse_main, "stats": stats_main, "predict": predict_main, "demo": demo_main, "compare": compare_main,
            "sweep": sweep_main}


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 3 non-finite loss, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        return train_main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except NonFiniteLossError as e:
        return e.exit_code
    except TrainingInterrupted as e:
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cli() -> None:
    """Console script ``eva8``: a closed pipe (``eva8 stats ... | head``) ends quietly."""
    logging.raiseExceptions = False  # a log line to a closed pipe must not print a traceback
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        code = 0
    except SystemExit as e:  # argparse --help
        code = e.code if isinstance(e.code, int) else 0
    if _stdout_closed():
        # Python flushes stdout again at exit; point it at /dev/null so that no error follows.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(code)


def _stdout_closed() -> bool:
    try:
        sys.stdout.flush()
        return False
    except (BrokenPipeError, ValueError, OSError):
        return True


if __name__ == "__main__":
    cli()
