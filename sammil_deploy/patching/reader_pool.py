"""Persistent patch-reader processes: started once per run, reused for every slide, batches in shared memory.

A run (``extract``, ``infer``, a cohort, one Ray actor) starts :class:`ReaderPool` once; each slide is a job
(slide path, reader kind, level, read and output sizes, patch rows). Worker ``w`` reads the ``w``-th contiguous
run of the tile read order (neighbouring patches share JPEG tiles, so each tile is decoded by one worker) and
writes whole uint8 NHWC batches, resized with PIL as CLAM does, into its own shared-memory slots; the main
process gets ``(slot, rows)`` messages and hands the slot back when it has used the batch. Memory is bounded
(``workers x (prefetch_batches + 1)`` slots) and nothing per patch crosses a pipe.

Processes are *spawned*, not forked: the pool is started while other threads may run (the lookahead thread's
BLAS, ONNX Runtime's pool), and a fork copies their locks in whatever state they are in (OpenBLAS's fork
handler hung the demo that way). A failing read (corrupt tile, missing file) or a worker that dies fails that
slide's job only: the error names the slide, a dead worker is replaced, and the next slide runs.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Iterator
from multiprocessing import shared_memory
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy.errors import SammilError, SlideError
from sammil_deploy.patching.batch_reading import ReadJob, SlideHandles, read_batch, read_batches_inline

__all__ = ["ReadJob", "ReaderPool", "read_batches_inline"]

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 30.0  # a cancelled worker finishes its current batch within this, or it is replaced


def _worker_main(index: int, conn: Any) -> None:
    """Worker loop: jobs in, ``("batch"|"error"|"done", job_id, index, ...)`` out, over its own pipe ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle; it stops us
    handles, slots = SlideHandles(), _AttachedSlots()
    try:
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            if message[0] == "job":
                _run_job(index, message[1:], conn, handles, slots)
            elif message[0] == "slots":  # map the batch slots now: the main process unlinks them next
                try:
                    slots.attach(message[1])
                    conn.send(("attached", 0, index, None))
                except Exception as exc:  # noqa: BLE001 - e.g. /dev/shm full: reported, the main process decides
                    conn.send(("attached", 0, index, _picklable(exc)))
    except (EOFError, OSError):  # the main process went away
        return
    finally:
        handles.close()
        slots.close()


def _run_job(index: int, spec: tuple, conn: Any, handles: SlideHandles, slots: _AttachedSlots) -> None:
    job_id, job, coords, rows, batch_size, slot_names = spec
    free = list(range(len(slot_names)))
    try:
        buffers = slots.attach(slot_names)
        reader = handles.get(job)
        for start in range(0, len(rows), batch_size):
            while not free or conn.poll():  # slots handed back, or a cancel
                message = conn.recv()
                if message[0] == "cancel" and message[1] == job_id:
                    return
                if message[0] == "free" and message[1] == job_id:
                    free.append(message[2])
            slot = free.pop()
            n = min(batch_size, len(rows) - start)
            out = np.ndarray((batch_size, job.out_size_px, job.out_size_px, 3), np.uint8, buffer=buffers[slot].buf)
            read_batch(reader, job, coords[start : start + n], out)
            conn.send(("batch", job_id, index, slot, rows[start : start + n]))
    except Exception as exc:  # noqa: BLE001 - every failure is reported as this slide's failure
        conn.send(("error", job_id, index, _picklable(exc)))
    finally:
        handles.close()  # no slide handle (or its tile cache) outlives the slide's job
        conn.send(("done", job_id, index))


def _picklable(exc: Exception) -> Exception:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class _AttachedSlots:
    """A worker's views of the main process's shared-memory slots (re-attached when the main one re-allocates)."""

    def __init__(self) -> None:
        self._open: dict[str, shared_memory.SharedMemory] = {}

    def attach(self, names: tuple[str, ...]) -> list[shared_memory.SharedMemory]:
        for name in set(self._open) - set(names):
            self._open.pop(name).close()
        for name in names:
            if name not in self._open:
                self._open[name] = _attach(name)
        return [self._open[name] for name in names]

    def close(self) -> None:
        for shm in self._open.values():
            shm.close()
        self._open.clear()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start spawned workers without re-running the caller's script (it need not have a ``__main__`` guard).

    A spawned child re-imports the parent's ``__main__`` file to unpickle things defined there; the workers run
    only this module's code, so an empty main module is all they need.
    """
    import sys
    import types

    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _attach(name: str) -> shared_memory.SharedMemory:
    # Spawned children share the main process's resource tracker, so attaching re-registers a name it already
    # holds (a no-op); the main process unlinks the segment.
    return shared_memory.SharedMemory(name=name)


class ReaderPool:
    """``num_workers`` spawned reader processes kept for many slides.

    Args:
        num_workers: Reader processes (>= 1).
        prefetch_batches: Batches each worker may have ready ahead of the consumer.

    Use as a context manager (or call :meth:`close`): leaving it stops the workers and frees the shared memory,
    also on an exception or KeyboardInterrupt.
    """

    def __init__(self, num_workers: int, *, prefetch_batches: int = 2) -> None:
        if num_workers < 1:
            raise ValueError(f"a reader pool needs >= 1 worker, got {num_workers}")
        self.num_workers = int(num_workers)
        self.slots_per_worker = max(1, int(prefetch_batches)) + 1  # + the one being consumed
        self._ctx = mp.get_context("spawn")
        self._procs: list[Any] = [None] * self.num_workers
        self._conns: list[Any] = [None] * self.num_workers
        self._slots: list[shared_memory.SharedMemory] = []
        self._slot_bytes = 0
        self._job_id = 0
        self._closed = False
        try:
            for w in range(self.num_workers):
                self._start(w)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> tuple[int, ...]:
        """Worker process ids (the same for every slide unless a worker died and was replaced)."""
        return tuple(p.pid for p in self._procs)

    def _start(self, w: int) -> None:
        # One pipe per worker, not a shared queue: a worker killed mid-message breaks only its own pipe.
        mine, theirs = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(w, theirs), daemon=True, name=f"sammil-reader-{w}")
        with _main_module_hidden():
            proc.start()
        theirs.close()
        self._procs[w], self._conns[w] = proc, mine

    def _replace(self, w: int) -> None:
        proc = self._procs[w]
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        self._conns[w].close()
        self._start(w)
        self._slot_bytes = 0  # the new process cannot map the unlinked slots: fresh ones for the next slide

    def _send(self, w: int, message: tuple) -> bool:
        try:
            self._conns[w].send(message)
            return True
        except (BrokenPipeError, OSError):
            return False

    def _ensure_slots(self, nbytes: int, job: ReadJob) -> None:
        """Batch slots of ``nbytes``, mapped by every worker and then unlinked.

        Unlinked at once, the segments vanish with the last process that maps them, even when the whole run is
        killed (no ``/dev/shm`` leftovers).

        Raises:
            SlideError: A worker could not map them (e.g. ``/dev/shm`` too small) or died meanwhile.
        """
        count = self.num_workers * self.slots_per_worker
        if nbytes <= self._slot_bytes and len(self._slots) == count:
            return
        self._free_slots()
        self._slots = [shared_memory.SharedMemory(create=True, size=max(1, nbytes)) for _ in range(count)]
        k, waiting, error = self.slots_per_worker, set(range(self.num_workers)), None
        for w in range(self.num_workers):
            self._send(w, ("slots", tuple(s.name for s in self._slots[w * k : (w + 1) * k])))
        deadline = time.monotonic() + CANCEL_WAIT_S
        while waiting and error is None and time.monotonic() < deadline:
            message, dead = self._receive(waiting, max(0.0, deadline - time.monotonic()))
            if dead is not None:
                self._replace(dead)
                error = "a reader process died"
            elif message is not None and message[0] == "attached":
                waiting.discard(message[2])
                error = None if message[3] is None else str(message[3])
        for shm in self._slots:
            shm.unlink()
        if waiting or error is not None:
            self._free_slots()
            raise SlideError(
                f"{Path(job.slide_path).name}: the reader processes could not map {nbytes / 2**20:.1f} MiB batch "
                f"slots ({error or 'timed out'}); free /dev/shm space (docker: --shm-size) or lower batch_size"
            )
        self._slot_bytes = nbytes

    def _free_slots(self) -> None:
        """Unmap the slots here (they are already unlinked); a view still held elsewhere keeps its mapping alive."""
        for shm in self._slots:
            try:
                shm.close()
            except BufferError:  # a caller still holds a batch view: the mapping goes when that view does
                log.debug("batch slot %s still viewed; left mapped", shm.name)
        self._slots, self._slot_bytes = [], 0

    def batches(
        self, job: ReadJob, coords_level0_xy: np.ndarray, order: np.ndarray, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Read every row of ``order``: ``(patches (B, S, S, 3) uint8, rows)`` batches, in completion order.

        ``patches`` is a view of a shared slot, valid until the next batch is requested. Worker ``w`` reads the
        ``w``-th contiguous run of ``order``.

        Raises:
            SlideError, PatchingError (or the reader's own SammilError): A patch of this slide cannot be read or a
                worker died; the pool stays usable for the next slide.
        """
        if self._closed:
            raise RuntimeError("the reader pool is closed")
        self._job_id += 1
        job_id, coords = self._job_id, np.asarray(coords_level0_xy, np.int64)
        self._ensure_slots(batch_size * job.out_size_px * job.out_size_px * 3, job)
        k = self.slots_per_worker
        active: set[int] = set()
        for w, run in enumerate(np.array_split(np.asarray(order, np.int64), self.num_workers)):
            names = tuple(s.name for s in self._slots[w * k : (w + 1) * k])
            if len(run) and self._send(w, ("job", job_id, job, coords[run], run, batch_size, names)):
                active.add(w)
        error: BaseException | None = None
        try:
            while active:
                message = self._next(job_id, active, job)
                if message is None:
                    continue
                kind, _, w = message[:3]
                if kind == "done":
                    active.discard(w)
                elif kind == "error":
                    error = error or _slide_error(message[3], job)
                    self._cancel(job_id, active - {w})
                elif error is not None:  # batches still arriving from a cancelled job
                    self._send(w, ("free", job_id, message[3]))
                else:
                    slot = self._slots[w * k + message[3]]
                    rows = message[4]
                    view = np.ndarray((batch_size, job.out_size_px, job.out_size_px, 3), np.uint8, buffer=slot.buf)
                    yield view[: len(rows)], rows
                    self._send(w, ("free", job_id, message[3]))
        finally:
            if active:  # the consumer stopped early (an exception, KeyboardInterrupt) or a worker failed
                self._cancel(job_id, active)
                self._drain(job_id, active)
        if error is not None:
            raise error

    def _next(self, job_id: int, active: set[int], job: ReadJob) -> tuple | None:
        """The next message of this job from any active worker (None: another job's leftover).

        Raises:
            SlideError: A worker died (it is replaced; the caller's cleanup cancels the others).
        """
        message, dead = self._receive(active, None)
        if dead is not None:
            code = self._procs[dead].exitcode
            log.warning("reader process %d died (exit code %s); starting a new one", self._procs[dead].pid, code)
            self._replace(dead)
            active.discard(dead)
            raise SlideError(
                f"{Path(job.slide_path).name}: a patch-reader process died (exit code {code}) while reading "
                "this slide; the file may be corrupt: check it with `sammil-deploy slide-info`"
            )
        return message if message is not None and message[1] == job_id else None

    def _receive(self, workers: set[int], timeout_s: float | None) -> tuple[tuple | None, int | None]:
        """``(message, None)`` from one of ``workers``, ``(None, w)`` when worker ``w`` died, ``(None, None)``."""
        conns = {self._conns[w]: w for w in workers}
        sentinels = {self._procs[w].sentinel: w for w in workers}
        ready = wait([*conns, *sentinels], timeout_s)
        for item in ready:  # messages first: a worker may have sent some before it died
            if item in conns:
                try:
                    return item.recv(), None
                except (EOFError, OSError):
                    return None, conns[item]
        for item in ready:
            if item in sentinels:
                return None, sentinels[item]
        return None, None

    def _cancel(self, job_id: int, workers: set[int]) -> None:
        for w in workers:
            self._send(w, ("cancel", job_id))

    def _drain(self, job_id: int, active: set[int]) -> None:
        """Wait for cancelled workers to finish (replacing any that die or do not stop), dropping their batches."""
        deadline = time.monotonic() + CANCEL_WAIT_S
        while active and time.monotonic() < deadline:
            message, dead = self._receive(active, max(0.0, deadline - time.monotonic()))
            if dead is not None:
                self._replace(dead)
                active.discard(dead)
            elif message is not None and message[1] == job_id and message[0] == "done":
                active.discard(message[2])
        for w in list(active):
            self._replace(w)
            active.discard(w)

    def close(self) -> None:
        """Stop the workers (killing any that do not stop) and free the shared memory."""
        if self._closed:
            return
        self._closed = True
        for w, proc in enumerate(self._procs):
            if proc is not None:
                self._send(w, ("stop",))
        for w, proc in enumerate(self._procs):
            if proc is None:
                continue
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            self._conns[w].close()
        self._free_slots()

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _slide_error(exc: BaseException, job: ReadJob) -> BaseException:
    """A worker's error as this slide's error, naming the slide file."""
    name = Path(job.slide_path).name
    if isinstance(exc, SammilError):
        if name in str(exc):
            return exc
        try:
            return type(exc)(f"{name}: {exc}")
        except TypeError:  # a SammilError with another constructor
            return exc
    return SlideError(f"{name}: reading patches failed ({exc}); check the file")
