import hashlib

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50

from sammil_deploy.errors import ConfigError, WeightsError
from sammil_deploy.features.encoders import available_encoders, create_encoder


@pytest.fixture(scope="module")
def torchvision_r50():
    torch.manual_seed(0)
    model = resnet50(weights=None).eval()
    # Non-trivial BN statistics, so a loader that forgot buffers would give different outputs.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def batch():
    # The trunk is fully convolutional + global pooling, so a small input checks the same weights at 1/12 the cost.
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _reference_trunc(model, x):
    """ResNet-50 up to layer3 + global average pool, written from torchvision's own modules."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer3(model.layer2(model.layer1(x))).mean(dim=(2, 3))


def test_registry_lists_resnet50_trunc():
    assert "resnet50_trunc" in available_encoders()


def test_torchvision_state_dict_loads_with_layer4_and_fc_dropped(tmp_path, torchvision_r50, batch):
    path = tmp_path / "resnet50-19c8e357.pth"
    torch.save(torchvision_r50.state_dict(), path)
    encoder = create_encoder("resnet50_trunc", weights=path)
    with torch.inference_mode():
        out = encoder(batch)
        ref = _reference_trunc(torchvision_r50, batch)
    assert out.shape == (2, 1024)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert encoder.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert encoder.meta.weights_source == str(path)
    assert (encoder.dim, encoder.input_size_px, encoder.interpolation) == (1024, 224, "bicubic")
    assert encoder.mean == (0.485, 0.456, 0.406)
    assert encoder.std == (0.229, 0.224, 0.225)
    assert not encoder.training


def test_saved_safetensors_round_trip_gives_same_outputs(tmp_path, batch):
    torch.manual_seed(3)
    original = create_encoder("resnet50_trunc", allow_random=True)
    assert original.weights_sha256 == "random"
    path = tmp_path / "trunc.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(path))
    loaded = create_encoder("resnet50_trunc", weights=path)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(batch), original(batch), rtol=0, atol=0)


def test_checkpoint_wrapper_and_module_prefix_are_unwrapped(tmp_path, torchvision_r50, batch):
    path = tmp_path / "ckpt.pth"
    trunk = {k: v for k, v in torchvision_r50.state_dict().items() if not k.startswith(("layer4.", "fc."))}
    torch.save({"state_dict": {f"module.{k}": v for k, v in trunk.items()}}, path)
    encoder = create_encoder("resnet50_trunc", weights=path)
    with torch.inference_mode():
        torch.testing.assert_close(encoder(batch), _reference_trunc(torchvision_r50, batch), rtol=1e-5, atol=1e-5)


def test_missing_keys_are_listed(tmp_path, torchvision_r50):
    state = {k: v for k, v in torchvision_r50.state_dict().items() if not k.startswith("layer3.5.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"missing keys: layer3\.5\.conv1\.weight"):
        create_encoder("resnet50_trunc", weights=path)


def test_wrong_shapes_are_refused(tmp_path, torchvision_r50):
    state = dict(torchvision_r50.state_dict())
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="conv1.weight"):
        create_encoder("resnet50_trunc", weights=path)


class _Payload:
    pass


def test_pickled_objects_are_not_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _Payload()}, path)
    with pytest.raises(WeightsError, match="cannot read weights"):
        create_encoder("resnet50_trunc", weights=path)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a weights file")
    with pytest.raises(WeightsError, match="garbage.safetensors"):
        create_encoder("resnet50_trunc", weights=garbage)
    with pytest.raises(WeightsError, match="not found"):
        create_encoder("resnet50_trunc", weights=tmp_path / "nope.pth")


def test_weights_source_rules():
    with pytest.raises(WeightsError, match="--allow-random-weights"):
        create_encoder("resnet50_trunc")
    with pytest.raises(ConfigError, match="choose one weights source"):
        create_encoder("resnet50_trunc", weights="x.pth", allow_random=True)
    with pytest.raises(ConfigError, match="choose one weights source"):
        create_encoder("resnet50_trunc", download=True, allow_random=True)
    with pytest.raises(ConfigError, match="unknown encoder"):
        create_encoder("resnet51", allow_random=True)
