"""One framing rule: extract, add-context and infer give the same spatial context for the same slide and settings.

All three frame the SAM image by the union box of the tissue contours; add-context detects the tissue again
with the settings the feature file recorded (ours) or the preset it is given (CLAM files). Before, add-context
framed by the patch footprints' union box and gave other segments (23 vs 29 groups on a demo slide).
"""

from __future__ import annotations

import dataclasses

import h5py
import pytest
from conftest import assert_same_context

from sammil_deploy.features.encoding import EncoderConfig
from sammil_deploy.features.store import read_bag
from sammil_deploy.pipeline.add_context import add_context, add_context_files, patch_extent_level0
from sammil_deploy.pipeline.extract import SlideExtractConfig, extract_slide, features_path_for
from sammil_deploy.segment import SegmentConfig
from sammil_deploy.tissue import TissueConfig, tissue_preset


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, real_slide_path):
    """``extract`` of the real slide: bwh_biopsy tissue, 512 px patches, fallback segmenter, random ResNet50."""
    out = tmp_path_factory.mktemp("extract")
    cfg = SlideExtractConfig(
        tissue=TissueConfig(**tissue_preset("bwh_biopsy")),
        segment=SegmentConfig(segmenter="fallback"),
        features=EncoderConfig(allow_random=True, num_workers=0),
    )
    extract_slide(real_slide_path, cfg, out)
    return cfg, read_bag(features_path_for(out, real_slide_path))


def test_add_context_on_clam_file_equals_extract(extracted, real_slide_path, tmp_path):
    cfg, bag = extracted
    assert bag.context.n_groups >= 2
    clam = tmp_path / "h5_files" / f"{real_slide_path.stem}.h5"
    clam.parent.mkdir()
    with h5py.File(clam, "w") as f:  # CLAM's layout: features and coords, no tissue settings recorded
        f["features"], f["coords"] = bag.features, bag.coords_level0_xy
        f["coords"].attrs.update(patch_size=bag.patch_size_level0_px, patch_level=bag.patch_level)
    summary = add_context_files([clam], real_slide_path.parent, tmp_path / "out", cfg.segment, tissue=cfg.tissue)
    assert summary.all_succeeded, summary.to_dict()
    upgraded = read_bag(tmp_path / "out" / clam.name)
    assert_same_context(upgraded.context, bag.context)
    assert upgraded.attrs["context_tissue_config"]["source"] == "given"
    # The old framing (the patch footprints' box) is a different frame on this slide: the test can tell.
    extent = patch_extent_level0(bag.coords_level0_xy, bag.patch_size_level0_px)
    from sammil_deploy.slide import open_slide
    from sammil_deploy.tissue import detect_tissue

    with open_slide(real_slide_path) as reader:
        assert tuple(detect_tissue(reader, cfg.tissue).bbox_level0) != extent


def test_add_context_on_our_file_uses_the_recorded_tissue_settings(extracted, real_slide_path):
    cfg, bag = extracted
    stripped = dataclasses.replace(bag, context=None)
    # No tissue settings given: the bwh_biopsy settings the file recorded frame the SAM image, not the defaults.
    upgraded = add_context(stripped, real_slide_path, cfg.segment)
    assert_same_context(upgraded.context, bag.context)
    assert upgraded.attrs["context_tissue_config"]["source"] == "recorded"
