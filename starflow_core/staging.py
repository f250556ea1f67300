"""Writing output folders without ever losing the previous one.

A folder is built in a hidden staging folder beside its target and swapped in only when
complete (`staged_folder`):

    .<name>.partial-<host>-<pid>   being written; deleted on failure or interrupt
    .<name>.old-<host>-<pid>       the previous version, moved aside during the swap

Until the swap, an existing output is untouched; during it, the previous version is
renamed aside (never deleted first) and deleted only after the new one is in place.
A process killed with -9 cannot clean up after itself, so later runs remove the staging
folders of processes that are no longer alive on this host (`remove_stale_staging`), and
put back a previous version whose swap was cut short.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>.+)-(?P<pid>\d+)$")


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def staging_path(target: Path, kind: str = "partial") -> Path:
    """The hidden sibling of `target` that this process stages it in."""
    return target.with_name(f".{target.name}.{kind}-{_host()}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_staging(folder: str | Path) -> list[Path]:
    """Delete the staging folders in `folder` left by dead processes of this host; a previous
    version moved aside by a swap that was cut short is put back. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = _STAGING.match(path.name)
        if not match or match["host"] != _host() or pid_alive(int(match["pid"])):
            continue
        target = folder / match["name"]
        if match["kind"] == "old" and not target.exists() and not target.is_symlink():
            os.replace(path, target)  # the swap stopped between its two renames: restore
            continue
        _remove(path)
        removed.append(path)
    return removed


def check_output_apart(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output that is one of the inputs or contains one: replacing it would delete it."""
    out = Path(output).resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if source == out:
            raise ValueError(
                f"the output {output} is the input {item}; replacing it would destroy the input. "
                "Write to another folder"
            )
        if out in source.parents:
            raise ValueError(
                f"the output {output} contains the input {item}; replacing it would delete the input. "
                "Write to another folder"
            )


def replace_with(staging: Path, target: Path) -> None:
    """Move the complete `staging` onto `target`; a previous `target` is deleted only afterwards."""
    old = None
    if target.exists() or target.is_symlink():
        old = staging_path(target, "old")
        _remove(old)
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def staged_folder(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds it becomes `target`.

    An existing `target` is refused unless `overwrite`, and is untouched if the block fails
    or is interrupted (the staging folder is then deleted).
    """
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent)
    staging = staging_path(target)
    _remove(staging)
    staging.mkdir()
    try:
        yield staging
        replace_with(staging, target)
    finally:
        if staging.exists():
            _remove(staging)


def missing_parents(path: Path) -> list[Path]:
    """The folders from `path` up to its first existing ancestor, deepest first (what mkdir makes)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


@contextlib.contextmanager
def removing_new_empty_folders(directory: str | Path, also: Iterable[str] = ()) -> Iterator[None]:
    """If the block fails or is interrupted, remove the folders it created for `directory` that
    are still empty (after deleting the files named in `also`, such as a lock file), so a failed
    command leaves no empty `newdir/sub/` behind."""
    created = missing_parents(Path(directory))
    try:
        yield
    except BaseException:
        for name in also if created else ():
            with contextlib.suppress(OSError):
                (created[0] / name).unlink(missing_ok=True)
        for folder in created:  # deepest first; rmdir removes only empty folders
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
