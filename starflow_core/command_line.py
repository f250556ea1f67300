"""How every command line of the project ends: exit codes and one-line messages.

    0    done
    2    an error the user can fix (bad input, missing file, a full disk): one line on
         stderr naming the problem and the fix, never a traceback
    130  interrupted (Ctrl-C, or SIGTERM, which is treated the same way): one line on
         stderr; the command's own cleanup (staging folders) has run, nothing partial is left

Bugs (anything else) still show their traceback: they are ours to fix, not the user's.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import sys
from collections.abc import Callable, Iterator

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# what a user's input, files or machine can cause; every such error names its fix
USER_ERRORS = (ValueError, OSError, NotImplementedError, pickle.UnpicklingError)


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
