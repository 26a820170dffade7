import numpy as np
import openslide
import pytest
import torch
from PIL import Image
from torchvision import transforms

from sammil_deploy.errors import ConfigError
from sammil_deploy.features.encoders import create_encoder
from sammil_deploy.features.extract import ExtractConfig, encode_batch, extract_features
from sammil_deploy.features.preprocess_ops import PatchTransform, normalize_batch

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
    calls = []
    for workers in (0, 2):
        cfg = ExtractConfig(allow_random=True, batch_size=2, num_workers=workers, device="cpu")
        feats = extract_features(real_slide_path, COORDS, 512, encoder, cfg, progress=lambda d, t: calls.append((d, t)))
        assert feats.shape == (len(COORDS), 1024)
        assert feats.dtype == np.float32
        np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-4)
    assert calls == [(2, 3), (3, 3)] * 2


def test_empty_coords_give_empty_features(real_slide_path, encoder):
    feats = extract_features(
        real_slide_path, np.zeros((0, 2), np.int64), 512, encoder, ExtractConfig(allow_random=True)
    )
    assert feats.shape == (0, 1024)


def test_bf16_autocast_on_cpu_stays_close(encoder):
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8))
    full = encode_batch(encoder, batch, torch.device("cpu"), "fp32")
    half = encode_batch(encoder, batch, torch.device("cpu"), "bf16")
    assert half.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(full, half, dim=1)
    assert cos.min() > 0.99


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_extraction_matches_cpu(real_slide_path, precision):
    torch.manual_seed(0)
    enc = create_encoder("resnet50_trunc", allow_random=True)
    cpu = extract_features(real_slide_path, COORDS, 512, enc, ExtractConfig(allow_random=True, device="cpu"))
    gpu = extract_features(
        real_slide_path, COORDS, 512, enc, ExtractConfig(allow_random=True, device="cuda", precision=precision)
    )
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cos.min() > (0.9999 if precision == "fp32" else 0.99)


def test_config_validation():
    with pytest.raises(ConfigError, match="precision"):
        ExtractConfig(precision="int8")
    with pytest.raises(ConfigError, match="unknown"):
        ExtractConfig(encoder="vit_giant")
    with pytest.raises(ConfigError, match="one weights source"):
        ExtractConfig(weights="w.pth", allow_random=True)
    with pytest.raises(ConfigError, match="batch_size"):
        ExtractConfig(batch_size=0)
    assert ExtractConfig(weights="w.pth").weights.name == "w.pth"


def test_fp16_on_cpu_is_refused(real_slide_path, encoder):
    cfg = ExtractConfig(allow_random=True, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        extract_features(real_slide_path, COORDS, 512, encoder, cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_gpu_is_refused(real_slide_path, encoder):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        extract_features(real_slide_path, COORDS, 512, encoder, ExtractConfig(allow_random=True, device="cuda"))
