"""Summarise a GPU validation kit run (``benchmarks/gpu/run.sh``): ``OUT/summary.json`` and ``OUT/summary.md``.

Collects the step table (budget, seconds, exit code, status), the machine (``nvidia-smi``, ``doctor``), the
gpu-marked test counts (JUnit XML) and the Markdown of each benchmark part, so one file says what ran, what
was unavailable and why, and what failed.

    python benchmarks/gpu/report.py OUT
"""

from __future__ import annotations

import csv
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

PARTS = ("bench-models.md", "bench-maskgen.md", "e2e/e2e.md")


def _steps(out: Path) -> list[dict[str, Any]]:
    path = out / "steps.tsv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _tests(out: Path) -> dict[str, int] | None:
    path = out / "gpu-tests.xml"
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def main(argv: list[str] | None = None) -> int:
    """Write the summary; exit 2 when OUT is not a kit output folder."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or not (Path(args[0]) / "steps.tsv").is_file():
        sys.stderr.write("usage: report.py OUT  (OUT: the folder benchmarks/gpu/run.sh wrote, with steps.tsv)\n")
        return 2
    out = Path(args[0])
    doctor_text = _read(out / "doctor.json")
    try:
        doctor = json.loads(doctor_text) if doctor_text else None
    except json.JSONDecodeError:
        doctor = None
    summary = {
        "commit": _read(out / "commit.txt").strip(),
        "nvidia_smi": _read(out / "nvidia-smi.txt"),
        "doctor": doctor,
        "steps": _steps(out),
        "gpu_tests": _tests(out),
        "parts": {name: (out / name).is_file() for name in PARTS},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    lines = ["# GPU validation kit", "", f"commit `{summary['commit']}`", "", "```", summary["nvidia_smi"].strip()]
    lines += ["```", "", "| step | budget s | seconds | exit | status |", "|---|---|---|---|---|"]
    lines += [
        f"| {s['step']} | {s['budget_s']} | {s['seconds']} | {s['rc']} | {s['status']} |" for s in summary["steps"]
    ]
    tests = summary["gpu_tests"]
    lines += [
        "",
        "gpu/trt-marked tests: " + (", ".join(f"{k} {v}" for k, v in tests.items()) if tests else "no result"),
    ]
    for name in PARTS:
        text = _read(out / name)
        lines += ["", text.strip() if text else f"_{name}: not written (see logs/ and the step table)_"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
