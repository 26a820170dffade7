# ruff: noqa: F811  (fixtures imported from test_infer are redefined as parameters)
"""Ray cohorts survive a dead worker, run across two nodes, and never ask for more GPUs than the cluster has.

The kill tests SIGKILL a real ``ray::InferWorker.run`` process mid-slide; the two-node test starts a head and a
second node with ``ray start --block`` (each in its own process group, torn down by pid). Small synthetic
slides, one CPU per actor; heavy enough to be marked slow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (extra 'ray')")

from test_infer import (  # noqa: E402  (the bundle, slides and clean run of the inference tests)
    CFG,
    _same_outputs,
    bundle_dir,  # noqa: F401
    checkpoint_1024,  # noqa: F401
    cohort_full,  # noqa: F401
    export_dir,  # noqa: F401
    small_slides,  # noqa: F401
)

from sammil_deploy.errors import ConfigError  # noqa: E402
from sammil_deploy.pipeline.distributed import FaultPolicy, plan_workers, run_slides_ray  # noqa: E402
from sammil_deploy.pipeline.infer import InferConfig, output_path  # noqa: E402
from sammil_deploy.pipeline.locks import read_holder  # noqa: E402

NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}  # a throw-away cluster on one machine: no token to hand around
LOCAL = {"num_cpus": 2, "log_to_driver": False, "object_store_memory": 100 * 2**20}


def test_gpu_workers_are_capped_at_the_clusters_gpu_count():
    import ray

    ray.init(num_cpus=1, num_gpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    try:
        resources = ray.cluster_resources()  # a CPU machine that says it has two GPUs
        assert plan_workers(resources, "cuda", 4, 10) == (2, True)
        assert plan_workers(resources, "auto", None, 10) == (2, True)
        assert plan_workers(resources, "cuda", 4, 1) == (1, True)
        assert plan_workers(resources, "cpu", 4, 10) == (4, False)
    finally:
        ray.shutdown()
    with pytest.raises(ConfigError, match="no GPU"):
        plan_workers({"CPU": 2.0}, "cuda", 2, 3)


class _Killer(threading.Thread):
    """SIGKILLs the Ray worker that holds a slide's lock file (so it is certainly mid-slide), once."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(daemon=True)
        self.out_dir, self.killed, self.stop = out_dir, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and not self.killed:
            for lock in self.out_dir.rglob("*.lock"):
                time.sleep(0.5)  # well into the slide
                holder = read_holder(lock)
                if holder is not None and holder.pid > 0:  # still locked: still on it
                    os.kill(holder.pid, signal.SIGKILL)
                    self.killed.append(lock.name)
                break
            time.sleep(0.1)


@pytest.mark.slow
def test_killed_worker_is_restarted_and_its_slide_retried(bundle_dir, small_slides, cohort_full, tmp_path):
    cfg = InferConfig(backend="onnxruntime", **CFG)
    killer = _Killer(tmp_path)
    killer.start()
    summary = run_slides_ray(small_slides, bundle_dir, cfg, tmp_path, workers=2, init_kwargs=LOCAL)
    killer.stop.set()
    assert len(killer.killed) == 1, "no worker was caught mid-slide"
    assert [r.status for r in summary.records] == ["done"] * 3
    retried = [r for r in summary.records if r.detail and "retried after its Ray worker died" in r.detail]
    assert len(retried) == 1, [r.detail for r in summary.records]
    _same_outputs(cohort_full, tmp_path, small_slides)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".partial", ".lock"))]


@pytest.mark.slow
def test_slide_out_of_retries_is_failed_with_the_reason_and_the_cohort_goes_on(bundle_dir, small_slides, tmp_path):
    cfg = InferConfig(backend="onnxruntime", **CFG)
    killer = _Killer(tmp_path)
    killer.start()
    faults = FaultPolicy(max_restarts=0, max_retries=0)  # the killed worker is gone and its slide not retried
    summary = run_slides_ray(small_slides, bundle_dir, cfg, tmp_path, workers=2, init_kwargs=LOCAL, faults=faults)
    killer.stop.set()
    assert len(killer.killed) == 1, "no worker was caught mid-slide"
    statuses = [r.status for r in summary.records]
    assert sorted(statuses) == ["done", "done", "failed"]
    failed = summary.failed[0]
    assert failed.error_type == "WorkerError"
    assert "Ray worker died while processing it" in failed.detail
    assert not output_path(tmp_path, failed.slide, "report").exists()
    assert killer.killed == [output_path(tmp_path, failed.slide, "report").name + ".lock"]
    rows = (tmp_path / "summary.csv").read_text()
    assert "WorkerError" in rows
    # the driver's rerun (what a user does after any fault) finishes the cohort
    again = run_slides_ray(small_slides, bundle_dir, cfg, tmp_path, workers=1, init_kwargs=LOCAL)
    assert sorted(r.status for r in again.records) == ["done", "skipped", "skipped"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **NO_TOKEN}


def _infer_args(tmp_path: Path, slides: list[Path], bundle: Path, out: Path, *ray_args: str) -> list[str]:
    """`sammil-deploy --verbose infer ... --ray --json` with the settings of the clean run (``CFG``)."""
    config = tmp_path / "infer.toml"
    config.write_text("[infer]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in CFG.items()))
    listing = tmp_path / "slides.txt"
    listing.write_text("".join(f"{s}\n" for s in slides))
    return [sys.executable, "-m", "sammil_deploy", "--verbose", "infer", str(listing), "--bundle", str(bundle),
            "--out", str(out), "--backend", "onnxruntime", "--config", str(config), "--ray", *ray_args,
            "--json"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(args: list[str], log: Path) -> subprocess.Popen:
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen(
        [ray_cli, "start", "--block", "--disable-usage-stats", "--num-cpus=1", "--num-gpus=0",
         "--object-store-memory=80000000", *args],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **NO_TOKEN},
    )  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # ray start --block stops the processes it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_two_node_cluster_on_one_machine_runs_a_cohort_across_both(bundle_dir, small_slides, cohort_full, tmp_path):
    port = _free_port()
    temp_dir = Path("/tmp") / f"ray_i14_{os.getpid()}"  # ray's socket paths must stay short
    head = _ray_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}",
                      "--resources={\"head\": 1}"], tmp_path / "head.log")  # fmt: skip
    nodes = [head]
    try:
        deadline = time.time() + 60
        while b"Ray runtime started" not in (tmp_path / "head.log").read_bytes():
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.time() < deadline, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        nodes.append(_ray_node([f"--address=127.0.0.1:{port}", '--resources={"second": 1}'], tmp_path / "n2.log"))
        while b"Ray runtime started" not in (tmp_path / "n2.log").read_bytes():
            assert nodes[1].poll() is None, (tmp_path / "n2.log").read_text()
            assert time.time() < deadline + 60, (tmp_path / "n2.log").read_text()
            time.sleep(0.5)
        # the driver is a separate process, as a user's would be: `infer --ray --ray-address host:port`
        args = _infer_args(tmp_path, small_slides, bundle_dir, tmp_path / "out", "--ray-address", f"127.0.0.1:{port}",
                           "--ray-workers", "2")  # fmt: skip
        run = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        assert [r["status"] for r in json.loads(run.stdout)["slides"]] == ["done"] * 3
        used = set(re.findall(r"on worker \d+, node (\w+)", run.stderr))
        assert len(used) == 2, run.stderr  # slides ran on both nodes
        _same_outputs(cohort_full, tmp_path / "out", small_slides)
    finally:
        for proc in reversed(nodes):
            _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_killed_driver_resumes_from_what_was_written(bundle_dir, small_slides, cohort_full, tmp_path):
    """SIGKILL of the `infer --ray` process once a slide is written; the rerun finishes with identical outputs."""
    out = tmp_path / "out"
    env = _env()
    args = _infer_args(tmp_path, small_slides, bundle_dir, out, "--ray-workers", "1")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    driver = subprocess.Popen(args, env=env, start_new_session=True, **quiet)
    try:
        deadline = time.time() + 300
        while not list(out.glob("reports/*.json")):
            assert driver.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # the driver's own local Ray processes
    finished = sorted(p.stem for p in (out / "reports").glob("*.json"))
    assert 1 <= len(finished) < 3
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    statuses = {r["slide"]: r["status"] for r in json.loads(rerun.stdout)["slides"]}
    skipped = {Path(s).stem for s, v in statuses.items() if v == "skipped"}
    # Every slide on disk at the kill is reused; the worker that held a slide when its driver died may still
    # have finished it before Ray tore it down, so the rerun may reuse that one too.
    assert set(finished) <= skipped
    assert set(statuses.values()) <= {"skipped", "done"}
    _same_outputs(cohort_full, out, small_slides)
    assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".lock"))]
