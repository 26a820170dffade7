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


# --- tissue/patching fixtures: an annulus of "tissue" with exactly known geometry -------------------------------


def write_annulus_tiff(
    path: Path,
    size_wh: tuple[int, int],
    *,
    centre_xy: tuple[float, float],
    radius_px: float,
    hole_radius_px: float = 0.0,
    mpp: float | None = 0.5,
    downsamples: tuple[int, ...] = (1, 4, 16),
) -> Path:
    """Tiled pyramidal TIFF: white (245) background, a purple disk of ``radius_px`` with a white hole, level-0 px.

    Tiles are generated one at a time, so large slides cost little memory.
    """
    import numpy as np
    import tifffile

    tile = 256
    colour, background = np.array([200, 100, 180], np.uint8), np.array([245, 245, 245], np.uint8)

    plain = {False: np.broadcast_to(background, (tile, tile, 3)), True: np.broadcast_to(colour, (tile, tile, 3))}

    def tiles(ds: int, w: int, h: int):
        offsets = np.arange(tile, dtype=np.float64) + 0.5
        for y0 in range(0, h, tile):
            dy2 = ((y0 + offsets) * ds - centre_xy[1]) ** 2
            for x0 in range(0, w, tile):
                d2 = dy2[:, None] + (((x0 + offsets) * ds - centre_xy[0]) ** 2)[None, :]
                tissue = (d2 <= radius_px**2) & (d2 > hole_radius_px**2)
                if tissue.all() or not tissue.any():  # most tiles are uniform: skip the per-pixel select
                    yield plain[bool(tissue[0, 0])]
                else:
                    yield np.where(tissue[..., None], colour, background)

    with tifffile.TiffWriter(path) as tw:
        for i, ds in enumerate(downsamples):
            w, h = -(-size_wh[0] // ds), -(-size_wh[1] // ds)
            extra = {} if mpp is None else {"resolution": (1e4 / (mpp * ds),) * 2, "resolutionunit": "CENTIMETER"}
            tw.write(
                tiles(ds, w, h),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                subfiletype=0 if i == 0 else 1,
                **extra,
            )
    return path


@pytest.fixture(scope="session")
def annulus_slide(tmp_path_factory) -> tuple[Path, dict]:
    """8192x8192 px, 0.5 mpp, levels 1/4/16; tissue annulus centre (4096, 4096), radii 3500 and 1300 level-0 px.

    Net tissue area is ~127 reference patches (512² px), above CLAM's default a_t=100, and the hole (~20) above
    a_h=16, so CLAM's default parameters keep one contour with one hole.
    """
    truth = {
        "size_wh": (8192, 8192),
        "centre_xy": (4096.0, 4096.0),
        "radius_px": 3500.0,
        "hole_radius_px": 1300.0,
        "mpp": 0.5,
    }
    path = tmp_path_factory.mktemp("annulus") / "annulus.tif"
    write_annulus_tiff(
        path,
        truth["size_wh"],
        centre_xy=truth["centre_xy"],
        radius_px=truth["radius_px"],
        hole_radius_px=truth["hole_radius_px"],
        mpp=truth["mpp"],
    )
    return path, truth


# --- hardware markers: GPU/TensorRT tests are real but skip where the hardware is absent ---------------------------


def pytest_collection_modifyitems(config, items):
    import importlib.util

    import torch

    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trt" in item.keywords and not (has_cuda and has_trt):
            item.add_marker(pytest.mark.skip(reason="needs TensorRT on a CUDA GPU"))


# --- synthetic pyramidal slides (sammil_deploy.slide.synthetic), written once per session ------------------------

SYNTHETIC_SLIDE_SPEC_KW = {"width_px": 6144, "height_px": 5120, "mpp": 0.25, "seed": 7, "tumour": True}


@pytest.fixture(scope="session")
def _synthetic_slide_and_truth(tmp_path_factory):
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    path = tmp_path_factory.mktemp("synthetic") / "synthetic_tumour.svs"
    truth = write_synthetic_slide(path, SyntheticSlideSpec(**SYNTHETIC_SLIDE_SPEC_KW))
    return path, truth


@pytest.fixture(scope="session")
def synthetic_slide(_synthetic_slide_and_truth) -> Path:
    """Aperio-style .svs, 6144x5120 px at 0.25 mpp (40x), levels 1/4/16, 512 px JPEG tiles, with a tumour focus."""
    return _synthetic_slide_and_truth[0]


@pytest.fixture(scope="session")
def synthetic_slide_truth(_synthetic_slide_and_truth):
    """SyntheticTruth of ``synthetic_slide``: tissue/tumour masks; ``tumour_fraction(xy_level0, (w, h))``."""
    return _synthetic_slide_and_truth[1]


@pytest.fixture(scope="session")
def blank_slide(tmp_path_factory) -> Path:
    """Same format, 2048x1536 px at 0.25 mpp, levels 1/4, glass only (white ~244 with scanner noise)."""
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    path = tmp_path_factory.mktemp("synthetic") / "blank.svs"
    write_synthetic_slide(path, SyntheticSlideSpec(width_px=2048, height_px=1536, n_tissue_pieces=0, seed=1))
    return path


@pytest.fixture(scope="session")
def tiny_slide(tmp_path_factory) -> Path:
    """Same format, 400x300 px at 0.25 mpp (smaller than one 512 px patch), one level, one piece of tissue."""
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    path = tmp_path_factory.mktemp("synthetic") / "tiny.svs"
    spec = SyntheticSlideSpec(width_px=400, height_px=300, n_tissue_pieces=1, n_lumens=0, seed=2)
    write_synthetic_slide(path, spec)
    return path


# --- export fixtures: one tiny export of every part per session (torch.onnx export is slow on CPU) ---------------


@pytest.fixture(scope="session")
def tiny_mil_checkpoint(tmp_path_factory) -> Path:
    """A saved (untrained, xavier-initialised) attention-MIL checkpoint: 64-d features, 2 classes, group tokens."""
    from sammil_deploy.mil.checkpoint import make_meta, save_checkpoint
    from sammil_deploy.mil.config import ModelConfig
    from sammil_deploy.mil.model import build_model

    cfg = ModelConfig(in_dim=64, embed_dim=32, attn_dim=16)
    path = tmp_path_factory.mktemp("mil_ckpt") / "fold0"
    meta = make_meta(cfg, class_names=("normal", "tumor"), group_tokens=True, feature_extractor="resnet50_trunc")
    return save_checkpoint(path, build_model(cfg), meta)


@pytest.fixture(scope="session")
def random_resnet_weights(tmp_path_factory) -> Path:
    """Random ResNet50-trunc weights saved as .safetensors, so a test can rebuild the exact exported model."""
    import torch
    from safetensors.torch import save_file

    from sammil_deploy.features.encoders import create_encoder

    torch.manual_seed(0)
    encoder = create_encoder("resnet50_trunc", allow_random=True)
    path = tmp_path_factory.mktemp("resnet_weights") / "resnet50_trunc_random.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_mil_checkpoint, random_resnet_weights, real_slide_path):
    """``export_all`` of every part (tiny SAM, random ResNet50, MIL) at ``int8`` (ResNet50 Q/DQ, others fp16).

    Parity uses the real slide too, and the slide also provides the INT8 calibration patches.
    Returns ``(report, out_dir)``.
    """
    import torch

    from sammil_deploy.export.api import export_all
    from sammil_deploy.export.config import ExportConfig

    torch.manual_seed(0)
    out_dir = tmp_path_factory.mktemp("export")
    cfg = ExportConfig(precision="int8", calibration_patches=8)
    report = export_all(
        tiny_mil_checkpoint, None, "tiny", random_resnet_weights, out_dir, cfg,
        allow_random_weights=True, parity_slide=real_slide_path, calibration_slides=(real_slide_path,),
    )  # fmt: skip
    return report, out_dir


# --- a small torch-backend inference bundle (random encoder, 1024-d MIL head), for fault and long-run tests --------


@pytest.fixture(scope="session")
def random_torch_bundle(tmp_path_factory, random_resnet_weights) -> Path:
    """Bundle without exported parts (backend torch): random ResNet50-trunc, tiny 1024-d MIL head, fallback SAM."""
    from sammil_deploy.bundle import make_bundle
    from sammil_deploy.mil.checkpoint import make_meta, save_checkpoint
    from sammil_deploy.mil.config import ModelConfig
    from sammil_deploy.mil.model import build_model
    from sammil_deploy.pipeline.extract import load_extract_config

    model_cfg = ModelConfig(in_dim=1024, embed_dim=32, attn_dim=16)
    meta = make_meta(model_cfg, class_names=("normal", "tumor"), group_tokens=True, feature_extractor="resnet50_trunc")
    ckpt = save_checkpoint(tmp_path_factory.mktemp("bundle_ckpt") / "fold0", build_model(model_cfg), meta)
    extract_cfg = load_extract_config(
        preset="bwh_biopsy", overrides={"features.weights": random_resnet_weights, "segment.segmenter": "fallback"}
    )
    out = tmp_path_factory.mktemp("torch_bundle") / "bundle"
    make_bundle(out, ckpt, None, extract_cfg)
    return out


def write_small_slides(folder: Path, seeds: tuple[int, ...], size_px: tuple[int, int] = (1536, 1280)) -> list[Path]:
    """Synthetic slides ``s<seed>.svs`` at 0.5 mpp (a few 512 px patches each)."""
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"s{seed}.svs"
        spec = SyntheticSlideSpec(width_px=size_px[0], height_px=size_px[1], mpp=0.5, seed=seed, n_lumens=0)
        write_synthetic_slide(path, spec)
        paths.append(path)
    return paths


def assert_same_context(actual, expected) -> None:
    """Every field of two ``SpatialContext`` objects is equal (arrays exactly), named on failure.

    The field list is the dataclass's own, so a field added to ``SpatialContext`` is compared too.
    """
    import dataclasses

    import numpy as np

    for field in dataclasses.fields(expected):
        x, y = getattr(actual, field.name), getattr(expected, field.name)
        if isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=field.name)
        else:
            assert x == y, field.name
