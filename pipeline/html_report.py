"""OUT/reports/index.html: one static page with every report table and plot, readable offline
(no script, no stylesheet or font from the network; images are the PNGs beside it)."""

from __future__ import annotations

import datetime
import html
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

import schemas
from pipeline.storage import write_bytes_atomic

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 4px 0; }
.note { color: #666; font-size: 12px; }
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


def label_shares_html(label_shares: pa.Table) -> str:
    """Label shares over all kernel sizes as one row per model, one column per label."""
    rows = [r for r in label_shares.to_pylist() if r["kernel_size"] is None]
    labels = sorted({r["label"] for r in rows} - {"unclustered"}) + ["unclustered"]
    wide: dict[str, dict] = {}
    for r in rows:
        wide.setdefault(r["model_id"], {"model_id": r["model_id"]})[r["label"]] = r["share"]
    table = pa.Table.from_pylist([{c: w.get(c) for c in ["model_id", *labels]}
                                  for w in wide.values()],
                                 schema=pa.schema([("model_id", pa.string())]
                                                  + [(c, pa.float64()) for c in labels]))
    return html_table(table, [("model_id", "model", None)]
                      + [(c, c, percent) for c in labels])


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
