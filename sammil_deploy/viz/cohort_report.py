"""``report.html``: one self-contained page per ``infer`` run, that opens from disk with no network.

Inline CSS/JS/SVG; pictures are relative links into the run folder.

Shown: the run's settings and versions, totals, time per stage and the distribution of P(class) as inline SVG
charts, and a sortable, filterable, paginated table of slides whose rows open the slide's attention and segment
pictures, top-attention patches, stage times and links to its JSON and GeoJSON. A Content-Security-Policy
forbids any request that is not to a local file.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

from sammil_deploy.io_atomic import write_text
from sammil_deploy.viz.cohort_data import STAGE_ORDER, CohortRun, load_run

REPORT_NAME = "report.html"
STAGE_COLOURS = dict(
    zip(STAGE_ORDER, ("#8da0b6", "#6aa5a0", "#c9a227", "#7b5ea7", "#1f5fbf", "#d0643b", "#4f9d4a"), strict=True)
)
CSP = "default-src 'none'; img-src file: data: 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
HIST_BINS = 20


def write_cohort_report(run_dir: Path) -> Path:
    """(Re)build ``<run_dir>/report.html`` from the run's summary and reports, atomically.

    Raises:
        ConfigError: ``run_dir`` is not an infer output folder.
    """
    run = load_run(run_dir)
    path = Path(run_dir) / REPORT_NAME
    return write_text(path, render_report(run))


def render_report(run: CohortRun) -> str:
    """The page's HTML for a loaded run."""
    from sammil_deploy import __version__
    from sammil_deploy.viz.report_static import CSS, JS

    payload = {"rows": run.rows, "positive": run.positive, "stageColours": STAGE_COLOURS}
    # "<" escaped, so no data (a slide id, an error message) can close the script element.
    data_json = json.dumps(payload, separators=(",", ":"), allow_nan=False, default=str).replace("<", "\\u003c")
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    esc = html.escape
    warning = (
        '<div class="warning" id="random-weights-warning"><b>Random encoder weights.</b> This run used a bundle '
        "whose ResNet50 has random weights (the demo bundle): its probabilities and attention show the machinery "
        "working, not pathology. Build a bundle with real encoder weights for real predictions.</div>"
        if run.random_weights
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cohort report · {esc(run.run_dir.name)}</title>
<style>{CSS}</style>
</head>
<body>
<header class="top"><h1>SAM-MIL cohort report</h1>
<span class="meta">run <code>{esc(str(run.run_dir))}</code> · {len(run.rows)} slides · built {created} by
sammil-deploy {esc(__version__)}</span></header>
<main>
{warning}
{_cards(run)}
<div class="grid2">
<section class="panel chart" id="stage-chart"><h2>Time per stage (all slides)</h2>{_stage_chart(run)}</section>
<section class="panel chart" id="prob-chart"><h2>P({esc(run.positive)}) over the cohort</h2>{_histogram(run)}</section>
</div>
<section class="panel"><h2>Slides</h2>
<div class="toolbar">
<input id="search" type="search" placeholder="Filter by slide id or error…" aria-label="filter">
<select id="status-filter" aria-label="status"><option value="">all statuses</option></select>
<select id="label-filter" aria-label="decision"><option value="">all decisions</option></select>
<select id="page-size" aria-label="rows per page"><option value="25">25 per page</option>
<option value="50" selected>50 per page</option><option value="100">100 per page</option>
<option value="250">250 per page</option><option value="0">all</option></select>
<span class="count" id="count"></span></div>
<div class="table-wrap"><table class="slides"><thead><tr id="slide-head"></tr></thead>
<tbody id="slide-rows"></tbody></table></div>
<div class="pager"><button id="prev" type="button">← previous</button><span id="page" class="muted"></span>
<button id="next" type="button">next →</button></div>
<p class="muted">Click a row for its attention map, segments, top-attention patches, stage times and files.</p>
</section>
<section class="panel"><details class="settings" open><summary>Run settings and versions</summary>
{_settings(run)}</details></section>
<footer>Self-contained page: every picture and file it links is inside the run folder.
Rebuild with <code>sammil-deploy report {esc(str(run.run_dir))}</code>.</footer>
</main>
<script id="report-data" type="application/json">{data_json}</script>
<script>{JS}</script>
</body>
</html>
"""


def _cards(run: CohortRun) -> str:
    ok = [r for r in run.rows if "probs" in r]
    failed = [r for r in run.rows if r["status"] == "failed"]
    positives = sum(1 for r in ok if r.get("label") == run.positive)
    seconds = sum(r.get("seconds") or 0 for r in ok)
    patches = sum(r.get("patches") or 0 for r in ok)
    median = sorted(r["seconds"] for r in ok if r.get("seconds") is not None)
    median_s = f"median {median[len(median) // 2]:.1f} s / slide" if median else ""
    cards = [
        ("Slides", f"{len(run.rows)}", f"{len(ok)} classified"),
        (f"Called {run.positive}", f"{positives}", f"of {len(ok)} classified"),
        ("Failed", f"{len(failed)}", "see the Error column" if failed else "none"),
        ("Slide time", f"{seconds:.1f} s", median_s),
        ("Throughput", f"{patches / seconds:.1f}" if seconds else "–", f"patches/s over {patches:,} patches"),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div>'
            f'<div class="s">{html.escape(s)}</div></div>'
            for k, v, s in cards
        )
        + "</div>"
    )


def _stage_chart(run: CohortRun) -> str:
    """A stacked bar of total seconds per stage, with a legend (seconds, share, mean per slide)."""
    total = sum(run.stage_seconds.values())
    if total <= 0:
        return '<p class="muted">No stage timings in this run.</p>'
    n = max(1, sum(1 for r in run.rows if r.get("stages")))
    x, rects, legend = 0.0, [], []
    for stage, seconds in run.stage_seconds.items():
        width = 1000 * seconds / total
        colour = STAGE_COLOURS.get(stage, "#999")
        rects.append(
            f'<rect x="{x:.2f}" y="0" width="{width:.2f}" height="36" fill="{colour}">'
            f"<title>{stage}: {seconds:.2f} s ({100 * seconds / total:.1f}%)</title></rect>"
        )
        x += width
        legend.append(
            f'<span><i style="background:{colour}"></i>{stage} {seconds:.1f} s · {100 * seconds / total:.0f}% '
            f"· {seconds / n:.2f} s/slide</span>"
        )
    return (
        f'<svg viewBox="0 0 1000 36" preserveAspectRatio="none" role="img" aria-label="time per stage">'
        f'{"".join(rects)}</svg><div class="legend">{"".join(legend)}</div>'
    )


def _histogram(run: CohortRun) -> str:
    """Slides per P(positive) bin (coloured by decision), with the decision threshold as a dashed line."""
    rows = [r for r in run.rows if isinstance(r.get("p"), (int, float))]
    if not rows:
        return '<p class="muted">No classified slides.</p>'
    w, h, pad = 600, 130, 18
    bins: list[list[dict[str, Any]]] = [[] for _ in range(HIST_BINS)]
    for r in rows:
        bins[min(HIST_BINS - 1, int(float(r["p"]) * HIST_BINS))].append(r)
    peak = max(len(b) for b in bins)
    bar_w = w / HIST_BINS
    parts = []
    for i, members in enumerate(bins):
        pos = sum(1 for r in members if r.get("label") == run.positive)
        y = h - pad
        for count, colour in ((len(members) - pos, "#1d7a55"), (pos, "#b4361f")):
            height = (h - 2 * pad) * count / peak
            if count:
                parts.append(
                    f'<rect x="{i * bar_w + 2:.1f}" y="{y - height:.1f}" width="{bar_w - 4:.1f}" '
                    f'height="{height:.1f}" fill="{colour}"><title>{count} slides, P in '
                    f"[{i / HIST_BINS:.2f}, {(i + 1) / HIST_BINS:.2f})</title></rect>"
                )
            y -= height
    thresholds = {r["threshold"] for r in rows if r.get("threshold") is not None}
    if len(thresholds) == 1:
        tx = w * thresholds.pop()
        side = (-5, "end") if tx > 0.8 * w else (5, "start")  # keep the label inside the chart
        parts.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="4" y2="{h - pad}" stroke="#15263f" stroke-dasharray="6 4" '
            f'stroke-width="1.5"/><text x="{tx + side[0]:.1f}" y="14" font-size="12" fill="#15263f" '
            f'text-anchor="{side[1]}">threshold {tx / w:.3g}</text>'
        )
    ticks = "".join(
        f'<text x="{w * t:.0f}" y="{h - 3}" font-size="12" fill="#5d6b7c" text-anchor="{a}">{t:.1f}</text>'
        for t, a in ((0.0, "start"), (0.5, "middle"), (1.0, "end"))
    )
    axis = f'<line x1="0" x2="{w}" y1="{h - pad}" y2="{h - pad}" stroke="#c7d0db"/>'
    legend = (
        f'<div class="legend"><span><i style="background:#b4361f"></i>called {html.escape(run.positive)}</span>'
        f'<span><i style="background:#1d7a55"></i>called otherwise</span><span>peak bin: {peak} slides</span></div>'
    )
    svg = (
        f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="probability histogram">{axis}{"".join(parts)}{ticks}</svg>'
    )
    return svg + legend


def _settings(run: CohortRun) -> str:
    groups: dict[str, list[tuple[str, str]]] = {}
    for group, name, value in run.settings:
        groups.setdefault(group, []).append((name, value))
    if not groups:
        return '<p class="muted">No slide report in this run, so no settings to show.</p>'
    blocks = []
    for group, items in groups.items():
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in items)
        blocks.append(f"<div><h3>{html.escape(group)}</h3><table>{body}</table></div>")
    return f'<div class="settings-grid">{"".join(blocks)}</div>'
