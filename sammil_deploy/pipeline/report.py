"""Per-slide JSON report and the cohort's summary CSV.

The report (``reports/<slide_id>.json``) is the last file ``infer`` writes for a slide, atomically, so its
presence marks the slide done; a resumed run reads it back to fill the summary. Output paths inside it are
relative to the output folder, so an output folder can be moved.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sammil_deploy.errors import ConfigError
from sammil_deploy.io_atomic import write_json, write_text
from sammil_deploy.mil.threshold import Threshold, choose_threshold

REPORT_SCHEMA_VERSION = 1
SUMMARY_NAME = "summary.csv"
# Entries that differ between two runs on the same inputs (wall times, host-specific paths, the machine).
VOLATILE_KEYS = ("timings_s", "seconds", "patches_per_s", "created", "machine")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> Path:
    """``json.dumps(payload, indent=2, sort_keys=True)`` to ``path`` via ``path.partial`` + rename."""
    return write_json(path, payload)


def read_report(path: Path) -> dict[str, Any]:
    """A report written by :func:`write_json_atomic`.

    Raises:
        ConfigError: If it is unreadable (a report from another tool, or edited by hand).
    """
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable report ({err}); delete it to redo the slide") from None
    if not isinstance(report, dict) or "prediction" not in report:
        raise ConfigError(f"{path}: not an infer report; delete it to redo the slide")
    return report


def stable_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report without wall times: what two runs on the same slide, bundle and config must agree on."""
    return {k: v for k, v in report.items() if k not in VOLATILE_KEYS}


def predict_label(logits: Sequence[float], class_names: Sequence[str], threshold: Threshold | None) -> tuple[str, int]:
    """Decision: binary with a threshold → class 1 iff logit_1 - logit_0 >= threshold.margin; otherwise argmax.

    Deciding on logits keeps the order of saturated slides (P(1) = 1.0 in float for any margin above ~37).

    Returns:
        (class name, class index).
    """
    if threshold is not None and len(class_names) == 2:
        index = 1 if float(logits[1]) - float(logits[0]) >= threshold.margin else 0
    else:
        index = max(range(len(logits)), key=lambda i: logits[i])
    return class_names[index], index


def decision_threshold(recorded: Threshold | None, rule: str = "youden") -> Threshold | None:
    """The threshold ``infer`` applies: the bundle's recorded one (``youden``), or ``0.5`` / a probability."""
    if rule == "youden" or recorded is None:
        return recorded
    return choose_threshold(rule, np.zeros(0), np.zeros(0))


SUMMARY_BASE = ("slide_id", "slide", "status", "label", "threshold", "n_patches", "n_segments", "seconds")
SUMMARY_TAIL = ("report", "error_type", "detail")


def summary_rows(records: Sequence[dict[str, Any]], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One CSV row per slide from ``{"slide", "status", "report" (dict or None), "error_type", "detail"}``."""
    rows = []
    for rec in records:
        report = rec.get("report") or {}
        pred = report.get("prediction", {})
        probs = pred.get("probabilities", {})
        row = {
            "slide_id": Path(rec["slide"]).stem,
            "slide": str(rec["slide"]),
            "status": rec["status"],
            "label": pred.get("label", ""),
            "threshold": "" if pred.get("threshold") is None else pred["threshold"],
            "n_patches": report.get("counts", {}).get("patches", ""),
            "n_segments": report.get("counts", {}).get("segments", ""),
            "seconds": report.get("seconds", rec.get("seconds", "")),
            **{f"p_{name}": probs.get(name, "") for name in class_names},
            "report": rec.get("report_path") or "",
            "error_type": rec.get("error_type") or "",
            "detail": rec.get("detail") or "",
        }
        rows.append(row)
    return rows


def write_summary_csv(path: Path, rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> Path:
    """Write the summary CSV atomically; columns: base, ``p_<class>`` per class, report path, error."""
    columns = [*SUMMARY_BASE, *(f"p_{n}" for n in class_names), *SUMMARY_TAIL]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())
