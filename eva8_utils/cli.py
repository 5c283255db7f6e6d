"""The command line's building blocks, shared by every subcommand: the argparse parser
that turns a usage mistake into one line (exit code 2), one flag per TrainConfig field,
the README's flag table, and the Ctrl-C / SIGTERM handling of a training run.

:mod:`eva8_utils.main` dispatches the subcommands; ``predict``, ``demo``, ``compare`` and
``sweep`` build their parsers from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from . import distributed as D
from .config import GROUPS, TrainConfig, field_meta, flag
from .errors import ConfigError

logger = logging.getLogger("eva8_utils")


def command(sub: str = "") -> str:
    """The command line as the user typed it, for usage and hints: ``eva8`` (the console
    script) or ``python -m eva8_utils.main``, then the subcommand."""
    exe = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    name = "eva8" if exe == "eva8" else "python -m eva8_utils" if exe == "__main__.py" else "python -m eva8_utils.main"
    return f"{name} {sub}".strip()


class Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2) instead of printing usage."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{message}; see {self.prog} --help")


def _lr_type(text: str) -> Any:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid LR {text!r}: give a number or 'auto'") from None


def field_help(name: str) -> str:
    """A field's help text with its choices (from the field or its registry) and default."""
    from .experiment import choices

    meta = field_meta(name)
    text = meta["help"]
    listed = choices(name)
    if listed:
        text += ": " + " | ".join(listed)
    default = getattr(TrainConfig(), name)
    return f"{text} (default: {default!r})"


def add_config_flags(p: argparse.ArgumentParser, names: Sequence[str] | None = None, multi: bool = False) -> None:
    """One flag per TrainConfig field, in the help groups of :data:`~eva8_utils.config.GROUPS`.

    ``multi``: every non-boolean flag takes one or more values (for ``sweep``).
    """
    defaults = TrainConfig()
    wanted = [f.name for f in dataclasses.fields(TrainConfig) if names is None or f.name in names]
    groups = {g: p.add_argument_group(f"{g} settings") for g in GROUPS}
    for name in wanted:
        g = groups[field_meta(name)["group"]]
        default = getattr(defaults, name)
        nargs = "+" if multi else None
        if name == "lr":
            g.add_argument(flag(name), "--max-lr", dest="lr", type=_lr_type, nargs=nargs, help=field_help(name))
        elif name == "imports":
            g.add_argument("--import", dest="imports", action="append", metavar="MODULE", help=field_help(name))
        elif isinstance(default, bool):
            g.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, help=field_help(name))
        else:
            g.add_argument(flag(name), dest=name, type=type(default), nargs=nargs, help=field_help(name))


def flag_table() -> str:
    """The README's table of every training flag, by group (one source: the TrainConfig fields)."""
    from .experiment import choices

    defaults = TrainConfig()
    lines = []
    for group in GROUPS:
        lines += [f"**{group}**", "", "| flag | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(TrainConfig):
            meta = field_meta(f.name)
            if meta["group"] != group:
                continue
            default = getattr(defaults, f.name)
            name = "--import MODULE" if f.name == "imports" else flag(f.name)
            if f.name == "lr":
                name += ", --max-lr"
            elif isinstance(default, bool):
                name += f", --no-{flag(f.name)[2:]}"
            listed = choices(f.name)
            text = meta["help"] + (": " + " \\| ".join(listed) if listed else "")
            lines.append(f"| `{name}` | {default!r} | {text} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


TRUST_HELP = ("the checkpoint's model, when it is code outside eva8_utils (package.module:callable): naming it "
              "trusts that code to run; see docs/checkpoints.md")


def add_trust_flags(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--import``: the code outside eva8_utils that the user trusts a
    checkpoint to run (one refused otherwise)."""
    p.add_argument("--model", metavar="MODULE:CALLABLE", default=None, help=TRUST_HELP)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module the checkpoint's model needs imported (e.g. one that registers it); naming it "
                        "trusts it to run; repeat for several")


# ---------------------------------------------------------------------------------------
# Interrupts: the first Ctrl-C / SIGTERM stops at the next batch boundary.
# ---------------------------------------------------------------------------------------
class StopRequest:
    """A flag set by SIGINT/SIGTERM; a second SIGINT interrupts immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stop requested (%s): finishing the current batch...", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        # Under torchrun the ranks could stop at different batches; there the default
        # handling applies (the last checkpoint is on disk either way).
        if threading.current_thread() is threading.main_thread() and D.world_size() == 1:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
