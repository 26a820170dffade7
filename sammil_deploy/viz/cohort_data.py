"""An ``infer`` output folder read back for the cohort report: one row per slide, the run's settings, totals.

Sources: ``summary.csv`` (every slide, failures with their reason) and ``reports/<id>.json`` (the details).
Reports are read defensively: a field a newer or older toolkit does not write is shown as missing, never an
error; a report missing from the summary (an interrupted run) still gets its row. Paths in rows are relative to
the run folder and URL-quoted, so the page works wherever the folder is moved.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sammil_deploy.errors import ConfigError

REPORTS_DIR = "reports"
SUMMARY_NAME = "summary.csv"
# The pipeline's stages, in order (pipeline.infer.STAGES); other numeric timings are listed, not stacked.
STAGE_ORDER = ("open", "tissue", "patching", "segmentation", "features", "mil", "outputs")
OK_STATUSES = ("done", "skipped")


@dataclass
class CohortRun:
    """What the report shows.

    Attributes:
        run_dir: The infer output folder.
        rows: One JSON-able dict per slide (see :func:`slide_row`), in summary order.
        class_names: Class names (the last one is the "positive" class shown as P(class)).
        settings: ``[(group, name, value text)]``; a value that differs between slides lists each with its count.
        random_weights: Any slide was classified by an encoder with random weights.
        stage_seconds: Total seconds per pipeline stage over the slides that ran.
    """

    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    class_names: tuple[str, ...] = ()
    settings: list[tuple[str, str, str]] = field(default_factory=list)
    random_weights: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def positive(self) -> str:
        """The class whose probability the table shows."""
        return self.class_names[-1] if self.class_names else "positive"


def load_run(run_dir: Path) -> CohortRun:
    """Read an ``infer`` output folder.

    Raises:
        ConfigError: The folder has neither ``summary.csv`` nor ``reports/*.json``.
    """
    run_dir = Path(run_dir)
    summary = run_dir / SUMMARY_NAME
    report_files = sorted((run_dir / REPORTS_DIR).glob("*.json"))
    if not summary.is_file() and not report_files:
        raise ConfigError(
            f"{run_dir}: not an infer output folder (no {SUMMARY_NAME}, no {REPORTS_DIR}/*.json); "
            "pass the --out folder of `sammil-deploy infer`"
        )
    entries = _summary_entries(summary) if summary.is_file() else []
    listed = {e["slide_id"] for e in entries}
    entries += [{"slide_id": p.stem, "status": "done"} for p in report_files if p.stem not in listed]
    reports = {e["slide_id"]: _read_report(run_dir, e) for e in entries}
    class_names = _class_names(reports.values(), entries)
    run = CohortRun(run_dir, class_names=class_names)
    run.rows = [slide_row(e, reports[e["slide_id"]], class_names) for e in entries]
    good = [r for r in reports.values() if isinstance(r, dict)]
    run.settings = run_settings(good)
    run.random_weights = any(_get(r, "bundle", "encoder_random_weights") for r in good)
    for report in good:
        for stage, seconds in _numeric(report.get("timings_s")).items():
            if stage in STAGE_ORDER:
                run.stage_seconds[stage] = run.stage_seconds.get(stage, 0.0) + seconds
    run.stage_seconds = {s: run.stage_seconds[s] for s in STAGE_ORDER if s in run.stage_seconds}
    return run


def _summary_entries(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: unreadable summary ({err}); rerun `sammil-deploy infer` on the folder") from None
    return [{**row, "slide_id": row.get("slide_id") or Path(row.get("slide", "")).stem} for row in rows]


def _read_report(run_dir: Path, entry: dict[str, Any]) -> dict[str, Any] | str | None:
    """The slide's report, ``None`` when it has none (failed), or an error text when it cannot be read."""
    if entry.get("status") not in OK_STATUSES:
        return None
    path = run_dir / REPORTS_DIR / f"{entry['slide_id']}.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"unreadable report {path.name}: {err}"
    return report if isinstance(report, dict) else f"{path.name} is not an infer report"


def _class_names(reports: Any, entries: list[dict[str, Any]]) -> tuple[str, ...]:
    for report in reports:
        names = _get(report, "bundle", "class_names") if isinstance(report, dict) else None
        if names:
            return tuple(str(n) for n in names)
        probs = _get(report, "prediction", "probabilities") if isinstance(report, dict) else None
        if isinstance(probs, dict) and probs:
            return tuple(probs)
    return tuple(k[2:] for k in (entries[0] if entries else {}) if k.startswith("p_"))


def slide_row(entry: dict[str, Any], report: dict[str, Any] | str | None, class_names: tuple[str, ...]) -> dict:
    """One slide for the page: the table's columns, its timings, pictures, top patches and links."""
    sid = str(entry["slide_id"])
    row: dict[str, Any] = {"id": sid, "status": str(entry.get("status") or "unknown")}
    if not isinstance(report, dict):
        error = " ".join(x for x in (entry.get("error_type"), entry.get("detail")) if x)
        row["error"] = report if isinstance(report, str) else error or "no report"
        if isinstance(report, str):
            row["status"] = "failed"
        return row
    pred = report.get("prediction") if isinstance(report.get("prediction"), dict) else {}
    probs = _numeric(pred.get("probabilities"))
    positive = class_names[-1] if class_names else None
    counts = report.get("counts") if isinstance(report.get("counts"), dict) else {}
    outputs = report.get("outputs") if isinstance(report.get("outputs"), dict) else {}
    assets = report.get("report_assets") if isinstance(report.get("report_assets"), dict) else {}
    timings = _numeric(report.get("timings_s"))
    seconds = _number(report.get("seconds"))
    patches = _number(counts.get("patches"))
    row.update(
        label=pred.get("label"),
        p=probs.get(positive) if positive else None,
        probs=probs,
        threshold=_threshold(pred),
        threshold_note=_threshold_note(pred),
        decision=pred.get("decision"),
        patches=patches,
        segments=_number(counts.get("segments")),
        seconds=seconds,
        pps=_number(_get(report, "patches_per_s", "end_to_end")) or _ratio(patches, seconds),
        stages={k: timings[k] for k in STAGE_ORDER if k in timings},
        other_timings={k: v for k, v in timings.items() if k not in STAGE_ORDER},
        random=bool(_get(report, "bundle", "encoder_random_weights")),
        json=_url(f"{REPORTS_DIR}/{sid}.json"),
        geojson=_url(outputs.get("geojson")),
        heatmap=_url(outputs.get("heatmap")),
        att=_url(assets.get("attention")) or _url(outputs.get("heatmap")),
        seg=_url(assets.get("segments")),
        top=_top_patches(report, assets),
        mpp=_number(_get(report, "slide", "mpp")),
        size=[_number(_get(report, "slide", "width_px")), _number(_get(report, "slide", "height_px"))],
    )
    return row


def _top_patches(report: dict[str, Any], assets: dict[str, Any]) -> list[list[Any]]:
    """``[x_level0, y_level0, attention, segment_id, crop url or None]`` per top patch, best first."""
    top = _get(report, "attention", "top_patches")
    crops = assets.get("crops") if isinstance(assets.get("crops"), list) else []
    rows = []
    for i, patch in enumerate(top if isinstance(top, list) else []):
        if not isinstance(patch, dict):
            continue
        crop = _url(crops[i]) if i < len(crops) else None
        rows.append([_number(patch.get("x_level0")), _number(patch.get("y_level0")), _number(patch.get("attention")),
                     _number(patch.get("segment_id")), crop])  # fmt: skip
    return rows


def _threshold(pred: dict[str, Any]) -> float | None:
    """The decision threshold on P(class): a number, or the ``probability`` of a threshold stored as a dict."""
    threshold = pred.get("threshold")
    if isinstance(threshold, dict):
        threshold = threshold.get("probability")
    return _number(threshold)


def _threshold_note(pred: dict[str, Any]) -> str | None:
    """What else the report says about the threshold (its logit margin and rule, where recorded)."""
    extra = {k: pred.get(k) for k in ("threshold_margin", "threshold_rule") if pred.get(k) is not None}
    if isinstance(pred.get("threshold"), dict):
        extra.update({k: v for k, v in pred["threshold"].items() if k != "probability"})
    return ", ".join(f"{k.removeprefix('threshold_')} {_fmt(v)}" for k, v in extra.items()) or None


def run_settings(reports: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``[(group, name, value)]`` describing how the run was made; values that differ list each with its count."""
    fields = {
        ("Run", "backend"): ("backends", "requested"),
        ("Run", "device"): ("config", "infer", "device"),
        ("Run", "precision"): ("config", "infer", "precision"),
        ("Run", "batch size"): ("config", "infer", "batch_size"),
        ("Run", "reader workers"): ("config", "infer", "num_workers"),
        ("Run", "heatmap scaling"): ("config", "infer", "heatmap_scaling"),
        ("Stages", "features"): ("backends", "features"),
        ("Stages", "MIL head"): ("backends", "mil"),
        ("Stages", "segmentation"): ("backends", "segmentation"),
        ("Stages", "segmenter"): ("segmenter",),
        ("Bundle", "folder"): ("bundle", "path"),
        ("Bundle", "encoder"): ("bundle", "encoder"),
        ("Bundle", "encoder weights sha256"): ("bundle", "encoder_weights_sha256"),
        ("Bundle", "checkpoint sha256"): ("bundle", "checkpoint_sha256"),
        ("Bundle", "classes"): ("bundle", "class_names"),
        ("Bundle", "threshold"): ("prediction", "threshold"),
        ("Bundle", "threshold margin"): ("prediction", "threshold_margin"),
        ("Bundle", "threshold rule"): ("prediction", "threshold_rule"),
        ("Bundle", "decision"): ("prediction", "decision"),
        ("Bundle", "exported parts"): ("bundle", "artifacts"),
        ("Bundle", "built with"): ("bundle", "built_with"),
        ("Machine", "host"): ("machine", "hostname"),
        ("Machine", "hardware"): ("machine", "hardware"),
        ("Machine", "platform"): ("machine", "platform"),
    }
    settings = []
    for (group, name), keys in fields.items():
        text = _distinct([_get(r, *keys) for r in reports])
        if text:
            settings.append((group, name, text))
    libraries = sorted({k for r in reports for k in (_get(r, "versions") or {})})
    for lib in libraries:
        settings.append(("Versions", lib, _distinct([_get(r, "versions", lib) for r in reports])))
    return settings


def _distinct(values: list[Any]) -> str:
    texts = [_fmt(v) for v in values if v is not None and v != "" and v != []]
    counts = Counter(texts)
    if len(counts) <= 1:
        return next(iter(counts), "")
    return "; ".join(f"{v} ({n} slides)" for v, n in counts.most_common())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None  # NaN/inf (json allows them) become missing: the page's JSON must be strict
    return value


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _numeric(mapping: Any) -> dict[str, float]:
    if not isinstance(mapping, dict):
        return {}
    return {str(k): v for k, v in mapping.items() if _number(v) is not None}


def _url(path: Any) -> str | None:
    """A run-relative file path as a relative URL (``#``, ``%``, spaces and the like quoted)."""
    return quote(str(path).replace("\\", "/")) if isinstance(path, str) and path else None
