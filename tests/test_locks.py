"""Two runs, one output folder: per-slide lock files with stale-lock detection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_small_slides
from PIL import Image

from sammil_deploy.pipeline.batch import run_batch
from sammil_deploy.pipeline.locks import LockHolder, is_stale, lock_path, read_holder, slide_lock, try_acquire


def _write_lock(path: Path, pid: int, host: str, age_s: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "created_unix": time.time() - age_s}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_taker_sees_the_first_holder_and_release_frees_it(tmp_path):
    lock = tmp_path / "out" / "a.json.lock"
    assert try_acquire(lock) is None
    holder = try_acquire(lock)  # this process again: still a live holder, so refused
    assert holder is not None
    assert holder.pid == os.getpid()
    assert holder.host == socket.gethostname()
    with slide_lock(tmp_path / "out" / "b.json") as mine:
        assert mine is None
        assert lock_path(tmp_path / "out" / "b.json").exists()
    assert not lock_path(tmp_path / "out" / "b.json").exists()


def test_lock_of_a_dead_process_on_this_host_is_broken(tmp_path):
    lock = tmp_path / "a.json.lock"
    _write_lock(lock, _dead_pid(), socket.gethostname())
    assert try_acquire(lock) is None
    assert read_holder(lock).pid == os.getpid()


def test_lock_of_a_live_process_elsewhere_is_respected_until_it_is_too_old(tmp_path):
    lock = tmp_path / "a.json.lock"
    _write_lock(lock, 1, "another-node", age_s=60)
    holder = try_acquire(lock, stale_after_s=3600)
    assert holder == LockHolder(1, "another-node", pytest.approx(time.time() - 60, abs=5))
    assert "another-node" in holder.describe()
    assert try_acquire(lock, stale_after_s=30) is None  # older than the configured age: abandoned


def test_live_local_process_lock_is_not_stale():
    me = LockHolder(os.getpid(), socket.gethostname(), time.time())
    assert not is_stale(me, 3600)
    assert is_stale(LockHolder(os.getpid(), socket.gethostname(), time.time() - 7200), 3600)


def test_batch_skips_a_locked_slide_and_reports_it(tmp_path):
    out = tmp_path / "out"
    slides = [tmp_path / "a.svs", tmp_path / "b.svs"]
    _write_lock(lock_path(out / "a.json"), os.getppid(), socket.gethostname())  # a live process: our parent
    done = []

    def process(slide: Path) -> str:
        done.append(slide.stem)
        (out / f"{slide.stem}.json").write_text("{}")
        return slide.stem

    summary = run_batch(slides, process, lambda s: out / f"{s.stem}.json")
    assert [r.status for r in summary.records] == ["locked", "done"]
    assert "locked by another run" in summary.records[0].detail
    assert done == ["b"]
    assert summary.all_succeeded
    assert summary.to_dict()["locked"] == 1


# --- two real processes over overlapping slide lists ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lock_slides(tmp_path_factory) -> list[Path]:
    return write_small_slides(tmp_path_factory.mktemp("lock_slides"), (21, 22, 23, 24))


def _infer_process(slides: list[Path], bundle: Path, out: Path, listing: Path) -> subprocess.Popen:
    listing.write_text("".join(f"{s}\n" for s in slides))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "sammil_deploy", "infer", str(listing), "--bundle", str(bundle), "--out", str(out),
            "--backend", "torch", "--device", "cpu", "--num-workers", "0", "--json"]  # fmt: skip
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_infer_runs_into_one_folder_never_share_a_slide(tmp_path, lock_slides, random_torch_bundle):
    out = tmp_path / "shared_out"
    first = _infer_process(lock_slides[:3], random_torch_bundle, out, tmp_path / "first.txt")
    second = _infer_process(lock_slides, random_torch_bundle, out, tmp_path / "second.txt")
    results = [p.communicate(timeout=600) for p in (first, second)]
    for proc, (_, stderr) in zip((first, second), results, strict=True):
        assert proc.returncode == 0, stderr
    runs = [json.loads(stdout) for stdout, _ in results]
    done = [{Path(r["slide"]).stem for r in run["slides"] if r["status"] == "done"} for run in runs]
    assert not done[0] & done[1], "a slide was processed by both runs at once"
    assert done[0] | done[1] == {s.stem for s in lock_slides}
    statuses = {r["status"] for run in runs for r in run["slides"]}
    assert statuses <= {"done", "skipped", "locked"}
    for slide in lock_slides:  # every output complete and valid, nothing half-written or locked left
        report = json.loads((out / "reports" / f"{slide.stem}.json").read_text())
        assert report["slide"]["slide_id"] == slide.stem
        Image.open(out / "heatmaps" / f"{slide.stem}.png").verify()
        json.loads((out / "geojson" / f"{slide.stem}.geojson").read_text())
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith((".partial", ".lock"))]
    assert leftovers == []
