"""The ``outputs`` stage of ``infer``: heatmap PNG, GeoJSON tiles, optional feature HDF5, then the JSON report.

Every file is written atomically; the report goes last (it marks the slide done). If any write fails, the files
already written for the slide are removed, so a slide has either all its outputs or none.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.environment import package_versions

if TYPE_CHECKING:
    from sammil_deploy.bundle import Bundle
    from sammil_deploy.pipeline.backends import SlideBackends
    from sammil_deploy.pipeline.infer_types import InferConfig, SlideInference, SlideResult
    from sammil_deploy.segment import Segmentation


def write_outputs(
    slide: SlideInference, out_dir: Path, bundle: Bundle, cfg: InferConfig, backends: SlideBackends
) -> SlideResult:
    """Render and write one slide's outputs; ``slide.stage_seconds["outputs"]`` is filled in by the caller's timer.

    Args:
        slide: The slide after the MIL head (reader, patches, features, segments, head outputs, timings).
        out_dir: Output root.
        bundle: The bundle (classes, threshold, encoder facts, preprocessing).
        cfg: Runtime config (heatmap scaling, save_features).
        backends: The opened backends (their labels go into the report).
    """
    from sammil_deploy.pipeline.extract import features_path_for
    from sammil_deploy.pipeline.infer_types import SlideResult, config_snapshot, output_path
    from sammil_deploy.pipeline.report import write_json_atomic
    from sammil_deploy.viz.heatmap import scale_attention
    from sammil_deploy.viz.report_assets import machine_summary

    outputs_start = time.perf_counter()
    n = len(slide.grid)
    attention = np.asarray(slide.head["attention"], np.float32)
    display = scale_attention(attention[:n], cfg.heatmap_scaling)
    rank = scale_attention(attention[:n], "rank")
    report = _report(slide, bundle, cfg, backends, rank)
    paths = {kind: output_path(out_dir, slide.path, kind) for kind in ("heatmap", "geojson", "report")}
    if cfg.save_features:
        paths["features"] = features_path_for(out_dir, slide.path)
    written: list[Path] = []
    try:
        for target in paths.values():
            target.parent.mkdir(parents=True, exist_ok=True)
        assets = _write_pictures(slide, out_dir, paths, report, display, rank, cfg, written)
        if cfg.save_features:
            written.append(_write_features(slide, paths["features"], bundle, cfg, backends))
        stage_seconds = {
            **slide.stage_seconds,
            **sam_seconds(slide.segmentation),
            "outputs": time.perf_counter() - outputs_start,
        }
        total = time.perf_counter() - slide.start
        report["timings_s"] = {k: round(v, 4) for k, v in stage_seconds.items()}
        report["seconds"] = round(total, 4)
        report["patches_per_s"] = {
            "features_stage": round(n / stage_seconds["features"], 2) if stage_seconds.get("features") else None,
            "end_to_end": round(n / total, 2) if total > 0 else None,
        }
        report["config"] = config_snapshot(bundle, cfg)
        report["outputs"] = {k: str(p.relative_to(out_dir)) for k, p in paths.items() if k != "report"}
        report["report_assets"] = assets  # pictures for the cohort report.html
        report["machine"] = machine_summary()
        write_json_atomic(paths["report"], report)  # last: marks the slide done
    except BaseException:
        for done in written:
            done.unlink(missing_ok=True)
        raise
    return SlideResult(slide_id=slide.reader.info.slide_id, report=report, paths=paths, attention=attention,
                       stage_seconds=stage_seconds, seconds=total)  # fmt: skip


def _write_pictures(
    slide: SlideInference,
    out_dir: Path,
    paths: dict[str, Path],
    report: dict[str, Any],
    display: np.ndarray,
    rank: np.ndarray,
    cfg: InferConfig,
    written: list[Path],
) -> dict[str, Any]:
    """Heatmap PNG, GeoJSON tiles and the cohort report's pictures; returns the report's ``report_assets``.

    Each file joins ``written`` as soon as it exists, so the caller can remove them all if a later write fails.
    """
    from sammil_deploy.viz.geojson import patch_tiles_geojson, write_geojson
    from sammil_deploy.viz.heatmap import OUTLINE_RGB, colormap_rgb, paint_patches, render_heatmap
    from sammil_deploy.viz.preview import write_png
    from sammil_deploy.viz.report_assets import write_report_assets

    info, grid, context = slide.reader.info, slide.grid, slide.context
    probabilities = report["prediction"]["probabilities"].values()
    title = f"{info.slide_id}: {report['prediction']['label']} (p={max(probabilities):.3f})"
    thumbnail = slide.reader.thumbnail(cfg.heatmap_max_size_px)
    painted, _, _ = paint_patches(
        thumbnail, info.dimensions_wh, grid.coords_level0_xy, grid.patch_size_level0_px, colormap_rgb(display),
        outline_rgb=OUTLINE_RGB,
    )  # fmt: skip
    image = render_heatmap(painted, title=title, scaling=cfg.heatmap_scaling)
    written.append(write_png(paths["heatmap"], image))
    patch_attention = np.asarray(slide.head["attention"], np.float32)[: len(grid)]
    tiles = patch_tiles_geojson(
        grid.coords_level0_xy, grid.patch_size_level0_px, patch_attention, rank,
        context.segment_id, context.segment_area_px, slide_id=info.slide_id,
    )  # fmt: skip
    written.append(write_geojson(paths["geojson"], tiles))
    assets, asset_files = write_report_assets(
        out_dir, slide.reader, thumbnail, grid.coords_level0_xy, grid.patch_size_level0_px, display,
        context.segment_id, report["attention"]["top_patches"],
    )  # fmt: skip
    written.extend(asset_files)
    return assets


def _write_features(
    slide: SlideInference, path: Path, bundle: Bundle, cfg: InferConfig, backends: SlideBackends
) -> Path:
    """The ``extract`` feature file of the slide (``save_features``): the same layout and attributes."""
    from sammil_deploy.features.bag import FeatureBag
    from sammil_deploy.features.engine import resize_place
    from sammil_deploy.features.store import write_bag
    from sammil_deploy.pipeline.stages import bag_attrs

    info, grid = slide.reader.info, slide.grid
    attrs = bag_attrs(
        encoder_meta={**bundle.encoder, "weights_source": str(bundle.encoder_weights)},
        interpolation=bundle.encoder["interpolation"], precision=cfg.precision,
        extract_config=bundle.manifest["preprocess"], info=info, grid=grid,
        segmenter_config=slide.segmentation.config, membership=bundle.preprocess.segment.membership,
        feature_backend=backends.stage_backends.get("features", "unknown"), slide_reader=slide.reader.name,
        resize_place=resize_place("auto", backends.features.device),
    )  # fmt: skip
    bag = FeatureBag(
        slide_id=info.slide_id, coords_level0_xy=grid.coords_level0_xy, features=slide.features,
        patch_size_level0_px=grid.patch_size_level0_px, patch_level=grid.patch_level, context=slide.context,
        attrs=attrs,
    )  # fmt: skip
    return write_bag(path, bag)


def _report(
    slide: SlideInference, bundle: Bundle, cfg: InferConfig, backends: SlideBackends, rank: np.ndarray
) -> dict[str, Any]:
    """The report's content before the outputs are written (prediction, counts, attention, provenance)."""
    from sammil_deploy.mil.threshold import threshold_fields
    from sammil_deploy.pipeline.report import REPORT_SCHEMA_VERSION, decision_threshold, predict_label

    info, grid, context, segmentation, head = (
        slide.reader.info,
        slide.grid,
        slide.context,
        slide.segmentation,
        slide.head,
    )
    n = len(grid)
    names = bundle.class_names
    threshold = decision_threshold(bundle.decision_threshold, cfg.threshold)
    label, index = predict_label(head["logits"], names, threshold)
    attention = np.asarray(head["attention"], np.float64)
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "slide": {
            "slide_id": info.slide_id,
            "path": str(Path(slide.path).resolve()),
            "width_px": info.dimensions_wh[0],
            "height_px": info.dimensions_wh[1],
            "mpp": info.mpp,
            "mpp_source": info.mpp_source,
            "level_count": info.level_count,
        },
        "prediction": {
            "label": label,
            "label_index": index,
            "probabilities": dict(zip(names, (float(p) for p in head["probabilities"]), strict=True)),
            "logits": [float(v) for v in head["logits"]],
            **threshold_fields(threshold if len(names) == 2 else None),
            "decision": threshold.describe(names) if threshold is not None and len(names) == 2 else "argmax",
        },
        "counts": {
            "patches": n,
            "masks": segmentation.n_masks,
            "segments": context.n_groups,
            "instances": int(len(attention)),
            "patches_in_no_segment": int((context.segment_id < 0).sum()),
            **sam_counts(segmentation),
        },
        "patch": {
            "size_level0_px": grid.patch_size_level0_px,
            "level": grid.patch_level,
            "read_size_px": grid.read_size_px,
        },
        "attention": _attention_section(attention, slide, rank, cfg.top_k),
        "segmenter": segmentation.segmenter,
        "backends": {"requested": cfg.backend, **backends.stage_backends},
        "bundle": bundle.describe(),
        "versions": package_versions(),
    }


def _attention_section(attention: np.ndarray, slide: SlideInference, rank: np.ndarray, top_k: int) -> dict[str, Any]:
    """Attention sums over patches and group tokens, and the ``top_k`` most-attended patches."""
    n = len(slide.grid)
    top = np.argsort(-attention[:n], kind="stable")[:top_k]
    return {
        "sum_patches": float(attention[:n].sum()),
        "sum_group_tokens": float(attention[n:].sum()),
        "top_patches": [
            {
                "row": int(i),
                "x_level0": int(slide.grid.coords_level0_xy[i, 0]),
                "y_level0": int(slide.grid.coords_level0_xy[i, 1]),
                "attention": float(attention[i]),
                "rank": float(rank[i]),
                "segment_id": int(slide.context.segment_id[i]),
            }
            for i in top
        ],
    }


def sam_seconds(segmentation: Segmentation) -> dict[str, float]:
    """The SAM generator's sub-stages inside ``segmentation`` (encoder passes, decoder prompts, post-processing).

    ``sam_decoder`` is the decoder calls' own time, ``sam_decoder_wait`` what they added to the segmentation time
    (less when the generator overlaps decoding with post-processing).
    """
    keys = {
        "encoder_s": "sam_encoder",
        "decoder_s": "sam_decoder",
        "decoder_wait_s": "sam_decoder_wait",
        "postprocess_s": "sam_postprocess",
    }
    return {
        f"segmentation.{name}": float(segmentation.profile[k]) for k, name in keys.items() if k in segmentation.profile
    }


def sam_counts(segmentation: Segmentation) -> dict[str, int]:
    """SAM's work for this slide: encoder passes (crops) and decoder prompts (points), when SAM ran."""
    keys = {"encoder_passes": "sam_encoder_passes", "decoder_prompts": "sam_decoder_prompts"}
    return {name: int(segmentation.profile[k]) for k, name in keys.items() if k in segmentation.profile}
