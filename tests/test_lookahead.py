"""Overlap across slides: the next slide is prepared in a helper thread while the current one is processed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sammil_deploy.errors import SlideError
from sammil_deploy.pipeline.lookahead import Lookahead


def test_next_slide_is_prepared_while_the_current_one_is_processed():
    slides = [Path(f"s{i}.svs") for i in range(3)]
    started: dict[Path, float] = {}
    threads: set[str] = set()

    def prepare(p: Path) -> str:
        started[p] = time.perf_counter()
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return p.stem

    discarded = []
    with Lookahead(slides, prepare, discarded.append) as ahead:
        assert ahead.take(slides[0]) == "s0"
        time.sleep(0.1)  # "encode" slide 0
        assert slides[1] in started  # slide 1 was prepared while slide 0 was "encoded", before anyone asked for it
        assert ahead.take(slides[1]) == "s1"
        assert ahead.take(slides[2]) == "s2"
    assert discarded == []
    assert any(name.startswith("slide-prepare") for name in threads)


def test_errors_surface_on_take_and_skipped_slides_are_discarded():
    slides = [Path("a.svs"), Path("bad.svs"), Path("c.svs"), Path("d.svs")]

    def prepare(p: Path) -> str:
        if p.stem == "bad":
            raise SlideError(f"{p.name}: corrupt")
        return p.stem

    discarded = []
    with Lookahead(slides, prepare, discarded.append) as ahead:
        assert ahead.take(slides[0]) == "a"
        with pytest.raises(SlideError, match="bad.svs: corrupt"):
            ahead.take(slides[1])
        # c.svs was prepared ahead, but the caller skips it (say another worker holds its lock) and takes d.svs.
        assert ahead.take(slides[3]) == "d"
    assert discarded == ["c"]


def test_numpy_blas_is_single_threaded_while_slides_are_prepared_ahead():
    """OpenBLAS's fork handler kills its pool under a BLAS call in the helper thread: no pool while open."""
    import numpy as np  # noqa: F401  (loads numpy's BLAS, so threadpoolctl sees it)
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    assert before, "numpy's BLAS is not visible to threadpoolctl"
    with Lookahead([Path("a"), Path("b")], lambda p: p.name, lambda _v: None) as ahead:
        assert blas_threads() == [1] * len(before)
        assert ahead.take(Path("a")) == "a"
    assert blas_threads() == before
