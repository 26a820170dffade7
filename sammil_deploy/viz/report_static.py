"""The cohort report's stylesheet and script, inlined into ``report.html`` (no network, no CDN, no build step).

The script reads the rows from the page's ``<script id="report-data" type="application/json">`` and renders one
page of the table at a time (sortable, filterable), so 1,000 slides stay quick; pictures load lazily.
"""

CSS = r"""
:root {
  --bg: #f4f6f9; --panel: #ffffff; --ink: #1b2430; --muted: #5d6b7c; --line: #dfe4ea;
  --accent: #1f5fbf; --pos: #b4361f; --neg: #1d7a55; --warn-bg: #fff4d6; --warn-line: #e0b23c;
  --fail: #b3261e; --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header.top { background: #15263f; color: #fff; padding: 18px 32px; display: flex; flex-wrap: wrap;
  align-items: baseline; gap: 8px 24px; }
header.top h1 { margin: 0; font-size: 20px; font-weight: 600; letter-spacing: .2px; }
header.top .meta { color: #b9c6d8; font-size: 13px; }
header.top .meta code { color: #e4ebf5; }
main { max-width: 1360px; margin: 0 auto; padding: 20px 32px 48px; }
.warning { background: var(--warn-bg); border: 1px solid var(--warn-line); border-left-width: 5px;
  padding: 10px 14px; border-radius: 6px; margin-bottom: 16px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; margin-bottom: 16px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .4px; }
.card .v { font-size: 24px; font-weight: 600; margin-top: 2px; }
.card .s { color: var(--muted); font-size: 12px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; margin-bottom: 16px; }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } }
section.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px;
  margin-bottom: 16px; }
section.panel h2 { font-size: 15px; margin: 0 0 10px; font-weight: 600; }
.chart svg { width: 100%; height: auto; display: block; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin-top: 8px; font-size: 12px; color: var(--muted); }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px;
  vertical-align: -1px; }
details.settings summary { cursor: pointer; font-weight: 600; font-size: 15px; }
.settings-grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 4px 28px;
  margin-top: 10px; }
.settings-grid h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .4px; color: var(--muted);
  margin: 10px 0 4px; }
.settings-grid table { border-collapse: collapse; width: 100%; }
.settings-grid td { padding: 3px 0; vertical-align: top; border-bottom: 1px solid #eef1f4; font-size: 13px; }
.settings-grid td:first-child { color: var(--muted); width: 38%; padding-right: 10px; }
.settings-grid td:last-child { font-family: var(--mono); font-size: 12px; word-break: break-all; }
.toolbar { display: flex; flex-wrap: wrap; gap: 8px 12px; align-items: center; margin-bottom: 10px; }
.toolbar input, .toolbar select { font: inherit; padding: 5px 8px; border: 1px solid #c7d0db; border-radius: 6px;
  background: #fff; }
.toolbar input { min-width: 240px; }
.toolbar .count { color: var(--muted); margin-left: auto; }
table.slides { width: 100%; border-collapse: collapse; font-size: 13px; }
/* Narrow windows scroll the table sideways (wide ones keep the page-sticky header). */
@media (max-width: 1100px) { .table-wrap { overflow-x: auto; } }
table.slides th { position: sticky; top: 0; background: #eef2f7; text-align: left; font-weight: 600;
  padding: 7px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; user-select: none; z-index: 1; }
table.slides th.sortable { cursor: pointer; }
table.slides th.sortable:hover { background: #e2e8f1; }
table.slides th .arrow { color: var(--accent); margin-left: 4px; }
table.slides td { padding: 6px 8px; border-bottom: 1px solid #edf0f3; vertical-align: middle; }
table.slides td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.slides tr.row { cursor: pointer; }
table.slides tr.row:hover td { background: #f6f9fd; }
table.slides tr.row.open td { background: #eef4fc; }
table.slides img.thumb { height: 48px; max-width: 72px; object-fit: contain; border-radius: 3px;
  background: #f0f0f0; display: block; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  white-space: nowrap; }
.badge.done { background: #e3f4ea; color: #176c45; }
.badge.skipped { background: #e8eef6; color: #3b5a85; }
.badge.failed { background: #fbe4e2; color: var(--fail); }
.label { font-weight: 600; }
.label.pos { color: var(--pos); }
.label.neg { color: var(--neg); }
.pbar { display: inline-block; width: 60px; height: 6px; background: #e6eaef; border-radius: 3px;
  margin-left: 8px; vertical-align: middle; position: relative; overflow: hidden; }
.pbar { overflow: visible; }
.pbar b { position: absolute; left: 0; top: 0; bottom: 0; background: var(--neg); border-radius: 3px; }
.pbar.pos b { background: var(--pos); }
.pbar i { position: absolute; top: -3px; bottom: -3px; width: 2px; margin-left: -1px; background: #15263f; }
.err { color: var(--fail); font-size: 12px; max-width: 420px; }
.mono { font-family: var(--mono); font-size: 12px; }
.pager { display: flex; gap: 6px; align-items: center; justify-content: flex-end; margin-top: 10px; }
.pager button { font: inherit; padding: 4px 10px; border: 1px solid #c7d0db; background: #fff; border-radius: 6px;
  cursor: pointer; }
.pager button:disabled { opacity: .45; cursor: default; }
tr.detail > td { background: #fafbfd; padding: 14px 16px 18px; }
.detail-grid { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 20px; }
.views { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; margin-bottom: 8px; }
@media (max-width: 1000px) { .detail-grid { grid-template-columns: 1fr; } }
.detail h4 { margin: 4px 0 8px; font-size: 13px; }
figure { margin: 0; }
figure img.view { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
.ramp { display: inline-block; width: 90px; height: 8px; border-radius: 2px; vertical-align: middle;
  background: linear-gradient(90deg, #00007f, #0000ff, #007fff, #00ffff, #7fff7f, #ffff00, #ff7f00, #ff0000,
  #7f0000); }
.crops { display: grid; grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); gap: 8px; }
.crops figure img { width: 100%; aspect-ratio: 1; object-fit: cover; border-radius: 4px;
  border: 1px solid var(--line); }
.crops figcaption { font-family: var(--mono); font-size: 11px; line-height: 1.3; }
.stagebar { display: flex; height: 14px; border-radius: 3px; overflow: hidden; background: #e6eaef;
  margin: 6px 0 4px; }
.stagebar span { display: block; height: 100%; }
.facts { display: grid; grid-template-columns: auto 1fr; gap: 2px 12px; font-size: 13px; margin-top: 8px; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; }
.links a { margin-right: 14px; color: var(--accent); text-decoration: none; font-weight: 500; }
.links a:hover { text-decoration: underline; }
.muted { color: var(--muted); }
img.broken { outline: 2px dashed var(--fail); }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 24px; }
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var rows = data.rows, positive = data.positive, stageColours = data.stageColours;
  var state = { key: null, dir: 1, q: "", status: "", label: "", page: 0, size: 50, open: {} };
  var COLUMNS = [
    { key: "thumb", title: "", sortable: false },
    { key: "id", title: "Slide", type: "text" },
    { key: "label", title: "Decision", type: "text" },
    { key: "p", title: "P(" + positive + ")", type: "num" },
    { key: "threshold", title: "Threshold", type: "num" },
    { key: "patches", title: "Patches", type: "num" },
    { key: "segments", title: "Segments", type: "num" },
    { key: "seconds", title: "Seconds", type: "num" },
    { key: "pps", title: "Patches/s", type: "num" },
    { key: "status", title: "Status", type: "text" },
    { key: "error", title: "Error", type: "text" }
  ];
  var DIGITS = { threshold: 3, seconds: 2, pps: 1 };
  var STATUS_TEXT = { skipped: "done earlier" };
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "cls") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || v === "") return "";
    if (typeof v !== "number") return String(v);
    return digits === 0 ? Math.round(v).toLocaleString("en-US") : v.toFixed(digits);
  }
  function image(src, alt, cls) {
    var img = el("img", { src: src, alt: alt, loading: "lazy", decoding: "async", cls: cls || "" });
    img.addEventListener("error", function () { img.classList.add("broken"); img.title = "missing: " + src; });
    return img;
  }
  function compare(a, b) {
    var col = COLUMNS.filter(function (c) { return c.key === state.key; })[0];
    var x = a[state.key], y = b[state.key];
    var xMissing = x === null || x === undefined || x === "", yMissing = y === null || y === undefined || y === "";
    if (xMissing || yMissing) return xMissing === yMissing ? 0 : (xMissing ? 1 : -1);  // missing values last
    if (col.type === "num") return (x - y) * state.dir;
    return String(x).localeCompare(String(y), "en", { numeric: true }) * state.dir;
  }
  function visible() {
    var q = state.q.toLowerCase();
    var out = rows.filter(function (r) {
      if (state.status && r.status !== state.status) return false;
      if (state.label && r.label !== state.label) return false;
      return !q || r.id.toLowerCase().indexOf(q) >= 0 || (r.error || "").toLowerCase().indexOf(q) >= 0;
    });
    if (state.key) out.sort(compare);
    return out;
  }
  function cell(r, c) {
    var td = el("td");
    var v = r[c.key];
    if (c.key === "thumb") { if (r.att) td.appendChild(image(r.att, "attention of " + r.id, "thumb")); }
    else if (c.key === "id") td.appendChild(el("span", { cls: "mono", text: r.id }));
    else if (c.key === "label") {
      if (v) td.appendChild(el("span", { cls: "label " + (v === positive ? "pos" : "neg"), text: v }));
    } else if (c.key === "p") {
      td.className = "num";
      if (typeof v === "number") {
        td.appendChild(document.createTextNode(v.toFixed(3)));
        var bar = el("span", { cls: "pbar" + (r.label === positive ? " pos" : "") }, [el("b")]);
        bar.firstChild.style.width = (100 * Math.max(0, Math.min(1, v))) + "%";
        if (typeof r.threshold === "number") {  // a tick at the decision threshold
          var tick = el("i", { title: "threshold " + r.threshold });
          tick.style.left = (100 * r.threshold) + "%";
          bar.appendChild(tick);
        }
        td.appendChild(bar);
      }
    } else if (c.key === "status") {
      td.appendChild(el("span", { cls: "badge " + v, text: STATUS_TEXT[v] || v,
        title: v === "skipped" ? "finished by an earlier run of this folder (resumed)" : v }));
    }
    else if (c.key === "error") { td.className = "err"; td.textContent = v || ""; }
    else if (c.type === "num") {
      td.className = "num";
      td.textContent = fmt(v, DIGITS[c.key] || 0);
    } else td.textContent = fmt(v);
    return td;
  }
  function stageBar(stages) {
    var total = Object.keys(stages).reduce(function (s, k) { return s + stages[k]; }, 0);
    var bar = el("div", { cls: "stagebar" }), legend = el("div", { cls: "legend" });
    Object.keys(stages).forEach(function (k) {
      var share = total > 0 ? stages[k] / total : 0;
      var span = el("span", { title: k + ": " + stages[k].toFixed(3) + " s" });
      span.style.width = (100 * share) + "%";
      span.style.background = stageColours[k] || "#999";
      bar.appendChild(span);
      var sw = el("i");
      sw.style.background = stageColours[k] || "#999";
      legend.appendChild(el("span", {}, [sw, document.createTextNode(k + " " + stages[k].toFixed(2) + " s")]));
    });
    return el("div", {}, [bar, legend]);
  }
  function detail(r) {
    var td = el("td", { colspan: String(COLUMNS.length) });
    if (!r.probs) {
      td.appendChild(el("div", { cls: "err", text: r.error || "no report for this slide" }));
      return el("tr", { cls: "detail" }, [td]);
    }
    var views = el("figure", {}, [
      r.att ? image(r.att, "attention heatmap of " + r.id, "view") : el("div", { cls: "muted", text: "no heatmap" }),
      el("figcaption", {}, [document.createTextNode("Attention (low "), el("span", { cls: "ramp" }),
        document.createTextNode(" high), per patch")])
    ]);
    var segs = el("figure", {}, [
      r.seg ? image(r.seg, "segments of " + r.id, "view") : el("div", { cls: "muted", text: "no segment overlay" }),
      el("figcaption", { text: "Segments: each patch coloured by its (smallest) segment; grey = in none" })
    ]);
    var crops = el("div", { cls: "crops" });
    r.top.forEach(function (t, i) {
      if (!t[4]) return;
      var cap = "#" + (i + 1) + " (" + t[0] + ", " + t[1] + ")\nattention " + fmt(t[2], 4) + "\nsegment " +
        (t[3] === -1 ? "none" : t[3]);
      var fig = el("figure", { title: "level-0 top-left x, y" }, [image(t[4], "top patch " + (i + 1), ""),
        el("figcaption", { text: cap })]);
      fig.lastChild.style.whiteSpace = "pre-line";
      crops.appendChild(fig);
    });
    if (!crops.childNodes.length) crops.appendChild(el("div", { cls: "muted", text: "no patch crops in this run" }));
    var facts = el("dl", { cls: "facts" });
    function fact(k, v) { if (v !== null && v !== undefined && v !== "") { facts.appendChild(el("dt", { text: k }));
      facts.appendChild(el("dd", { text: v })); } }
    fact("probabilities", Object.keys(r.probs).map(function (k) { return k + " " + r.probs[k].toFixed(4); })
      .join(", "));
    fact("decision rule", r.decision);
    fact("threshold", r.threshold_note ? fmt(r.threshold, 4) + " (" + r.threshold_note + ")" : null);
    fact("slide", (r.size[0] ? r.size[0] + " × " + r.size[1] + " px" : "") + (r.mpp ? ", " + r.mpp + " µm/px" : ""));
    Object.keys(r.other_timings || {}).forEach(function (k) { fact(k + " (s)", fmt(r.other_timings[k], 3)); });
    var links = el("div", { cls: "links" });
    [["JSON report", r.json], ["GeoJSON (QuPath)", r.geojson], ["full heatmap", r.heatmap]].forEach(function (l) {
      if (l[1]) links.appendChild(el("a", { href: l[1], text: l[0] }));
    });
    var left = el("div", {}, [el("div", { cls: "views" }, [views, segs]),
      el("h4", { text: "Time per stage (" + fmt(r.seconds, 2) + " s)" }), stageBar(r.stages), facts, links]);
    var right = el("div", {}, [el("h4", { text: "Top attention patches (level-0 x, y)" }), crops]);
    td.appendChild(el("div", { cls: "detail-grid" }, [left, right]));
    return el("tr", { cls: "detail" }, [td]);
  }
  function render() {
    var list = visible();
    var size = state.size > 0 ? state.size : list.length || 1;
    var pages = Math.max(1, Math.ceil(list.length / size));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * size, shown = list.slice(start, start + size);
    var body = $("slide-rows");
    body.textContent = "";
    shown.forEach(function (r) {
      var tr = el("tr", { cls: "row" + (state.open[r.id] ? " open" : ""), tabindex: "0", "data-id": r.id });
      COLUMNS.forEach(function (c) { tr.appendChild(cell(r, c)); });
      var toggle = function () { state.open[r.id] = !state.open[r.id]; render(); };
      tr.addEventListener("click", toggle);
      tr.addEventListener("keydown", function (e) { if (e.key === "Enter") toggle(); });
      body.appendChild(tr);
      if (state.open[r.id]) body.appendChild(detail(r));
    });
    $("count").textContent = list.length ? "Showing " + (start + 1) + "–" + (start + shown.length) + " of " +
      list.length + " slides" + (list.length < rows.length ? " (filtered from " + rows.length + ")" : "") :
      "No slide matches";
    $("page").textContent = "page " + (state.page + 1) + " / " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    document.querySelectorAll("th.sortable").forEach(function (th) {
      th.querySelector(".arrow").textContent = th.dataset.key === state.key ? (state.dir > 0 ? "▲" : "▼") : "";
    });
  }
  function header() {
    var tr = $("slide-head");
    COLUMNS.forEach(function (c) {
      var th = el("th", { text: c.title });
      if (c.sortable !== false) {
        th.className = "sortable";
        th.dataset.key = c.key;
        th.appendChild(el("span", { cls: "arrow" }));
        th.addEventListener("click", function () {
          // Numbers sort high to low first (most probable, slowest), text A to Z.
          state.dir = state.key === c.key ? -state.dir : (c.type === "num" ? -1 : 1);
          state.key = c.key;
          render();
        });
      }
      tr.appendChild(th);
    });
  }
  function options(id, values) {
    values.forEach(function (v) { $(id).appendChild(el("option", { value: v, text: v })); });
  }
  function distinct(key) {
    var seen = {};
    rows.forEach(function (r) { if (r[key]) seen[r[key]] = true; });
    return Object.keys(seen).sort();
  }
  header();
  options("status-filter", distinct("status"));
  options("label-filter", distinct("label"));
  $("search").addEventListener("input", function (e) { state.q = e.target.value; state.page = 0; render(); });
  $("status-filter").addEventListener("change", function (e) { state.status = e.target.value; state.page = 0;
    render(); });
  $("label-filter").addEventListener("change", function (e) { state.label = e.target.value; state.page = 0;
    render(); });
  $("page-size").addEventListener("change", function (e) { state.size = Number(e.target.value); state.page = 0;
    render(); });
  $("prev").addEventListener("click", function () { state.page -= 1; render(); });
  $("next").addEventListener("click", function () { state.page += 1; render(); });
  render();
  document.body.dataset.ready = "1";
})();
"""
