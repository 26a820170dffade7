"""Shared pytest fixtures: the real CMU-1 slide and synthetic pyramidal slides (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def real_slide_path() -> Path:
    """CMU-1-Small-Region.svs (single level, 2220x2967 px, 0.499 mpp) from ``../shared/data``."""
    if not REAL_SLIDE.is_file():
        pytest.skip(f"real test slide not found at {REAL_SLIDE}")
    return REAL_SLIDE
