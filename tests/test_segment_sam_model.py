"""SAM model building, checkpoint loading (weights_only) and type detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammil_deploy.errors import ConfigError, WeightsError
from sammil_deploy.segment.sam_model import SAM_SPECS, _build_from_spec, build_sam, detect_sam_model_type


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    sam = build_sam("tiny")
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


def test_tiny_sam_is_small_and_uses_segment_anything_classes():
    from segment_anything.modeling import ImageEncoderViT, Sam, TwoWayTransformer

    sam = build_sam("tiny")
    assert isinstance(sam, Sam)
    assert isinstance(sam.image_encoder, ImageEncoderViT)
    assert isinstance(sam.mask_decoder.transformer, TwoWayTransformer)
    assert sam.image_encoder.img_size == 128
    assert sum(p.numel() for p in sam.parameters()) < 500_000
    assert not sam.training


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h", "tiny"])
def test_detect_type_from_state_dict_shapes(model_type):
    # Meta tensors carry shapes only, so even vit_h (641 M parameters) costs no memory here.
    with torch.device("meta"):
        state_dict = _build_from_spec(SAM_SPECS[model_type]).state_dict()
    assert detect_sam_model_type(state_dict) == model_type


def test_detect_rejects_unknown_shapes_and_non_sam_keys():
    with torch.device("meta"):
        state_dict = _build_from_spec(SAM_SPECS["vit_b"]).state_dict()
    truncated = {k: v for k, v in state_dict.items() if not k.startswith("image_encoder.blocks.11.")}
    with pytest.raises(WeightsError, match="11 blocks"):
        detect_sam_model_type(truncated)
    with pytest.raises(WeightsError, match="not a Segment Anything"):
        detect_sam_model_type({"fc.weight": torch.zeros(2, 2)})


def test_saved_state_dict_reloads_to_identical_outputs(tiny_checkpoint):
    sam, path = tiny_checkpoint
    loaded = build_sam("auto", path)
    assert detect_sam_model_type(loaded.state_dict()) == "tiny"
    image = torch.rand(1, 3, 128, 128) * 255
    with torch.inference_mode():
        ref = sam.image_encoder(sam.preprocess(image))
        out = loaded.image_encoder(loaded.preprocess(image))
        points = (torch.tensor([[[40.0, 50.0]]]), torch.tensor([[1]]))
        sparse, dense = loaded.prompt_encoder(points=points, boxes=None, masks=None)
        ref_sparse, ref_dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
        masks, iou = loaded.mask_decoder(out, loaded.prompt_encoder.get_dense_pe(), sparse, dense, True)
        ref_masks, ref_iou = sam.mask_decoder(ref, sam.prompt_encoder.get_dense_pe(), ref_sparse, ref_dense, True)
    assert torch.equal(out, ref)
    assert torch.equal(masks, ref_masks)
    assert torch.equal(iou, ref_iou)
    # A different random init really differs, so the equality above is informative.
    other = build_sam("tiny")
    with torch.inference_mode():
        assert not torch.equal(other.image_encoder(other.preprocess(image)), ref)


def test_wrapped_state_dict_is_unwrapped(tiny_checkpoint, tmp_path):
    sam, _ = tiny_checkpoint
    path = tmp_path / "wrapped.pth"
    torch.save({"model": sam.state_dict()}, path)
    loaded = build_sam("tiny", path)
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(loaded.state_dict()[key], sam.state_dict()[key])


def test_named_type_must_match_checkpoint(tiny_checkpoint):
    _, path = tiny_checkpoint
    with pytest.raises(WeightsError, match="holds a SAM tiny but sam_model is 'vit_b'"):
        build_sam("vit_b", path)


def test_bad_checkpoints_raise_weights_error(tiny_checkpoint, tmp_path):
    sam, _ = tiny_checkpoint
    with pytest.raises(WeightsError, match="not found"):
        build_sam("auto", tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="weights_only"):
        build_sam("auto", garbage)
    pickled = tmp_path / "pickled.pth"
    torch.save({"state": np.dtype("float32"), "fn": ConfigError}, pickled)  # needs full unpickling
    with pytest.raises(WeightsError):
        build_sam("auto", pickled)
    incomplete = tmp_path / "incomplete.pth"
    state = dict(sam.state_dict())
    del state["mask_decoder.iou_token.weight"]
    torch.save(state, incomplete)
    with pytest.raises(WeightsError, match="1 missing"):
        build_sam("tiny", incomplete)


def test_auto_without_checkpoint_and_unknown_type_are_config_errors():
    with pytest.raises(ConfigError, match="needs a SAM checkpoint"):
        build_sam("auto")
    with pytest.raises(ConfigError, match="unknown SAM model type"):
        build_sam("vit_x")
