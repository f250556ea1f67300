"""Waiting on a command line for an event (an image written, a step logged), never for a time.

A loaded machine makes everything slower, not different: a test waits for the event itself,
and gives up early only when the process ends without it. HANG_GUARD_S only ends a run that
hangs; it is far longer than any of these commands takes on a busy machine.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

HANG_GUARD_S = 1800  # a hung command, not a slow one: every command here takes seconds


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    """Poll `condition` until it holds; fail, with the process's output, if it ends first."""
    start = time.monotonic()
    while not condition():
        if process.poll() is not None:
            stdout, stderr = process.communicate()
            raise AssertionError(
                f"the command ended (exit {process.returncode}) before {what}:\n{stdout!s:.2000}\n{stderr!s:.3000}"
            )
        if time.monotonic() - start > HANG_GUARD_S:
            process.kill()
            raise AssertionError(f"no {what} after {HANG_GUARD_S} s: the command hangs")
        time.sleep(0.05)  # a polling interval, not a deadline


def logged_steps(log: object) -> int:
    """Lines (steps) in a run's log.jsonl so far; 0 before it exists."""
    from pathlib import Path

    path = Path(str(log))
    return len(path.read_text().splitlines()) if path.is_file() else 0
