"""Long runs stay flat: a cohort leaves no file handle open.

The memory curve over a long cohort is a benchmark, not a test: ``benchmarks/cohort_memory.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from conftest import write_small_slides

from sammil_deploy.bundle import load_bundle
from sammil_deploy.pipeline.infer import InferConfig, run_slides


def _open_files() -> dict[str, int]:
    """What each of this process's file descriptors points at (files, sockets, pipes), counted."""
    counts: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        key = target.split("[")[0] if target.startswith(("socket:", "pipe:", "anon_inode:")) else target
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_a_cohort_run_leaves_no_file_handle_open(tmp_path, random_torch_bundle):
    slides = write_small_slides(tmp_path / "slides", (31, 32, 33, 34))
    bundle = load_bundle(random_torch_bundle)
    cfg = InferConfig(backend="torch", device="cpu", batch_size=8, num_workers=1, heatmap_max_size_px=256)
    run_slides(slides[:1], bundle, cfg, tmp_path / "warm")  # lazy imports and one-time caches
    before = _open_files()
    summary = run_slides(slides, bundle, cfg, tmp_path / "out")
    after = _open_files()
    assert [r.status for r in summary.records] == ["done"] * 4
    leaked = {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}
    assert leaked == {}, f"file handles left open by the cohort: {leaked}"
    assert not [k for k in after if k.startswith(str(tmp_path))]  # no slide, feature or output file held
    assert Path(tmp_path / "out" / "summary.csv").is_file()
