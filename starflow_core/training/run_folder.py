"""Who may write a run folder (train.out_dir), and when (framework-free, both trainers).

- One trainer at a time: the main process holds an exclusive lock on `<out_dir>/.lock`
  (flock) for the whole run. The kernel drops it when the process ends, even on kill -9,
  so a crashed run never blocks the next one; a live one is named in the refusal.
- A fresh run only in an unused folder: a folder that holds a run (log.jsonl or a
  checkpoint) is refused without --resume, since a new run would mix its checkpoints,
  log and `latest` with the old run's, and pruning would then delete the wrong ones.
- Debris of interrupted writes (`checkpoints/.step_*.tmp-<pid>`, `.*.tmp` files of atomic
  writes) is removed when the lock is taken: holding it, no other trainer can be writing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows; the lock is then skipped (MLX needs macOS or Linux anyway)
    fcntl = None

LOCK_NAME = ".lock"
LOG_NAME = "log.jsonl"
_DEBRIS = re.compile(r"^\..+(\.tmp|\.tmp-\d+)$")  # atomic_path's .<name>.<random>.tmp, .step_X.tmp-<pid>


class RunFolderBusyError(OSError):
    """Another live trainer holds the lock of this run folder."""


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create the run folder if needed and prove it is writable, with the fix in the message."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"train.out_dir={out} is a file, not a folder; choose another out_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"cannot write to train.out_dir={out} ({err.strerror or err}); "
            "choose another out_dir or fix its permissions"
        ) from None
    return out


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock of run folder `out`; refuse at once if a live process holds it."""
    if fcntl is None:
        yield
        return
    handle = open(out / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the whole run)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunFolderBusyError(
                f"train.out_dir={out} is in use by another trainer (pid {holder}); wait for it to "
                "finish or stop it, or choose another out_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def make_folders(out: Path) -> list[Path]:
    """Create `out` and its missing parents one by one; the folders this process made, deepest
    first. Of two trainers starting at the same instant only one makes each folder (mkdir is
    atomic), so only that one may remove it again. Errors are left to prepare_out_dir."""
    missing = []
    for folder in (out, *out.parents):
        if folder.exists():
            break
        missing.append(folder)
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError:
            break
        made.append(folder)
    return made[::-1]


def checkpoint_names(out: Path) -> list[str]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.glob("step_*") if p.is_dir())


def check_fresh_or_resuming(out: Path, resume_dir: Path | None) -> None:
    """Refuse a fresh run in a used folder, and a resume of another run into a used folder."""
    checkpoints = checkpoint_names(out)
    if not checkpoints and not (out / LOG_NAME).is_file():
        return
    held = f"checkpoints/{checkpoints[-1]}" if checkpoints else LOG_NAME
    if resume_dir is None:
        fix = f"continue it with --resume {out}, or" if checkpoints else "delete it, or"
        raise FileExistsError(
            f"train.out_dir={out} already holds a run ({held}); {fix} choose a new out_dir "
            "(a fresh run there would mix its checkpoints and log with the old ones)"
        )
    if out.resolve() not in Path(resume_dir).resolve().parents:
        raise FileExistsError(
            f"train.out_dir={out} already holds a run ({held}) but --resume {resume_dir} continues "
            "another one; choose a new out_dir for it"
        )


def remove_write_debris(out: Path) -> list[Path]:
    """Delete what interrupted atomic writes left in the run folder (call with the lock held)."""
    removed = []
    for folder in (out, out / "checkpoints", out / "samples"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not _DEBRIS.match(path.name):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_unresumable_run(out: Path) -> None:
    """What a fresh run that ended without a single checkpoint wrote (its log, loss curve, samples,
    an empty checkpoints/): nothing can resume it, and these files would refuse the same command."""
    if checkpoint_names(out):
        return
    for name in (LOG_NAME, "loss.png", "samples", "checkpoints"):
        path = out / name
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def claim_run_folder(
    out_dir: str | Path, resume: str | Path | None, resolve: Callable[[str | Path], Path]
) -> Iterator[Path | None]:
    """Lock the run folder for this trainer, check and clean it, for the duration of the run;
    yields the checkpoint to resume from (`resolve(resume)`, read under the lock so that a run
    being written by another trainer is reported as busy). A fresh run that fails before its
    first checkpoint is written removes what it wrote, and the folders it made for the run."""
    out = Path(out_dir)
    made = make_folders(out)
    locked = fresh = False
    try:
        prepare_out_dir(out)
        with run_lock(out):
            locked = True
            resume_dir = resolve(resume) if resume is not None else None
            check_fresh_or_resuming(out, resume_dir)
            fresh = resume_dir is None  # and the folder holds no run: check_fresh_or_resuming said so
            for path in remove_write_debris(out):
                print(f"removed {path}, left by an interrupted write")
            try:
                yield resume_dir
            except BaseException:
                if fresh:
                    remove_unresumable_run(out)
                raise
    except BaseException:
        if locked and made:  # never the lock or folder of another trainer that won the lock
            with contextlib.suppress(OSError):
                (out / LOCK_NAME).unlink()
        for folder in made:  # deepest first; rmdir removes only empty folders
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
