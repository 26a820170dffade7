"""The persistent reader pool: same pixels as the per-patch path, workers kept across slides, failures per slide."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sammil_deploy.errors import SlideError
from sammil_deploy.features.engine import tile_read_order
from sammil_deploy.features.preprocess_ops import PatchTransform
from sammil_deploy.patching.dataset import PatchDataset
from sammil_deploy.patching.reader_pool import ReaderPool, ReadJob, read_batches_inline


def _grid(path: Path, step_px: int = 512, n: int = 14) -> np.ndarray:
    """Patch corners on a regular grid (some over glass, some over tissue), ``n`` of them."""
    from sammil_deploy.slide import open_slide

    with open_slide(path) as reader:
        w, h = reader.info.dimensions_wh
    xs, ys = np.meshgrid(np.arange(0, w - 512, step_px), np.arange(0, h - 512, step_px))
    coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
    return coords[np.linspace(0, len(coords) - 1, n).astype(int)]


def _reference(path: Path, coords: np.ndarray, size_px: int) -> np.ndarray:
    """The per-patch path: ``PatchDataset`` + CLAM's PIL resize, one patch at a time, OpenSlide reader."""
    ds = PatchDataset(path, coords, None, 0, PatchTransform(size_px, "bicubic", channels_last=True),
                      read_size_px=512, reader="openslide")  # fmt: skip
    try:
        return np.stack([ds[i][0].numpy() for i in range(len(ds))])
    finally:
        ds.close()


def _read_all(batches, n: int, size_px: int) -> np.ndarray:
    out = np.zeros((n, size_px, size_px, 3), np.uint8)
    seen = np.zeros(n, bool)
    for patches, rows in batches:
        assert patches.dtype == np.uint8
        assert patches.shape[1:] == (size_px, size_px, 3)
        assert not seen[rows].any()
        out[rows], seen[rows] = patches, True
    assert seen.all()
    return out


def _job(path: Path, size_px: int = 224, reader: str = "auto") -> ReadJob:
    return ReadJob(str(path), reader, None, 0, 512, size_px, "bicubic")


@pytest.fixture(scope="module")
def pool():
    with ReaderPool(2, prefetch_batches=1) as p:
        yield p


def test_pool_batches_equal_the_per_patch_path_and_workers_persist(pool, real_slide_path, synthetic_slide):
    pids = pool.pids
    for path in (real_slide_path, synthetic_slide, real_slide_path):
        coords = _grid(path, 256 if path == real_slide_path else 512)
        expected = _reference(path, coords, 224)
        order = tile_read_order(coords)
        for size_px in (224, 512):  # resized in the workers, and raw (the device-resize path)
            expect = expected if size_px == 224 else _reference(path, coords, 512)
            got = _read_all(pool.batches(_job(path, size_px), coords, order, 3), len(coords), size_px)
            np.testing.assert_array_equal(got, expect)
        inline = _read_all(read_batches_inline(_job(path), coords, order, 4), len(coords), 224)
        np.testing.assert_array_equal(inline, expected)
    assert pool.pids == pids  # the same processes read every slide
    if Path("/proc/self/fd").is_dir():  # and none keeps a slide open between slides
        for pid in pids:
            open_files = {os.path.realpath(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            assert not open_files & {os.path.realpath(real_slide_path), os.path.realpath(synthetic_slide)}


def _corrupt_copy(src: Path, dst: Path) -> Path:
    """``src`` with level 0's tiles overwritten by garbage (the TIFF structure stays valid)."""
    shutil.copy(src, dst)
    with tifffile.TiffFile(dst) as tif:
        page = tif.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    with open(dst, "r+b") as f:
        for offset, count in spans:
            f.seek(offset + 2)  # keep the JPEG start marker: a damaged stream, not a missing one
            f.write(b"\x00" * max(0, count - 2))
    return dst


def test_a_failing_slide_fails_alone(pool, synthetic_slide, tmp_path):
    coords = _grid(synthetic_slide)
    order = tile_read_order(coords)
    bad = _corrupt_copy(synthetic_slide, tmp_path / "corrupt.svs")
    pids = pool.pids
    for path in (bad, tmp_path / "missing.svs"):
        with pytest.raises(SlideError, match=path.name):
            _read_all(pool.batches(_job(path), coords, order, 2), len(coords), 224)
    good = _read_all(pool.batches(_job(synthetic_slide), coords, order, 2), len(coords), 224)
    np.testing.assert_array_equal(good, _reference(synthetic_slide, coords, 224))
    assert pool.pids == pids  # errors are reported, the workers live on


def test_a_dead_worker_fails_its_slide_and_is_replaced(pool, synthetic_slide):
    coords = np.resize(_grid(synthetic_slide), (40, 2))
    order = tile_read_order(coords)
    victim = pool.pids[0]

    def read_and_kill() -> None:
        for _patches, _rows in pool.batches(_job(synthetic_slide), coords, order, 2):
            if victim in pool.pids:
                os.kill(victim, signal.SIGKILL)

    with pytest.raises(SlideError, match="process died"):
        read_and_kill()
    assert victim not in pool.pids
    got = _read_all(pool.batches(_job(synthetic_slide), coords, order, 4), len(coords), 224)
    np.testing.assert_array_equal(got, _reference(synthetic_slide, coords, 224))


def test_a_consumer_that_stops_early_leaves_the_pool_usable(pool, synthetic_slide):
    coords = np.resize(_grid(synthetic_slide), (40, 2))
    order = tile_read_order(coords)
    batches = pool.batches(_job(synthetic_slide), coords, order, 2)
    next(batches)
    batches.close()  # what an encoder error or KeyboardInterrupt does to the generator
    got = _read_all(pool.batches(_job(synthetic_slide), coords, order, 5), len(coords), 224)
    np.testing.assert_array_equal(got, _reference(synthetic_slide, coords, 224))


def test_close_stops_the_workers_and_no_shared_memory_is_left(synthetic_slide):
    coords = _grid(synthetic_slide, n=4)
    with ReaderPool(1) as pool:
        _read_all(pool.batches(_job(synthetic_slide), coords, tile_read_order(coords), 2), 4, 224)
        procs, names = list(pool._procs), [s.name for s in pool._slots]
        assert names
        assert not any(Path("/dev/shm", n).exists() for n in names)  # unlinked once mapped: nothing to leak
    assert not any(p.is_alive() for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        next(pool.batches(_job(synthetic_slide), coords, tile_read_order(coords), 2))


KILLED_RUN = """
import os, signal, sys
import numpy as np
from sammil_deploy.patching.reader_pool import ReaderPool, ReadJob
coords = np.array([[0, 0], [512, 0], [0, 512]])
pool = ReaderPool(2)
job = ReadJob(sys.argv[1], "auto", None, 0, 512, 224, "bicubic")
for _patches, _rows in pool.batches(job, coords, np.arange(3), 2):
    pass
print(" ".join(s.name for s in pool._slots), flush=True)
print(" ".join(map(str, pool.pids)), flush=True)
if sys.argv[2] == "group":  # the run and its helpers at once (Ray stopping an actor, kill -9 -PGID)
    os.killpg(os.getpgid(0), signal.SIGKILL)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kill", ["process", "group"])
def test_a_killed_run_leaves_no_shared_memory_or_readers(synthetic_slide, kill):
    """Killing the run's process alone leaves readers that must exit by themselves; killing its whole process
    group also kills the resource tracker that would otherwise unlink leftover shared memory."""
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", KILLED_RUN, str(synthetic_slide), kill], capture_output=True,
                         text=True, env=env, timeout=120, start_new_session=True)  # fmt: skip
    assert run.returncode == -signal.SIGKILL
    names, pids = (line.split() for line in run.stdout.splitlines())
    assert len(names) == 6
    assert not any(Path("/dev/shm", n).exists() for n in names)
    deadline = time.monotonic() + 10  # the orphaned readers see their pipe close and exit
    while time.monotonic() < deadline and any(_running(int(pid)) for pid in pids):
        time.sleep(0.2)
    assert not any(_running(int(pid)) for pid in pids)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
