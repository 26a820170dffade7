"""OpenSlide reader on the real Aperio slide and on bad inputs."""

import numpy as np
import pytest

from sammil_deploy.errors import ConfigError, SlideError, UnsupportedSlideError
from sammil_deploy.slide import downsample_for_long_side, find_slides, open_slide


def test_real_slide_metadata(real_slide_path):
    with open_slide(real_slide_path) as reader:
        info = reader.info
        assert info.dimensions_wh == (2220, 2967)
        assert info.mpp == pytest.approx(0.499)
        assert info.mpp_source == "metadata"
        assert info.objective_power == 20
        assert info.vendor == "aperio"
        region = reader.read_region((1000, 1000), 0, (512, 256))
        assert region.shape == (256, 512, 3)
        assert region.dtype == np.uint8
        assert region.std() > 5  # real tissue, not a constant fill
        thumb = reader.thumbnail(256)
        assert max(thumb.shape[:2]) == 256


def test_outside_slide_is_white(real_slide_path):
    with open_slide(real_slide_path) as reader:
        region = reader.read_region((2200, 2950), 0, (64, 64))
    assert (region[-10:, -10:] == 255).all()


def test_mpp_override_and_level_choice(real_slide_path):
    with open_slide(real_slide_path, mpp=0.25) as reader:
        info = reader.info
    assert info.mpp == 0.25
    assert info.mpp_source == "user"
    assert info.level_for_mpp(0.5) == 0
    with pytest.raises(ConfigError, match="finer than the slide's base resolution"):
        info.level_for_mpp(0.1)
    assert info.level_for_magnification(10) == 0


def test_closed_reader_refuses(real_slide_path):
    reader = open_slide(real_slide_path)
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(SlideError, match="reader is closed"):
        reader.read_region((0, 0), 0, (8, 8))


def test_bad_inputs(tmp_path):
    with pytest.raises(SlideError, match="no such slide file"):
        open_slide(tmp_path / "missing.svs")
    fake = tmp_path / "fake.svs"
    fake.write_text("this is not a slide")
    with pytest.raises(UnsupportedSlideError, match="fake.svs: not a slide format"):
        open_slide(fake)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlideError, match="holds no slide"):
        find_slides(empty)


def test_sam_downsample_rule():
    assert downsample_for_long_side(1000) == 1
    assert downsample_for_long_side(1025) == 2
    assert downsample_for_long_side(40000) == 64  # 40000/64 = 625 px: long side in (512, 1024]
