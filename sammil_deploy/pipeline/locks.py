"""Per-slide lock files, so two runs sharing an output folder never work on the same slide at the same time.

A lock is ``<final output>.lock``, created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) and holding
``{"pid", "host", "created_unix"}``. A lock is stale, and is broken, when its process is dead on this host or
it is older than ``stale_after_s`` (default 6 h, or ``$SAMMIL_LOCK_STALE_S``): a run killed with SIGKILL never
blocks the next one, and a lock of another host expires. A live lock means "another run is on it": the batch
loop skips that slide and reports it ``locked`` (the other run writes it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from sammil_deploy.io_atomic import ensure_dir, output_error

LOCK_SUFFIX = ".lock"
STALE_ENV = "SAMMIL_LOCK_STALE_S"
DEFAULT_STALE_S = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a lock (what the file says); ``pid`` -1 when the file is still being written or unreadable."""

    pid: int
    host: str
    created_unix: float

    def describe(self) -> str:
        """``pid 123 on host h since 2026-12-02 04:00:00 UTC``."""
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.created_unix))
        return f"pid {self.pid} on host {self.host} since {since}"


def lock_path(final_output: Path) -> Path:
    """The lock file guarding the slide whose final output is ``final_output``."""
    final_output = Path(final_output)
    return final_output.with_name(final_output.name + LOCK_SUFFIX)


def default_stale_s() -> float:
    """``$SAMMIL_LOCK_STALE_S`` if set, else 6 hours."""
    return float(os.environ.get(STALE_ENV, DEFAULT_STALE_S))


def read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in lock file ``path``; None if there is no lock."""
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return LockHolder(int(data["pid"]), str(data["host"]), float(data["created_unix"]))
    except (ValueError, KeyError, TypeError):  # being written right now, or garbage: judge it by its age
        return LockHolder(-1, "?", mtime)


def is_stale(holder: LockHolder, stale_after_s: float) -> bool:
    """Dead process on this host, or older than ``stale_after_s``."""
    if time.time() - holder.created_unix > stale_after_s:
        return True
    if holder.host != socket.gethostname() or holder.pid <= 0:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def try_acquire(path: Path, stale_after_s: float | None = None) -> LockHolder | None:
    """Take lock ``path``; None on success, else the live holder. A stale lock is broken and taken over.

    Raises:
        OutputError: The lock cannot be created (read-only or full disk, no permission).
    """
    path = Path(path)
    stale_after_s = default_stale_s() if stale_after_s is None else stale_after_s
    ensure_dir(path.parent)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            if holder is not None and not is_stale(holder, stale_after_s):
                return holder
            if holder is not None:
                _break(path, holder)
            continue
        except OSError as err:
            raise output_error(err, path) or err from None
        stamp = {"pid": os.getpid(), "host": socket.gethostname(), "created_unix": time.time()}
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(stamp, f)
        except OSError as err:
            path.unlink(missing_ok=True)
            raise output_error(err, path) or err from None
        return None
    return read_holder(path) or LockHolder(-1, "?", time.time())


def _break(path: Path, stale: LockHolder) -> None:
    """Remove a stale lock, unless another run broke and re-took it since we looked."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if read_holder(aside) != stale:  # we moved a fresh lock: put it back (link fails if a third run has one)
        with suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def release(path: Path) -> None:
    """Remove lock ``path`` if this process holds it."""
    holder = read_holder(Path(path))
    if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
        Path(path).unlink(missing_ok=True)


@contextmanager
def slide_lock(final_output: Path, stale_after_s: float | None = None) -> Iterator[LockHolder | None]:
    """Hold the lock of a slide for the block; yields None when held, else the other run's holder."""
    path = lock_path(final_output)
    holder = try_acquire(path, stale_after_s)
    try:
        yield holder
    finally:
        if holder is None:
            release(path)
