"""Benchmark results: rows, speed-ups measured in the same run, derived ratios, and their renderings.

A :class:`BenchmarkResult` is one (component, backend, precision, size) measurement with a status: ``ok``
(timed), ``failed`` (the backend raised; the reason says what) or ``unavailable`` (the backend cannot run
here: no GPU, no TensorRT, provider missing). Rows of one component and size form a group; the group's
reference row (PyTorch eager FP32 for models, the CLAM-style loop for extraction) gives every other row its
speed-up, as a ratio of throughputs measured in the same run. A :class:`BenchmarkReport` adds the environment,
the suite config and derived ratios (pipeline vs reading floor, vs model only), and is written as JSON to an
explicit path, rendered as a rich table for the terminal, or as markdown for committed summaries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sammil_deploy.bench.timing import TimingStats, items_per_s
from sammil_deploy.environment import hardware_label
from sammil_deploy.errors import ConfigError
from sammil_deploy.io_atomic import write_text

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "unavailable")


@dataclass(frozen=True)
class BenchmarkResult:
    """One measured (or not measurable) configuration.

    Attributes:
        component: ``sam_encoder``, ``mask_generation``, ``resnet50``, ``mil``, ``reading``, ``extraction`` or
            ``end_to_end``.
        backend: What ran it (``torch``, ``torch-compile``, ``ort-cpu``, ``ort-cuda``, ``ort-trt``,
            ``tensorrt``, ``openslide``, ``clam-style``, ``ours``, ...), with details such as workers.
        precision: ``fp32``, ``bf16``, ``fp16``, ``int8`` or ``-`` where it does not apply.
        size: The sweep point in words (``batch 8``, ``10000 instances``, ``64 patches``).
        items_per_call: Items one timed call processes (images, patches, instances, regions).
        unit: What an item is (``images``, ``patches``, ``instances``, ``regions``).
        status: ``ok``, ``failed`` or ``unavailable``.
        reason: Why a row is not ``ok`` (empty otherwise).
        timing: Latency statistics of one call (``ok`` rows only).
        device: Where it ran (``cpu``, ``cuda:0``).
        reference: This row is its group's speed-up reference.
        speedup: Throughput / the reference row's throughput (``None`` without an ``ok`` reference).
        notes: Free-form details (I/O placement, parity against the reference, worker counts).
    """

    component: str
    backend: str
    precision: str
    size: str
    items_per_call: float
    unit: str
    status: str = "ok"
    reason: str = ""
    timing: TimingStats | None = None
    device: str = "cpu"
    reference: bool = False
    speedup: float | None = None
    notes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError(f"benchmark status must be one of {STATUSES}, got {self.status!r}")
        if self.status == "ok" and self.timing is None:
            raise ConfigError(f"{self.label}: an ok row needs timing statistics")
        if self.status != "ok" and not self.reason:
            raise ConfigError(f"{self.label}: a {self.status} row needs a reason")

    @property
    def label(self) -> str:
        """``"resnet50 ort-cpu fp32 batch 8"``."""
        return f"{self.component} {self.backend} {self.precision} {self.size}"

    @property
    def group(self) -> tuple[str, str]:
        """Rows sharing (component, size) are compared with each other."""
        return self.component, self.size

    @property
    def items_per_s(self) -> float | None:
        """Throughput at the median latency (``None`` unless ``ok``)."""
        return items_per_s(self.items_per_call, self.timing) if self.timing is not None else None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (``items_per_s`` included for readers that do not recompute it)."""
        return {
            "component": self.component,
            "backend": self.backend,
            "precision": self.precision,
            "size": self.size,
            "items_per_call": self.items_per_call,
            "unit": self.unit,
            "status": self.status,
            "reason": self.reason,
            "timing": self.timing.to_dict() if self.timing else None,
            "items_per_s": None if self.items_per_s is None else round(self.items_per_s, 4),
            "device": self.device,
            "reference": self.reference,
            "speedup": None if self.speedup is None else round(self.speedup, 4),
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkResult:
        """Inverse of :meth:`to_dict` (``items_per_s`` is recomputed from the timing)."""
        timing = data.get("timing")
        return cls(
            component=data["component"],
            backend=data["backend"],
            precision=data["precision"],
            size=data["size"],
            items_per_call=data["items_per_call"],
            unit=data["unit"],
            status=data["status"],
            reason=data.get("reason", ""),
            timing=TimingStats.from_dict(timing) if timing else None,
            device=data.get("device", "cpu"),
            reference=bool(data.get("reference", False)),
            speedup=data.get("speedup"),
            notes=dict(data.get("notes") or {}),
        )


def unavailable(component: str, backend: str, precision: str, size: str, unit: str, reason: str) -> BenchmarkResult:
    """A row for a backend that cannot run here (no GPU, no TensorRT, provider missing)."""
    return BenchmarkResult(component, backend, precision, size, 0, unit, status="unavailable", reason=reason)


def failed(component: str, backend: str, precision: str, size: str, unit: str, reason: str) -> BenchmarkResult:
    """A row for a backend that raised while loading or running."""
    return BenchmarkResult(component, backend, precision, size, 0, unit, status="failed", reason=reason)


def with_speedups(results: Iterable[BenchmarkResult]) -> list[BenchmarkResult]:
    """Set each ``ok`` row's speed-up against its group's ``ok`` reference row (throughput ratio).

    Raises:
        ConfigError: If a group has more than one reference row.
    """
    rows = list(results)
    references: dict[tuple[str, str], BenchmarkResult] = {}
    for row in rows:
        if row.reference:
            if row.group in references:
                raise ConfigError(f"two reference rows for {row.group}: {references[row.group].label}, {row.label}")
            references[row.group] = row
    out = []
    for row in rows:
        ref = references.get(row.group)
        speedup = None
        if row.status == "ok" and ref is not None and ref.status == "ok" and ref.items_per_s:
            speedup = row.items_per_s / ref.items_per_s  # type: ignore[operator]
        out.append(replace(row, speedup=speedup))
    return out


@dataclass(frozen=True)
class Ratio:
    """A derived ratio of two throughputs measured in the run (e.g. pipeline / reading floor).

    Attributes:
        name: What it compares, in words.
        value: numerator / denominator.
        numerator: Label of the numerator row and its throughput.
        denominator: Label of the denominator row and its throughput.
    """

    name: str
    value: float
    numerator: str
    denominator: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "name": self.name,
            "value": round(self.value, 4),
            "numerator": self.numerator,
            "denominator": self.denominator,
        }


def ratio_of(name: str, numerator: BenchmarkResult | None, denominator: BenchmarkResult | None) -> Ratio | None:
    """Throughput ratio of two ``ok`` rows, or ``None`` if either is missing or not ``ok``."""
    if numerator is None or denominator is None or numerator.status != "ok" or denominator.status != "ok":
        return None
    num, den = numerator.items_per_s, denominator.items_per_s
    if not num or not den:
        return None
    return Ratio(
        name,
        num / den,
        f"{numerator.label}: {num:.2f} {numerator.unit}/s",
        f"{denominator.label}: {den:.2f} {denominator.unit}/s",
    )


@dataclass
class BenchmarkReport:
    """A whole benchmark run."""

    suite: str
    environment: dict[str, Any]
    config: dict[str, Any]
    results: list[BenchmarkResult] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def hardware(self) -> str:
        """One-line hardware label from the environment."""
        return hardware_label(self.environment)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "schema_version": SCHEMA_VERSION,
            "suite": self.suite,
            "hardware": self.hardware,
            "seconds": round(self.seconds, 2),
            "environment": self.environment,
            "config": self.config,
            "results": [r.to_dict() for r in self.results],
            "ratios": [r.to_dict() for r in self.ratios],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "report") -> BenchmarkReport:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: Unknown schema version or missing sections.
        """
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ConfigError(
                f"{source}: benchmark schema_version {data.get('schema_version')!r}, this version reads "
                f"{SCHEMA_VERSION}; rerun the benchmark with this version"
            )
        try:
            return cls(
                suite=data["suite"],
                environment=dict(data["environment"]),
                config=dict(data["config"]),
                results=[BenchmarkResult.from_dict(r) for r in data["results"]],
                ratios=[Ratio(**r) for r in data.get("ratios", [])],
                seconds=float(data.get("seconds", 0.0)),
            )
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{source}: not a benchmark report ({type(err).__name__}: {err})") from None


def write_json(report: BenchmarkReport, path: Path) -> Path:
    """Write ``report`` to ``path`` atomically (``.partial`` then rename); parent folders are created."""
    return _write_text(Path(path), json.dumps(report.to_dict(), indent=2, default=str) + "\n")


def read_json(path: Path) -> BenchmarkReport:
    """Read a report written by :func:`write_json`.

    Raises:
        ConfigError: Unreadable file or not a report of this schema.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read benchmark JSON ({err})") from None
    return BenchmarkReport.from_dict(data, source=str(path))


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


COLUMNS = (
    "component",
    "backend",
    "precision",
    "size",
    "status",
    "median ms",
    "p90 ms",
    "p99 ms",
    "items/s",
    "speed-up",
)


def table_rows(results: Sequence[BenchmarkResult]) -> list[list[str]]:
    """Cells of the results table, one list per row, in ``COLUMNS`` order."""
    rows = []
    for r in results:
        t = r.timing
        speed = "-" if r.speedup is None else ("1.00x (ref)" if r.reference else f"{r.speedup:.2f}x")
        rows.append(
            [
                r.component,
                r.backend,
                r.precision,
                r.size,
                r.status,
                _fmt(t.median_ms if t else None),
                _fmt(t.p90_ms if t else None),
                _fmt(t.p99_ms if t else None),
                "-" if r.items_per_s is None else f"{_fmt(r.items_per_s, 1)} {r.unit}",
                speed,
            ]
        )
    return rows


def render_table(report: BenchmarkReport) -> Any:
    """A rich ``Table`` of the results (status coloured), titled with the suite and the hardware."""
    from rich.table import Table

    table = Table(title=f"sammil-deploy benchmark {report.suite}: {report.hardware}", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col.endswith(("ms", "/s", "up")) else "left")
    colour = {"ok": "green", "failed": "red", "unavailable": "yellow"}
    previous = None
    for result, cells in zip(report.results, table_rows(report.results), strict=True):
        if previous is not None and result.component != previous:
            table.add_section()
        previous = result.component
        cells[4] = f"[{colour[result.status]}]{cells[4]}[/]"
        table.add_row(*cells)
    return table


def not_measured(results: Sequence[BenchmarkResult]) -> list[tuple[str, str]]:
    """``(rows, "status: reason")`` for non-ok rows, rows sharing component/backend/precision/reason merged."""
    merged: dict[tuple[str, str, str, str, str], list[str]] = {}
    for r in results:
        if r.status != "ok":
            merged.setdefault((r.component, r.backend, r.precision, r.status, r.reason), []).append(r.size)
    return [
        (f"{c} {b} {p} ({', '.join(sizes)})", f"{status}: {reason}")
        for (c, b, p, status, reason), sizes in merged.items()
    ]


def render_ratios(report: BenchmarkReport) -> Any:
    """A rich ``Table`` of the derived ratios and of the reasons of non-ok rows (``None`` if neither)."""
    from rich.table import Table

    skipped = not_measured(report.results)
    if not report.ratios and not skipped:
        return None
    table = Table("ratio / rows", "value / reason", title="derived ratios and rows not measured", title_justify="left")
    for ratio in report.ratios:
        table.add_row(ratio.name, f"{ratio.value:.3f}  ({ratio.numerator} / {ratio.denominator})")
    for rows, reason in skipped:
        table.add_row(rows, reason)
    return table


def to_markdown(report: BenchmarkReport) -> str:
    """The report as markdown: hardware and software, the results table, derived ratios, non-ok reasons."""
    env = report.environment
    version = env.get("sammil_deploy") or env.get("sammil_deploy_version")  # reports written before the one probe
    lines = [
        f"# Benchmark `{report.suite}`",
        "",
        f"- Hardware: **{report.hardware}**, {env.get('ram_gb')} GB RAM",
        f"- Software: sammil-deploy {version} (git {str(env.get('git_sha'))[:10]}"
        f"{', dirty tree' if env.get('git_dirty') else ''}), Python {env.get('python')}, torch {env.get('torch')} "
        f"({env.get('torch_threads')} threads), onnxruntime {env.get('onnxruntime')} "
        f"{env.get('onnxruntime_providers')}, TensorRT {env.get('tensorrt') or 'not installed'}, "
        f"CUDA {env.get('cuda_runtime') or '-'}, cuDNN {env.get('cudnn') or '-'}",
        f"- Run: {env.get('timestamp_utc')}, {report.seconds:.0f} s in all",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c.endswith(("ms", "/s", "up")) else "---" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report.results)]
    if report.ratios:
        lines += ["", "## Derived ratios", "", "| ratio | value | numerator | denominator |", "|---|---:|---|---|"]
        lines += [f"| {r.name} | {r.value:.3f} | {r.numerator} | {r.denominator} |" for r in report.ratios]
    lines += _stage_lines(report.results)
    skipped = not_measured(report.results)
    if skipped:
        lines += ["", "## Rows not measured", ""]
        lines += [f"- {rows}: {reason}" for rows, reason in skipped]
    return "\n".join(lines) + "\n"


def _stage_lines(results: Sequence[BenchmarkResult]) -> list[str]:
    """Markdown table of the rows that carry sub-stage medians (``notes["stage_median_s"]``), e.g. mask generation."""
    staged = [r for r in results if r.notes.get("stage_median_s")]
    if not staged:
        return []
    stages = list(staged[0].notes["stage_median_s"])
    lines = ["", "## Sub-stages (median s per call)", ""]
    lines += ["| component | backend | precision | masks | " + " | ".join(stages) + " |"]
    lines += ["|---|---|---|---:|" + "---:|" * len(stages)]
    for r in staged:
        cells = [r.component, r.backend, r.precision, str(r.notes.get("masks", "-"))]
        cells += [f"{r.notes['stage_median_s'].get(stage, float('nan')):.3f}" for stage in stages]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(report: BenchmarkReport, path: Path) -> Path:
    """Write :func:`to_markdown` to ``path`` atomically."""
    return _write_text(Path(path), to_markdown(report))


def _write_text(path: Path, text: str) -> Path:
    return write_text(path, text)
