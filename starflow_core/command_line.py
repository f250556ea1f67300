"""How every command line of the project ends: exit codes and one-line messages.

    0    done
    2    an error the user can fix (bad input, missing file, a full disk): one line on
         stderr naming the problem and the fix, never a traceback
    130  interrupted (Ctrl-C, or SIGTERM, which is treated the same way): one line on
         stderr; the command's own cleanup (staging folders) has run, nothing partial is left

Bugs (anything else) still show their traceback: they are ours to fix, not the user's.

Every command is built on `command_parser`: its `prog` is the installed name (COMMANDS), it
answers `--version`, and `--help` shows each option's default.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from starflow_core.extras import MissingExtraError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# module -> installed names (pyproject [project.scripts]); the first is the command's name,
# the others are aliases (the names of version 0.1.0, and starflow-eval)
COMMANDS = {
    "starflow_mlx.generate": ("starflow-mlx-generate", "starflow-generate"),
    "starflow_torch.generate": ("starflow-torch-generate", "starflow-sample"),
    "starflow_mlx.train": ("starflow-mlx-train",),
    "starflow_torch.train": ("starflow-torch-train", "starflow-train"),
    "starflow_mlx.encode_dataset": ("starflow-mlx-encode-dataset",),
    "starflow_torch.encode_dataset": ("starflow-torch-encode-dataset", "starflow-encode-dataset"),
    "starflow_mlx.convert": ("starflow-mlx-convert", "starflow-convert"),
    "starflow_torch.convert": ("starflow-torch-convert",),
    "starflow_mlx.memory_report": ("starflow-mlx-memory-report",),
    "starflow_torch.memory_report": ("starflow-torch-memory-report",),
    "starflow_mlx.info": ("starflow-mlx-info",),
    "starflow_torch.info": ("starflow-torch-info",),
    "starflow_core.generation.info": ("starflow-info",),  # framework-free: reads PNG metadata only
    "starflow_mlx.score": ("starflow-mlx-score",),
    "starflow_torch.score": ("starflow-torch-score",),
    "starflow_mlx.sample_eval": ("starflow-mlx-sample-eval",),
    "starflow_torch.sample_eval": ("starflow-torch-sample-eval",),
    "starflow_mlx.eval": ("starflow-mlx-eval",),
    "starflow_torch.eval": ("starflow-torch-eval", "starflow-eval"),  # short name: Inception is torch
}

# what a user's input, files or machine can cause; every such error names its fix (a missing
# optional dependency names the pip command)
USER_ERRORS = (ValueError, OSError, NotImplementedError, pickle.UnpicklingError, MissingExtraError)


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (its usage examples) and appends each option's
    default to its help, unless the help already says it, there is none (None, an empty list)
    or the option is a switch (takes no value: its default is only "not given")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text
            or default is None
            or default == []
            or default is argparse.SUPPRESS
            or action.nargs == 0
            or not action.option_strings
        ):
            return help_text
        return f"{help_text} (default: %(default)s)" if help_text else "(default: %(default)s)"


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: 0 and negatives are refused with the usage line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def command_name(module: str) -> str:
    """The name a command shows (`prog`): the installed name it was started by, else its first."""
    names = COMMANDS[module]
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return invoked if invoked in names else names[0]


def command_parser(module: str, description: str | None) -> argparse.ArgumentParser:
    """An argument parser named after the installed command, with --version and defaults in --help."""
    from starflow_core.version import package_version

    parser = argparse.ArgumentParser(
        prog=command_name(module), description=description, formatter_class=HelpWithDefaults
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return parser


def one_line(message: str) -> str:
    """A multi-line message (e.g. a list of mismatched settings) joined onto one line."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    out = lines[0] if lines else ""
    for line in lines[1:]:
        out += (" " if out.endswith(":") else "; ") + line
    return out


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so `finally` blocks that
    remove staging folders run for both (kill, systemd and SLURM send SIGTERM)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's body; user errors -> exit 2, interrupts -> exit 130, one line each."""
    try:
        with sigterm_as_interrupt():
            return body() or 0
    except KeyboardInterrupt as interrupt:
        detail = one_line(str(interrupt)) if str(interrupt) else "stopped by Ctrl-C"
        print(f"{prog}: interrupted ({detail}); nothing partial was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as err:
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
