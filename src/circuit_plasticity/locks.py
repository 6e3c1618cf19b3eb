"""One writer per directory: an OS file lock (flock) on a lock file inside each run, sweep and
judge directory, held for the writing process's life, so a killed writer (kill -9 included)
never leaves a stale lock and a second writer is refused instead of racing the first."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuit_plasticity.errors import UserError

LOCK_NAME = ".circuit-plasticity.lock"
_held: dict[Path, int] = {}  # directory -> the open lock file's descriptor, in this process
_calls: dict[Path, int] = {}  # directory -> `writes_directory` calls on it now running


def lock_holder(directory: str | os.PathLike[str]) -> int | None:
    """The PID recorded in `directory`'s lock file (None: no lock file or no PID in it)."""
    try:
        text = (Path(directory) / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def claim_directory(directory: str | os.PathLike[str]) -> None:
    """Make this process the one writer of `directory` (which must exist), until
    `release_directory` or the process ends. A second writer is refused with the holder's PID.
    Claiming a directory this process already holds is a no-op."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no OS lock to take; writers are not guarded there
        return

    root = Path(directory).resolve()
    if root in _held:
        return
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = lock_holder(root)
        who = f"process {pid}" if pid is not None else "another process"
        raise UserError(
            f"{directory} is being written by {who}; wait for it to finish or stop it "
            f"(kill {pid if pid is not None else 'PID'}), then rerun the same command to resume"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[root] = fd


def release_directory(directory: str | os.PathLike[str]) -> None:
    """Give up this process's claim on `directory`. The lock file stays: deleting it would let
    a waiting writer and a new one lock two different files."""
    fd = _held.pop(Path(directory).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor drops the flock


def holds(directory: str | os.PathLike[str]) -> bool:
    """Whether this process is the writer of `directory`."""
    return Path(directory).resolve() in _held


def writes_directory(argument: str) -> Callable:
    """Decorator: the call is the one writer of the directory in its `argument`. Claimed at
    entry when the directory exists; a function that creates it calls `claim_directory` right
    after. What the call claimed is released when it returns or raises; a directory it created
    and claimed, then refused with a UserError before writing anything, is removed again."""

    def wrap(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            target = Path(signature.bind(*args, **kwargs).arguments[argument]).resolve()
            outermost, existed = target not in _calls, target.exists()
            had_lock = (target / LOCK_NAME).exists()
            _calls[target] = _calls.get(target, 0) + 1
            try:
                if existed and target.is_dir():
                    claim_directory(target)
                return function(*args, **kwargs)
            except UserError:
                # refused: leave the directory as it was. The lock file goes while the lock is
                # still held, so no other writer can have locked it in between
                created = outermost and not existed and target in _held and not has_files(target)
                if created or (outermost and existed and not had_lock and target in _held):
                    (target / LOCK_NAME).unlink(missing_ok=True)
                    release_directory(target)
                    if created:
                        target.rmdir()
                raise
            finally:
                _calls[target] -= 1
                if not _calls[target]:  # the outermost call ends: so does the claim
                    del _calls[target]
                    release_directory(target)

        return call

    return wrap


def has_files(directory: str | os.PathLike[str]) -> bool:
    """Whether `directory` exists and holds anything besides a lock file."""
    root = Path(directory)
    return root.is_dir() and any(p.name != LOCK_NAME for p in root.iterdir())


def die_with_parent() -> None:
    """Pool-worker initializer: end this worker when the process that started it dies (kill
    -9 included), so no orphan keeps writing into a directory (and holding its lock) that a
    rerun then writes too. Linux: PR_SET_PDEATHSIG; everywhere: a thread that polls the
    parent's PID."""
    import signal
    import sys
    import threading
    import time

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # 1: PR_SET_PDEATHSIG
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()
