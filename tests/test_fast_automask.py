"""FastMaskGenerator against upstream SamAutomaticMaskGenerator (via ``automask.sam_segment``) on the same model.

A randomly initialised tiny SAM predicts IoUs of about -0.3..0.1 and logits within +-1 (stability 0), so with
SAM-MIL's thresholds (0.6/0.6) nothing survives. Two ways around it, both stated where used:

- the plain random tiny SAM with both score filters off (``pred_iou_thresh`` = ``stability_score_thresh`` = 0);
- ``_scaled_tiny_sam``: the same random model with its mask logits multiplied by 100 and its IoU head shifted by
  +0.6, so scores straddle the default 0.6 thresholds and the filters really run.

Random SAM masks are image-sized blobs, so box NMS leaves one or two of them. To compare many masks (NMS within
and between crops, crop-edge filtering, small-region cleanup), ``_disc_sam`` keeps the tiny SAM's real image
encoder but swaps its prompt encoder and mask decoder for a deterministic point decoder whose three masks are
discs around the prompt modulated by the image embedding (``bench.maskgen.many_mask_sam``); the reference
generator runs it unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammil_deploy.bench.maskgen import many_mask_sam
from sammil_deploy.segment import SegmentConfig, segment_image
from sammil_deploy.segment.automask import sam_segment
from sammil_deploy.segment.fast_automask import FastMaskGenerator
from sammil_deploy.segment.postprocess import (
    mask_boxes,
    remove_small_regions_in_box,
    stability_and_boxes,
    upscale_logits,
)
from sammil_deploy.segment.sam_model import build_sam
from sammil_deploy.segment.segmentation import Segmentation


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: more threads only spin
    yield
    torch.set_num_threads(before)


def _tiny_sam(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam("tiny")


def _scaled_tiny_sam(seed: int = 0):
    sam = _tiny_sam(seed)
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(100.0)
            mlp.layers[-1].bias.mul_(100.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.6)
    return sam


def _disc_sam(seed: int = 0):
    return many_mask_sam(seed)


def _blurred_noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 4)


@pytest.fixture(scope="module")
def thumbnail(real_slide_path) -> np.ndarray:
    from sammil_deploy.slide import open_slide

    with open_slide(real_slide_path) as reader:
        return reader.thumbnail(256)


def _matched_ious(reference: Segmentation, fast: Segmentation) -> np.ndarray:
    """Per reference mask, its best IoU with any fast mask."""
    ref = np.stack([reference.mask(k) for k in range(reference.n_masks)]).reshape(reference.n_masks, -1)
    ours = np.stack([fast.mask(k) for k in range(fast.n_masks)]).reshape(fast.n_masks, -1)
    inter = ref.astype(np.float32) @ ours.T.astype(np.float32)
    union = ref.sum(1)[:, None] + ours.sum(1)[None] - inter
    return (inter / np.maximum(union, 1)).max(axis=1)


def _compare(sam, image: np.ndarray, *, min_reference: int = 1, **settings) -> tuple[Segmentation, Segmentation]:
    settings.setdefault("device", "cpu")
    cfg = SegmentConfig(segmenter="sam", sam_model="tiny", **settings)
    reference = sam_segment(image, cfg, sam=sam)
    fast = FastMaskGenerator.from_sam(sam, cfg).generate(image)
    assert reference.n_masks >= min_reference, "test setup: too few reference masks to compare"
    assert abs(fast.n_masks - reference.n_masks) <= max(1, reference.n_masks // 10)
    assert np.median(_matched_ious(reference, fast)) >= 0.9
    assert np.median(_matched_ious(fast, reference)) >= 0.9
    return reference, fast


def test_matches_reference_on_random_tiny_sam_with_filters_off():
    # Plain random weights: IoU predictions < 0.2 and stability 0, so both score filters are disabled here.
    _compare(_tiny_sam(), _blurred_noise(96, 128), points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def test_matches_reference_on_scaled_tiny_sam_with_sammil_thresholds():
    # Logits x100 and IoU head +0.6 so SAM-MIL's 0.6/0.6 thresholds keep some masks and drop others.
    ref, fast = _compare(_scaled_tiny_sam(), _blurred_noise(96, 128), points_per_side=8)
    assert fast.segmenter == "sam_fast_tiny"
    assert ref.segmenter == "sam_tiny"
    assert fast.tissue_area_px == ref.tissue_area_px


def test_matches_reference_on_real_thumbnail(thumbnail):
    _compare(_scaled_tiny_sam(), thumbnail, points_per_side=8)
    _compare(_tiny_sam(1), thumbnail, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def test_matches_reference_with_many_masks_and_crops(thumbnail):
    sam = _disc_sam()
    ref, fast = _compare(sam, thumbnail[:160, :192].copy(), min_reference=15, points_per_side=8)
    # Same algorithm, same order: masks pair up one to one, every mask has a partner of IoU >= 0.99 both ways.
    from sammil_deploy.segment.compare import mask_agreement

    assert fast.n_masks == ref.n_masks
    assert mask_agreement(ref, fast).min_iou >= 0.99
    same = [np.array_equal(fast.mask(k), ref.mask(k)) for k in range(ref.n_masks)]
    assert np.mean(same) >= 0.9


def test_matches_reference_with_small_region_cleanup(thumbnail):
    _compare(_disc_sam(), thumbnail[:160, :192].copy(), min_reference=10, points_per_side=8, min_mask_region_area=60)


def test_cpu_encodes_one_crop_per_call_unless_asked(thumbnail):
    from sammil_deploy.segment.compare import mask_agreement

    sam = _disc_sam()
    cfg = SegmentConfig(segmenter="sam", sam_model="tiny", device="cpu", points_per_side=4, crop_n_layers=1)
    image = thumbnail[:160, :192].copy()
    outputs = {}
    for label, batch in (("default", None), ("batched", 5)):
        generator = FastMaskGenerator.from_sam(sam, cfg, encoder_batch_size=batch)
        sizes: list[int] = []

        def counted(images, encode=generator.encoder, sizes=sizes):
            sizes.append(len(images))
            return encode(images)

        generator.encoder = counted
        outputs[label] = generator.generate(image)
        # On a CPU a batch of crops only adds memory traffic: one crop a call, as upstream's SamPredictor.
        assert sizes == ([1] * 5 if batch is None else [5])
        assert outputs[label].profile["encoder_passes"] == 5
    assert mask_agreement(outputs["default"], outputs["batched"]).min_iou >= 0.99


def test_segment_image_switches_generator():
    image = _blurred_noise(96, 128)
    sam = _disc_sam()
    common = {"segmenter": "sam", "sam_model": "tiny", "device": "cpu", "points_per_side": 4}
    fast = segment_image(image, SegmentConfig(**common), sam=sam)
    reference = segment_image(image, SegmentConfig(generator="reference", **common), sam=sam)
    assert fast.segmenter == "sam_fast_tiny"
    assert fast.config["generator"] == "fast"
    assert reference.segmenter == "sam_tiny"


def test_mask_boxes_match_upstream():
    from segment_anything.utils.amg import batched_mask_to_box

    rng = np.random.default_rng(3)
    masks = torch.as_tensor(rng.random((40, 23, 31)) > 0.97)
    masks[5] = False  # an empty mask
    masks[6, 4:9, 2:30] = True
    assert torch.equal(mask_boxes(masks), batched_mask_to_box(masks))


def test_stability_and_boxes_match_upstream():
    from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(12, 8, 8, generator=gen)
    logits = torch.nn.functional.interpolate(logits[:, None], (45, 61), mode="bilinear")[:, 0] * 3
    logits[3] = -5.0  # empty at every cut: NaN stability and a zero box, as upstream
    stability, boxes = stability_and_boxes(logits, 0.0, 1.0)
    torch.testing.assert_close(stability, calculate_stability_score(logits, 0.0, 1.0), equal_nan=True)
    assert torch.equal(boxes, batched_mask_to_box(logits > 0.0))
    assert torch.isnan(stability[3])


@pytest.mark.parametrize(
    ("resized_hw", "crop_hw"), [((128, 96), (1024, 766)), ((96, 128), (600, 455)), ((128, 128), (128, 128))]
)
def test_windowed_upsampling_matches_postprocess_masks(resized_hw, crop_hw):
    from sammil_deploy.segment.upsample import CropUpsampler

    gen = torch.Generator().manual_seed(7)
    coarse = torch.randn(12, 1, 6, 6, generator=gen)
    low_res = torch.nn.functional.interpolate(coarse, (32, 32), mode="bilinear")[:, 0] * 10 - 8  # blobs
    low_res[2] = -5.0  # empty at every cut
    full = upscale_logits(low_res, 128, resized_hw, crop_hw)
    up = CropUpsampler(32, 128, resized_hw, crop_hw, torch.device("cpu"))
    windows = up.windows(low_res, -1.0)
    assert windows[2, 1] == windows[2, 0]
    assert (windows[:, 1] - windows[:, 0]).float().mean() < crop_hw[0]  # the windows do save work
    for k, (y0, y1, x0, x1) in enumerate(windows.tolist()):
        outside = torch.ones(crop_hw, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert not (full[k][outside] > -1.0).any()  # nothing above the loosest cut is missed
        if y1 > y0:
            got = up.logits(low_res[k], (y0, y1, x0, x1))
            torch.testing.assert_close(got, full[k, y0:y1, x0:x1], atol=1e-5, rtol=1e-6)
    stability, boxes = up.stability_and_boxes(low_res, 0.0, 1.0)
    ref_stability, ref_boxes = stability_and_boxes(full, 0.0, 1.0)
    torch.testing.assert_close(stability, ref_stability, equal_nan=True)
    assert torch.equal(boxes, ref_boxes)


@pytest.mark.parametrize(
    "case", ["interior", "spans_width", "spans_height", "corner", "small_outside", "all_small_islands"]
)
def test_remove_small_regions_in_box_matches_full_image(case):
    from segment_anything.utils.amg import remove_small_regions

    h, w, min_area = 40, 50, 12
    rng = np.random.default_rng(hash(case) % 1000)
    full = np.zeros((h, w), bool)
    region = {
        "interior": (slice(5, 30), slice(8, 40)),
        "spans_width": (slice(10, 30), slice(0, w)),
        "spans_height": (slice(0, h), slice(10, 35)),
        "corner": (slice(0, 25), slice(0, 30)),
        "small_outside": (slice(0, h), slice(0, w - 2)),  # outside is a 2 x 40 strip < min area... of 80 px
        "all_small_islands": (slice(10, 20), slice(10, 20)),
    }[case]
    full[region] = True
    noise = rng.random((h, w)) < (0.9 if case == "all_small_islands" else 0.08)
    full[region] ^= noise[region]  # holes and specks of a few pixels
    if case == "small_outside":
        min_area = 100
    expected, _ = remove_small_regions(full, min_area, mode="holes")
    expected, _ = remove_small_regions(expected, min_area, mode="islands")
    rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    crop, new_box, changed = remove_small_regions_in_box(full[box[1] : box[3], box[0] : box[2]], box, (h, w), min_area)
    got = np.zeros((h, w), bool)
    got[new_box[1] : new_box[3], new_box[0] : new_box[2]] = crop
    assert changed
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """The tiny SAM's encoder, its point decoder (scaled random SAM) and the disc stand-in, exported to ONNX.

    ``_scaled_tiny_sam()`` and ``_disc_sam()`` share the seed-0 tiny encoder, so one encoder file serves both.
    """
    pytest.importorskip("onnxruntime")
    from sammil_deploy.bench.maskgen import DiscPointDecoder
    from sammil_deploy.export import sam as sam_export
    from sammil_deploy.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("tiny_onnx")
    sam = _scaled_tiny_sam()
    size = sam.image_encoder.img_size
    embedding = torch.randn(1, 32, size // 16, size // 16)
    points = (torch.rand(5, 1, 2) * size, torch.ones(5, 1))
    export_onnx(
        sam.image_encoder,
        sam_export.encoder_spec(sam, "tiny", "random"),
        (torch.randn(2, 3, size, size),),
        out / "encoder.onnx",
    )
    spec = sam_export.decoder_spec(sam, "tiny", "random")
    export_onnx(sam_export.SamPointDecoder(sam), spec, (embedding, *points), out / "decoder.onnx")
    export_onnx(DiscPointDecoder(_disc_sam().mask_decoder), spec, (embedding, *points), out / "disc_decoder.onnx")
    return out


def _ort_generator(folder, decoder: str, cfg: SegmentConfig, **kwargs) -> FastMaskGenerator:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
        for name in ("encoder.onnx", decoder)
    ]
    return FastMaskGenerator.from_sessions(*sessions, cfg, 128, name="sam_fast_tiny_onnx", **kwargs)


@pytest.mark.slow
def test_onnxruntime_sessions_give_the_reference_masks(tiny_onnx, thumbnail):
    # ~30 s on the shared 2-core machine, most of it the torch.onnx exports of the tiny SAM.
    cfg = SegmentConfig(segmenter="sam", sam_model="tiny", device="cpu", points_per_side=8)
    fast = _ort_generator(tiny_onnx, "decoder.onnx", cfg).generate(thumbnail)
    reference = sam_segment(thumbnail, cfg, sam=_scaled_tiny_sam())
    assert fast.segmenter == "sam_fast_tiny_onnx"
    assert fast.n_masks == reference.n_masks >= 1
    assert np.median(_matched_ious(reference, fast)) >= 0.9


@pytest.mark.slow
def test_onnxruntime_generator_equals_torch_on_many_masks(tiny_onnx, thumbnail):
    from sammil_deploy.segment.compare import mask_agreement

    # SAM-MIL's generator settings (1 crop layer, downscale 2, 0.6/0.6) at a test-sized grid and image.
    cfg = SegmentConfig(segmenter="sam", sam_model="tiny", device="cpu", points_per_side=12)
    image = thumbnail[:200, :240].copy()
    sam = _disc_sam()
    ours_onnx = _ort_generator(tiny_onnx, "disc_decoder.onnx", cfg).generate(image)
    ours_torch = FastMaskGenerator.from_sam(sam, cfg).generate(image)
    reference = sam_segment(image, cfg, sam=sam)
    assert reference.n_masks >= 30, "test setup: the stand-in should give many masks"
    for candidate in (ours_onnx, ours_torch):
        agreement = mask_agreement(reference, candidate)
        assert agreement.n_candidate == agreement.n_reference
        assert agreement.min_iou >= 0.99, agreement


def _assert_identical(a: Segmentation, b: Segmentation) -> None:
    assert a.n_masks == b.n_masks
    np.testing.assert_array_equal(a.bbox_xyxy, b.bbox_xyxy)
    for k, (x, y) in enumerate(zip(a.crops, b.crops, strict=True)):
        np.testing.assert_array_equal(x, y, err_msg=f"mask {k}")


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_overlapped_decoder_gives_the_same_masks(backend, request, thumbnail):
    # The next prompt batch is decoded in a worker thread while this one is post-processed: same masks, same
    # order, and the profile's parts add up to the total.
    cfg = SegmentConfig(segmenter="sam", sam_model="tiny", device="cpu", points_per_side=12, points_per_batch=16)
    image = thumbnail[:200, :240].copy()
    if backend == "torch":
        sam = _disc_sam()
        serial, overlapped = (FastMaskGenerator.from_sam(sam, cfg, overlap_decoder=flag) for flag in (False, True))
    else:
        folder = request.getfixturevalue("tiny_onnx")
        serial, overlapped = (
            _ort_generator(folder, "disc_decoder.onnx", cfg, overlap_decoder=flag) for flag in (False, True)
        )
    a, b = serial.generate(image), overlapped.generate(image)
    assert a.n_masks >= 30, "test setup: the stand-in should give many masks"
    _assert_identical(a, b)
    for seg in (a, b):
        p = seg.profile
        assert p["decoder_calls"] == -(-144 // 16) + 4 * -(-36 // 16)  # 12x12 grid, then 6x6 on 4 crops
        assert p["total_s"] == pytest.approx(p["encoder_s"] + p["decoder_wait_s"] + p["postprocess_s"], abs=1e-3)
    assert a.profile["decoder_wait_s"] == pytest.approx(a.profile["decoder_s"], rel=0.2, abs=2e-3)


def test_one_generator_in_two_threads_keeps_each_profile(thumbnail):
    # infer segments slide k + 1 in a helper thread while slide k is segmented: one generator, two calls at once.
    from concurrent.futures import ThreadPoolExecutor

    cfg = SegmentConfig(segmenter="sam", sam_model="tiny", device="cpu", points_per_side=8, points_per_batch=8)
    generator = FastMaskGenerator.from_sam(_disc_sam(), cfg)
    images = [thumbnail[:160, :200].copy(), thumbnail[:96, :128].copy()]
    alone = [generator.generate(image) for image in images]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(generator.generate, images))
    for a, b in zip(alone, together, strict=True):
        _assert_identical(a, b)
        assert b.profile["decoder_prompts"] == 8 * 8 + 4 * 4 * 4
        assert b.profile["encoder_passes"] == 5


@pytest.mark.gpu
def test_matches_reference_on_cuda(thumbnail):
    sam = _disc_sam().to("cuda")
    _compare(sam, thumbnail, min_reference=15, points_per_side=16, device="cuda")


def test_no_mask_above_thresholds_gives_an_empty_valid_context(tmp_path):
    # Plain random weights: no mask passes SAM-MIL's 0.6/0.6. Upstream's generator then raises IndexError in its
    # crop NMS; every generator here returns no masks, and the slide gets a valid, empty spatial context.
    from sammil_deploy.features.bag import FeatureBag
    from sammil_deploy.features.store import read_bag, write_bag, write_official
    from sammil_deploy.pipeline.stages import spatial_context
    from sammil_deploy.segment import SamImage, assign_patches

    image = _blurred_noise(96, 128)
    sam = _tiny_sam()
    cfg = SegmentConfig(segmenter="sam", sam_model="tiny", device="cpu", points_per_side=4)
    sam_image = SamImage(image, (0, 0), 4.0, 0, 1.0, 4, (0, 0, 512, 384))
    coords = np.array([[0, 0], [128, 64], [256, 256]], np.int64)
    features = np.ones((3, 8), np.float32)
    for segmentation in (sam_segment(image, cfg, sam=sam), FastMaskGenerator.from_sam(sam, cfg).generate(image)):
        assert segmentation.n_masks == 0
        for mode in ("footprint", "official"):
            context = spatial_context(features, assign_patches(segmentation, sam_image, coords, 64, mode=mode))
            assert context.n_groups == 0
            assert (context.segment_id == -1).all()
            bag = FeatureBag("empty", coords, features, 64, 0, context=context)
            assert read_bag(write_bag(tmp_path / f"{mode}.h5", bag)).context.n_groups == 0
            write_official(tmp_path / f"{mode}_official.h5", bag)
