"""The ``outputs`` stage of ``infer``: heatmap PNG, GeoJSON tiles, optional feature HDF5, then the JSON report.

Every file is written atomically; the report goes last (it marks the slide done). If any write fails, the files
already written for the slide are removed, so a slide has either all its outputs or none.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sammil_deploy.features.bag import SpatialContext
    from sammil_deploy.patching import PatchGrid
    from sammil_deploy.pipeline.bundle import Bundle
    from sammil_deploy.pipeline.infer import InferConfig, SlideResult
    from sammil_deploy.pipeline.models import SlideModels
    from sammil_deploy.segment import Segmentation
    from sammil_deploy.slide import SlideReader


def write_outputs(
    path: Path,
    out_dir: Path,
    bundle: Bundle,
    cfg: InferConfig,
    models: SlideModels,
    *,
    reader: SlideReader,
    grid: PatchGrid,
    features: np.ndarray,
    context: SpatialContext,
    segmentation: Segmentation,
    head: dict[str, np.ndarray],
    timer_seconds: dict[str, float],
    start: float,
) -> SlideResult:
    """Render and write one slide's outputs; ``timer_seconds["outputs"]`` is filled in by the caller's timer.

    Args:
        path: Slide file.
        out_dir: Output root.
        bundle: The bundle (classes, threshold, encoder facts, preprocessing).
        cfg: Runtime config (heatmap scaling, save_features).
        models: Loaded networks (their labels go into the report).
        reader: The open slide (for the thumbnail).
        grid: The slide's patches.
        features: (N, D) float32 patch features.
        context: Segments and group tokens.
        segmentation: The masks (count, segmenter config).
        head: MIL backend outputs ``logits (C,)``, ``probabilities (C,)``, ``attention (N + G,)``.
        timer_seconds: Stage timings so far (the report gets them, plus the outputs stage itself).
        start: ``time.perf_counter()`` at the slide's start.
    """
    from sammil_deploy.features.bag import FeatureBag
    from sammil_deploy.features.engine import resize_place
    from sammil_deploy.features.store import write_bag
    from sammil_deploy.pipeline.extract import features_path_for
    from sammil_deploy.pipeline.geojson import patch_tiles_geojson, write_geojson
    from sammil_deploy.pipeline.infer import SlideResult, config_snapshot, output_path
    from sammil_deploy.pipeline.report import write_json_atomic
    from sammil_deploy.pipeline.stages import bag_attrs
    from sammil_deploy.viz.heatmap import render_heatmap, scale_attention
    from sammil_deploy.viz.preview import write_png
    from sammil_deploy.viz.report_assets import machine_summary, write_report_assets

    outputs_start = time.perf_counter()
    info = reader.info
    n = len(grid)
    attention = np.asarray(head["attention"], np.float32)
    patch_attention = attention[:n]
    probabilities = [float(p) for p in head["probabilities"]]
    display = scale_attention(patch_attention, cfg.heatmap_scaling)
    rank = scale_attention(patch_attention, "rank")
    report = _report(path, bundle, cfg, models, info, grid, context, segmentation, head, probabilities, rank)
    title = f"{info.slide_id}: {report['prediction']['label']} (p={max(probabilities):.3f})"

    paths = {kind: output_path(out_dir, path, kind) for kind in ("heatmap", "geojson", "report")}
    if cfg.save_features:
        paths["features"] = features_path_for(out_dir, path)
    written: list[Path] = []
    try:
        for target in paths.values():
            target.parent.mkdir(parents=True, exist_ok=True)
        thumbnail = reader.thumbnail(cfg.heatmap_max_size_px)
        image = render_heatmap(
            thumbnail, info.dimensions_wh, grid.coords_level0_xy, grid.patch_size_level0_px, display,
            title=title, scaling=cfg.heatmap_scaling,
        )  # fmt: skip
        written.append(write_png(paths["heatmap"], image))
        tiles = patch_tiles_geojson(
            grid.coords_level0_xy, grid.patch_size_level0_px, patch_attention, rank,
            context.segment_id, context.segment_area_px, slide_id=info.slide_id,
        )  # fmt: skip
        written.append(write_geojson(paths["geojson"], tiles))
        assets, asset_files = write_report_assets(
            out_dir, reader, thumbnail, grid.coords_level0_xy, grid.patch_size_level0_px, display,
            context.segment_id, report["attention"]["top_patches"],
        )  # fmt: skip
        written.extend(asset_files)
        if cfg.save_features:
            attrs = bag_attrs(
                encoder_meta={**bundle.encoder, "weights_source": str(bundle.encoder_weights)},
                interpolation=bundle.encoder["interpolation"], precision=cfg.precision,
                extract_config=bundle.manifest["preprocess"], info=info, grid=grid,
                segmenter_config=segmentation.config, membership=bundle.preprocess.segment.membership,
                feature_backend=models.stage_backends.get("features", "unknown"), slide_reader=reader.name,
                resize_place=resize_place("auto", models.features.device),
            )  # fmt: skip
            bag = FeatureBag(
                slide_id=info.slide_id, coords_level0_xy=grid.coords_level0_xy, features=features,
                patch_size_level0_px=grid.patch_size_level0_px, patch_level=grid.patch_level, context=context,
                attrs=attrs,
            )  # fmt: skip
            written.append(write_bag(paths["features"], bag))
        stage_seconds = {**timer_seconds, **sam_seconds(segmentation), "outputs": time.perf_counter() - outputs_start}
        total = time.perf_counter() - start
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
    return SlideResult(
        slide_id=info.slide_id,
        report=report,
        paths=paths,
        attention=attention,
        stage_seconds=stage_seconds,
        seconds=total,
    )


def _report(
    path: Path,
    bundle: Bundle,
    cfg: InferConfig,
    models: SlideModels,
    info: Any,
    grid: PatchGrid,
    context: SpatialContext,
    segmentation: Segmentation,
    head: dict[str, np.ndarray],
    probabilities: list[float],
    rank: np.ndarray,
) -> dict[str, Any]:
    from sammil_deploy.mil.threshold import threshold_fields
    from sammil_deploy.pipeline.report import REPORT_SCHEMA_VERSION, decision_threshold, predict_label

    n = len(grid)
    names = bundle.class_names
    threshold = decision_threshold(bundle.decision_threshold, cfg.threshold)
    label, index = predict_label(head["logits"], names, threshold)
    attention = np.asarray(head["attention"], np.float64)
    top = np.argsort(-attention[:n], kind="stable")[: cfg.top_k]
    groups = attention[n:]
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "slide": {
            "slide_id": info.slide_id,
            "path": str(Path(path).resolve()),
            "width_px": info.dimensions_wh[0],
            "height_px": info.dimensions_wh[1],
            "mpp": info.mpp,
            "mpp_source": info.mpp_source,
            "level_count": info.level_count,
        },
        "prediction": {
            "label": label,
            "label_index": index,
            "probabilities": dict(zip(names, probabilities, strict=True)),
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
            "read_size_px": grid.patch_size_px,
        },
        "attention": {
            "sum_patches": float(attention[:n].sum()),
            "sum_group_tokens": float(groups.sum()),
            "top_patches": [
                {
                    "row": int(i),
                    "x_level0": int(grid.coords_level0_xy[i, 0]),
                    "y_level0": int(grid.coords_level0_xy[i, 1]),
                    "attention": float(attention[i]),
                    "rank": float(rank[i]),
                    "segment_id": int(context.segment_id[i]),
                }
                for i in top
            ],
        },
        "segmenter": segmentation.segmenter,
        "backends": {"requested": cfg.backend, **models.stage_backends},
        "bundle": bundle.describe(),
        "versions": _versions(cfg.backend),
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


def _versions(backend: str) -> dict[str, str]:
    """Toolkit, Python and the numerical libraries that shape the numbers (plus the backend's runtime)."""
    from importlib import metadata

    import torch

    from sammil_deploy import __version__

    versions = {
        "sammil_deploy": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    if backend != "torch":
        for dist in {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "tensorrt": ("tensorrt",)}[backend]:
            try:
                versions[backend] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions
