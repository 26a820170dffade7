import numpy as np
import openslide
import pytest
import torch
from PIL import Image
from torchvision import transforms

from sammil_deploy.errors import ConfigError
from sammil_deploy.features.encoders import create_encoder
from sammil_deploy.features.encoding import EncoderConfig, extract_features
from sammil_deploy.features.preprocess_ops import PatchTransform, normalize_batch
from sammil_deploy.pipeline.feature_backend import open_feature_backend

COORDS = np.array([[0, 0], [1700, 2400], [1600, 100]])


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return create_encoder("resnet50_trunc", allow_random=True)


def _reference_input(rgb: np.ndarray, interpolation) -> torch.Tensor:
    """SAM-MIL/CLAM preprocessing written with torchvision transforms on a PIL image."""
    tf = transforms.Compose(
        [
            transforms.Resize((224, 224), interpolation=interpolation),
            transforms.ToTensor(),
            transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        ]
    )
    return tf(Image.fromarray(rgb))


@pytest.mark.parametrize(
    ("name", "reference"),
    [("bicubic", transforms.InterpolationMode.BICUBIC), ("bilinear", transforms.InterpolationMode.BILINEAR)],
)
def test_transform_matches_torchvision_preprocessing(name, reference):
    rgb = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    ours = normalize_batch(PatchTransform(224, name)(rgb)[None], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[0]
    torch.testing.assert_close(ours, _reference_input(rgb, reference), rtol=0, atol=1e-5)


def test_features_match_direct_openslide_reference(real_slide_path, encoder):
    """Workers, batching (uneven last batch) and device normalisation change nothing vs a plain loop."""
    with openslide.OpenSlide(str(real_slide_path)) as slide:
        inputs = [
            _reference_input(
                np.asarray(slide.read_region(tuple(map(int, xy)), 0, (512, 512)).convert("RGB")),
                transforms.InterpolationMode.BICUBIC,
            )
            for xy in COORDS
        ]
    with torch.inference_mode():
        expected = encoder(torch.stack(inputs)).numpy()
    for workers, reader in ((0, "openslide"), (2, "tiled")):
        calls: list[tuple[int, int]] = []
        cfg = EncoderConfig(allow_random=True, batch_size=2, num_workers=workers, device="cpu", reader=reader)
        with open_feature_backend(encoder, cfg) as backend:
            assert backend.kind == "torch"  # auto: random weights are not worth an ONNX export
            feats = _extract(real_slide_path, backend, cfg, progress=lambda d, t, calls=calls: calls.append((d, t)))
        assert feats.shape == (len(COORDS), 1024)
        assert feats.dtype == np.float32
        np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-4)
        # Two batches; with workers they arrive in completion order (the 1-row one may come first).
        assert len(calls) == 2
        assert calls[-1] == (3, 3)
        assert calls[0][0] in (1, 2)


def _extract(slide, backend, cfg, coords=COORDS, **kwargs):
    return extract_features(slide, coords, 512, backend, cfg, input_size_px=224, interpolation="bicubic", **kwargs)


def test_onnxruntime_and_torch_backends_agree(real_slide_path, encoder, tmp_path):
    """The exported ONNX file (cached by weight content) gives the torch module's features."""
    ort_cfg = EncoderConfig(allow_random=True, batch_size=3, num_workers=0, device="cpu", backend="onnxruntime")
    with open_feature_backend(encoder, ort_cfg, cache_dir=tmp_path) as ort:
        assert ort.kind == "onnxruntime"
        got = _extract(real_slide_path, ort, ort_cfg)
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    torch_cfg = EncoderConfig(allow_random=True, batch_size=3, num_workers=0, device="cpu", backend="torch")
    with open_feature_backend(encoder, torch_cfg) as pt:
        want = _extract(real_slide_path, pt, torch_cfg)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_empty_coords_give_empty_features(real_slide_path, encoder):
    cfg = EncoderConfig(allow_random=True, device="cpu")
    with open_feature_backend(encoder, cfg) as backend:
        feats = _extract(real_slide_path, backend, cfg, coords=np.zeros((0, 2), np.int64))
    assert feats.shape == (0, 1024)


def test_bf16_autocast_on_cpu_stays_close(encoder):
    batch = {"patches": np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)}
    outs = {}
    for precision in ("fp32", "bf16"):
        cfg = EncoderConfig(allow_random=True, device="cpu", precision=precision)
        with open_feature_backend(encoder, cfg) as backend:
            outs[precision] = torch.from_numpy(backend.infer(batch)["features"])
    assert outs["bf16"].dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(outs["fp32"], outs["bf16"], dim=1)
    assert cos.min() > 0.99


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_extraction_matches_cpu(real_slide_path, precision):
    torch.manual_seed(0)
    enc = create_encoder("resnet50_trunc", allow_random=True)
    feats = {}
    for device in ("cpu", "cuda"):
        cfg = EncoderConfig(allow_random=True, device=device, precision="fp32" if device == "cpu" else precision)
        with open_feature_backend(enc, cfg) as backend:
            feats[device] = _extract(real_slide_path, backend, cfg)
    cpu, gpu = feats["cpu"], feats["cuda"]
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cos.min() > (0.9999 if precision == "fp32" else 0.99)


@pytest.mark.gpu
@pytest.mark.parametrize("resize", ["host", "device"])
def test_gpu_onnxruntime_engine_matches_cpu(real_slide_path, encoder, tmp_path, resize):
    """The engine's CUDA loop with ONNX Runtime's IO binding (pinned batches, side-stream copies)."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDA execution provider) is not installed")
    feats = {}
    for device in ("cpu", "cuda"):
        cfg = EncoderConfig(allow_random=True, device=device, backend="onnxruntime", batch_size=2, num_workers=2,
                            resize=resize)  # fmt: skip
        with open_feature_backend(encoder, cfg, cache_dir=tmp_path) as backend:
            feats[device] = _extract(real_slide_path, backend, cfg)
    cpu, gpu = feats["cpu"], feats["cuda"]
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cos.min() > 0.9999


def test_config_validation():
    with pytest.raises(ConfigError, match="precision"):
        EncoderConfig(precision="int8")
    with pytest.raises(ConfigError, match="unknown"):
        EncoderConfig(encoder="vit_giant")
    with pytest.raises(ConfigError, match="one weights source"):
        EncoderConfig(weights="w.pth", allow_random=True)
    with pytest.raises(ConfigError, match="batch_size"):
        EncoderConfig(batch_size=0)
    with pytest.raises(ConfigError, match="features.backend"):
        EncoderConfig(backend="tvm")
    with pytest.raises(ConfigError, match="needs a plan"):
        EncoderConfig(backend="tensorrt")
    with pytest.raises(ConfigError, match="features.reader"):
        EncoderConfig(reader="pillow")
    assert EncoderConfig(weights="w.pth").weights.name == "w.pth"


def test_fp16_on_cpu_is_refused(encoder):
    cfg = EncoderConfig(allow_random=True, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="fp16' needs a CUDA device"):
        open_feature_backend(encoder, cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_gpu_is_refused(real_slide_path, encoder):
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        open_feature_backend(encoder, EncoderConfig(allow_random=True, device="cuda"))


def test_resize_on_the_device_keeps_features_of_the_pil_path(real_slide_path, encoder):
    """Batch resize in torch (the GPU path's default) vs PIL in the workers, every tissue patch of the real slide.

    Same weights (seeded random ResNet50-trunc), same pixels (tile reader), only the resize differs.
    """
    from sammil_deploy.bench.reading import tissue_coords_level0_xy

    coords = tissue_coords_level0_xy(real_slide_path, 512)
    feats = {}
    for place in ("host", "device"):
        cfg = EncoderConfig(allow_random=True, batch_size=8, num_workers=0, device="cpu", resize=place)
        with open_feature_backend(encoder, cfg) as backend:
            feats[place] = _extract(real_slide_path, backend, cfg, coords=coords)
    host, device = feats["host"], feats["device"]
    cos = (host * device).sum(1) / np.linalg.norm(host, axis=1) / np.linalg.norm(device, axis=1)
    assert len(coords) > 10
    assert cos.min() >= 0.9999
    assert not np.array_equal(host, device)  # the two paths really differ (rounding), so the bound means something
