"""OUT/reports/index.html: one page with every report table and plot, readable offline (nothing
from the network; images are the PNGs beside it). The model table is inline JSON that a small
inline script sorts, filters and opens model by model, so the page stays small at 1,000 models."""

from __future__ import annotations

import datetime
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from dwscan import schemas
from dwscan.io.storage import write_bytes_atomic
from dwscan.reports.patterns import kind_order
from dwscan.reports.tables import UNCLUSTERED

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 4px 0; }
.note { color: #666; font-size: 12px; }
.controls { display: flex; flex-wrap: wrap; gap: 0.4em 1.2em; align-items: center; margin: 0.5em 0; }
.scroll { max-height: 70vh; overflow: auto; border: 1px solid #ddd; }
.scroll table { margin: 0; } .scroll thead th { position: sticky; top: 0; }
#models th { cursor: pointer; user-select: none; white-space: nowrap; }
#models th[aria-sort=ascending]::after { content: " \\25B2"; }
#models th[aria-sort=descending]::after { content: " \\25BC"; }
#models tr.selected td { background: #fff4c2; }
#model-details { border: 1px solid #ccc; padding: 0 1em 1em; margin-top: 1em; background: #fafafa; }
"""

Column = tuple[str, str, Callable[[object], str] | None]  # (column, heading, formatter)


def percent(value) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def number(digits: int) -> Callable[[object], str]:
    return lambda value: "" if value is None else f"{value:.{digits}f}"


def html_table(table: pa.Table, columns: list[Column], max_rows: int = 2000) -> str:
    """Rows of `table` as an HTML table; numbers right-aligned, nulls blank."""
    head = "".join(f"<th>{html.escape(heading)}</th>" for _, heading, _ in columns)
    body = []
    for row in table.slice(0, max_rows).to_pylist():
        cells = []
        for name, _, fmt in columns:
            value = row.get(name)
            text = fmt(value) if fmt else ("" if value is None else str(value))
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            cells.append(f"<td{' class=num' if numeric else ''}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (f"<p class=note>{table.num_rows - max_rows} more rows in the Parquet file.</p>"
            if table.num_rows > max_rows else "")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def family_kind_shares_html(family_shares: pa.Table) -> str:
    """Mean shares per model family and kernel size (report.family_label_shares with a `kind`
    column): a row per family and size with one column per kind of pattern, so the table keeps
    a dozen columns however many templates there are; the single labels beneath, collapsed, a
    row per label under its kind."""
    rows = family_shares.to_pylist()
    kinds = sorted({r["kind"] for r in rows}, key=kind_order)
    wide: dict[tuple, dict] = {}
    for r in rows:
        into = wide.setdefault((r["family"], r["kernel_size"]), {
            "family": r["family"], "kernel_size": r["kernel_size"], "n_models": r["n_models"]})
        into[r["kind"]] = into.get(r["kind"], 0.0) + r["share"]
    table = pa.Table.from_pylist(
        [{c: w.get(c) for c in ["family", "kernel_size", "n_models", *kinds]} for w in wide.values()],
        schema=pa.schema([("family", pa.string()), ("kernel_size", pa.int32()),
                          ("n_models", pa.int64())] + [(c, pa.float64()) for c in kinds]))
    labels = family_shares.filter(pc.not_equal(family_shares.column("kind"), UNCLUSTERED))
    return (html_table(table, [("family", "model family", None), ("kernel_size", "k", None),
                               ("n_models", "models", None)] + [(c, c, percent) for c in kinds])
            + f"<details><summary>Single templates ({labels.num_rows} rows: model family, "
            "size and label)</summary>"
            + html_table(labels, [("family", "model family", None), ("kernel_size", "k", None),
                                  ("kind", "kind of pattern", None), ("label", "template", None),
                                  ("share", "share", percent)])
            + "</details>")


# A column of the model explorer: (column, heading, format); formats: text, int, pct, num2, num3,
# k (a kernel size; null: all sizes), sizes (a list of them), hidden (searched, not shown).
ExplorerColumn = tuple[str, str, str]


@dataclass
class DetailTable:
    """One table of a model's details panel: its rows (dicts) for each model."""
    title: str
    columns: list[ExplorerColumn]
    rows_by_model: dict[str, list[dict]]


def model_explorer_html(columns: list[ExplorerColumn], models: list[dict],
                        details: list[DetailTable], plots: dict[str, str]) -> str:
    """The model table (sortable by any column, filtered by family, pre-training, kernel size and
    a search box) and a details panel that a row's link fills: the data as inline JSON, one row
    per model and one list of rows per model and detail table, not one HTML table per model.
    `models` need model_id, family, pretrain, kernel_sizes; `plots`: model id -> image name."""
    data = {
        "columns": [list(c) for c in columns],
        "rows": [[_json_value(m.get(name)) for name, _, _ in columns] for m in models],
        "details": [{"title": d.title, "columns": [list(c) for c in d.columns],
                     "rows": {m: [[_json_value(r.get(name)) for name, _, _ in d.columns]
                                  for r in rows] for m, rows in d.rows_by_model.items()}}
                    for d in details],
        "plots": plots,
    }
    families = sorted({m["family"] or "unknown" for m in models})
    pretrains = sorted({m["pretrain"] or "unknown" for m in models})
    sizes = sorted({k for m in models for k in m["kernel_sizes"]})
    heads = "".join(f"<th data-col={i} tabindex=0>{html.escape(heading)}</th>"
                    for i, (_, heading, fmt) in enumerate(columns) if fmt != "hidden")
    return (
        "<div class=controls>"
        + _select("f-family", "family", families)
        + _select("f-pretrain", "pre-training", pretrains)
        + _select("f-kernel", "kernel size", [str(k) for k in sizes], [f"{k}x{k}" for k in sizes])
        + "<label>search <input id=f-search type=search placeholder='model id or timm key'></label>"
        "<span id=model-count class=note></span></div>"
        f"<div class=scroll><table id=models><thead><tr>{heads}</tr></thead><tbody></tbody>"
        "</table></div><div id=model-details hidden></div>"
        f"<script type=application/json id=dwscan-models>{_inline_json(data)}</script>"
        f"<script>{_EXPLORER_JS}</script>")


def _select(element_id: str, heading: str, values: list[str], names: list[str] | None = None) -> str:
    options = "".join(f"<option value='{html.escape(v, quote=True)}'>{html.escape(n)}</option>"
                      for v, n in zip(values, names or values))
    return (f"<label>{html.escape(heading)} <select id={element_id}><option value=''>all</option>"
            f"{options}</select></label>")


def _json_value(value):
    """Floats to 6 significant digits (the page's size at 1,000 models), NaN and inf to null."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def _inline_json(data) -> str:
    """JSON that cannot end its <script> element early: <, > and & as \\u escapes."""
    return (json.dumps(data, separators=(",", ":"), allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


_EXPLORER_JS = r"""
(function () {
  const data = JSON.parse(document.getElementById("dwscan-models").textContent);
  const cols = data.columns, col = {};
  cols.forEach((c, i) => { col[c[0]] = i; });
  const body = document.querySelector("#models tbody");
  const heads = Array.from(document.querySelectorAll("#models thead th"));
  const family = document.getElementById("f-family"), pretrain = document.getElementById("f-pretrain");
  const kernel = document.getElementById("f-kernel"), search = document.getElementById("f-search");
  const count = document.getElementById("model-count"), panel = document.getElementById("model-details");
  let sortCol = col.model_id, sortDir = 1;

  function fmt(v, f) {
    if (f === "k") return (v === null || v === undefined) ? "all" : v + "x" + v;
    if (v === null || v === undefined) return "";
    if (f === "pct") return (100 * v).toFixed(1) + "%";
    if (f === "num2") return v.toFixed(2);
    if (f === "num3") return v.toFixed(3);
    if (f === "sizes") return v.map(k => k + "x" + k).join(", ");
    return String(v);
  }
  function key(v) { return Array.isArray(v) ? (v.length ? v[0] : null) : v; }
  function compare(a, b) {  // nulls last in either direction
    const x = key(a[sortCol]), y = key(b[sortCol]);
    if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;
    if (y === null || y === undefined) return -1;
    const c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
    return sortDir * c;
  }
  function cell(tr, text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    tr.appendChild(td);
    return td;
  }
  function render() {
    const q = search.value.trim().toLowerCase(), k = kernel.value === "" ? null : Number(kernel.value);
    const shown = data.rows.filter(r =>
      (!family.value || (r[col.family] ?? "unknown") === family.value) &&
      (!pretrain.value || (r[col.pretrain] ?? "unknown") === pretrain.value) &&
      (k === null || r[col.kernel_sizes].includes(k)) &&
      (!q || String(r[col.model_id]).toLowerCase().includes(q) ||
       String(r[col.accuracy_key] ?? "").toLowerCase().includes(q)));
    shown.sort((a, b) => compare(a, b) || String(a[col.model_id]).localeCompare(String(b[col.model_id])));
    const rows = shown.map(r => {
      const tr = document.createElement("tr");
      tr.dataset.model = r[col.model_id];
      cols.forEach((c, i) => {
        if (c[2] === "hidden") return;
        if (i === col.model_id) {
          const a = document.createElement("a");
          a.href = "#model=" + encodeURIComponent(r[i]);
          a.textContent = r[i];
          cell(tr, "").appendChild(a);
        } else {
          cell(tr, fmt(r[i], c[2]), typeof r[i] === "number");
        }
      });
      return tr;
    });
    body.replaceChildren(...rows);
    count.textContent = shown.length + " of " + data.rows.length + " models";
    heads.forEach(th => th.setAttribute("aria-sort",
      Number(th.dataset.col) === sortCol ? (sortDir > 0 ? "ascending" : "descending") : "none"));
    mark();
  }
  function table(columns, rows) {
    const t = document.createElement("table"), head = document.createElement("tr");
    columns.forEach(c => {
      const th = document.createElement("th");
      th.textContent = c[1];
      head.appendChild(th);
    });
    t.createTHead().appendChild(head);
    const tb = t.createTBody();
    rows.forEach(r => {
      const tr = document.createElement("tr");
      columns.forEach((c, i) => cell(tr, fmt(r[i], c[2]), typeof r[i] === "number"));
      tb.appendChild(tr);
    });
    return t;
  }
  function add(tag, text) {
    const e = document.createElement(tag);
    e.textContent = text;
    panel.appendChild(e);
    return e;
  }
  function selected() {
    return location.hash.startsWith("#model=") ? decodeURIComponent(location.hash.slice(7)) : null;
  }
  function mark() {
    const m = selected();
    body.querySelectorAll("tr").forEach(tr => tr.classList.toggle("selected", tr.dataset.model === m));
  }
  function details() {
    const m = selected();
    if (m === null) return;
    panel.replaceChildren();
    const row = data.rows.find(r => r[col.model_id] === m);
    add("h3", m);
    if (!row) { add("p", "No scanned model of this name."); panel.hidden = false; return; }
    add("p", cols.filter(c => c[0] !== "model_id")
      .map(c => c[1] + ": " + (fmt(row[col[c[0]]], c[2]) || "-")).join("; ")).className = "note";
    data.details.forEach(d => {
      const rows = d.rows[m] || [];
      add("h4", d.title + " (" + rows.length + ")");
      if (rows.length) panel.appendChild(table(d.columns, rows)); else add("p", "none").className = "note";
    });
    add("h4", "Kinds of pattern per layer");
    if (data.plots[m]) {
      const img = document.createElement("img");
      img.src = data.plots[m];
      img.alt = "kinds of pattern per layer of " + m;
      panel.appendChild(img);
    } else {
      add("p", "Not drawn: dwscan report --out OUT --model " + m + " draws it.").className = "note";
    }
    panel.hidden = false;
    mark();
    panel.scrollIntoView();
  }
  heads.forEach(th => {
    const go = () => {
      const c = Number(th.dataset.col);
      sortDir = c === sortCol ? -sortDir : 1;
      sortCol = c;
      render();
    };
    th.addEventListener("click", go);
    th.addEventListener("keydown", e => { if (e.key === "Enter") go(); });
  });
  [family, pretrain, kernel].forEach(e => e.addEventListener("change", render));
  search.addEventListener("input", render);
  window.addEventListener("hashchange", details);
  render();
  details();
})();
"""


def write_index_html(reports_dir: Path, sections: list[tuple[str, str, list[str], str]],
                     about: str) -> Path:
    """`sections`: (title, text, image paths, table HTML). Images are linked relative to the page."""
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f"<title>dwscan report</title><style>{_STYLE}</style></head><body>",
             "<h1>dwscan: clusterability of depthwise kernels</h1>",
             f"<p class=note>{html.escape(about)} Generated "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; tables under "
             f"schema version {schemas.SCHEMA_VERSION} (columns: schemas/README.md).</p>"]
    for title, text, images, table in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if text:
            parts.append(f"<p>{html.escape(text)}</p>")
        for image in images:
            name = Path(str(image)).name  # every image sits beside the page
            parts.append(f'<img src="{html.escape(name)}" alt="{html.escape(Path(name).stem)}">')
        parts.append(table)
    parts.append("</body></html>")
    path = reports_dir / "index.html"
    write_bytes_atomic(path, "\n".join(parts).encode())
    return path
