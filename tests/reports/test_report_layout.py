"""The report grouped by kind of pattern (family x polarity) and readable at 1,400 px: on a zoo
whose templates carry many labels, the page's first grouping is the kinds of pattern, nothing
on it is wider than the window, no plot cuts off a legend or a label, and the printed summary
gives the kinds before the single templates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dwscan.cli import main
from dwscan.io.storage import OutputLayout
from dwscan.reports import plots
from dwscan.stages.report import Reports, write_reports
from dwscan.testing.scanned_zoo import label_pattern, write_scanned_zoo, zoo_of
from tests.helpers import page_in_chromium

# 36 labels in five kinds: a table with a column per label would be far wider than the page
LABELS = tuple([f"on-centre DoG sigma {s / 10:.1f}" for s in range(5, 15)]
               + [f"off-centre DoG sigma {s / 10:.1f}" for s in range(5, 11)]
               + [f"+d/dtheta {a} deg sigma 1.0" for a in range(0, 360, 30)]
               + [f"+d2/dtheta2 {a} deg sigma 0.9" for a in range(0, 180, 30)] + ["other", "noise"])
# four models of two families and two kernel sizes (fewer than 5: no bootstrap to wait for)
ZOO = [m for m in zoo_of(10) if m[0].startswith(("efficientnet", "ghostnet"))]
ASKED = ZOO[0][0]
WIDTH = 1400
KINDS = {" ".join(p for p in label_pattern(label) if p) for label in LABELS} | {"unclustered"}


@dataclass
class Reported:
    root: Path
    csvs: tuple[str, str]  # accuracy and pre-training tables
    reports: Reports
    figures: dict[str, tuple[list[str], list[list[str]]]]  # PNG name -> _clipped_and_legends


@pytest.fixture(scope="module")
def many_labels(tmp_path_factory) -> Reported:
    """The zoo reported once, every figure checked as _save gets it."""
    root = tmp_path_factory.mktemp("labels")
    csvs = write_scanned_zoo(root, ZOO, layers=2, channels=len(LABELS) + 4, labels=LABELS)
    figures: dict[str, tuple[list[str], list[list[str]]]] = {}
    save = plots._save

    def checked(fig, path):
        figures[path.name] = _clipped_and_legends(fig)
        return save(fig, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "_save", checked)
        reports = write_reports(OutputLayout(root), accuracy_csv=csvs[0], pretrain_csv=csvs[1],
                                show_models=[ASKED])
    return Reported(root, csvs, reports, figures)


_OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth, wide = [];
  for (const e of document.querySelectorAll("body *")) {
    const box = e.getBoundingClientRect();
    if (!box.width && !box.height) continue;  // not shown
    const clips = getComputedStyle(e).overflowX !== "visible";
    if (box.right > width + 1 || (clips && e.scrollWidth > e.clientWidth + 1))
      wide.push(e.tagName + (e.id ? "#" + e.id : "") + " right " + Math.round(box.right)
                + ", content " + e.scrollWidth);
  }
  return [document.documentElement.scrollWidth, wide];
}"""

_COLUMNS_JS = """() => Array.from(document.querySelectorAll("table:not(#models)"))
  .map(t => t.rows.length ? Math.max(...Array.from(t.rows).map(r => r.cells.length)) : 0)"""


def test_page_groups_by_kind_first_and_fits_1400_px_in_chromium(many_labels):
    """Headless Chromium at 1,400 px: the first section is the kinds of pattern; with every
    collapsed detail opened, and again with a model's details open, the document is no wider
    than the window, no element reaches past it or overflows a box that clips, and no table
    (the scrolling model table aside) has more than 12 columns."""
    with page_in_chromium(many_labels.reports.index_html,
                          viewport={"width": WIDTH, "height": 900}) as page:
        headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.innerText)")
        page.eval_on_selector_all("details", "ds => ds.forEach(d => { d.open = true; })")
        whole_page = page.evaluate(_OVERFLOW_JS)
        columns = page.evaluate(_COLUMNS_JS)
        page.click(f"#models a[href='#model={ASKED}']")
        page.wait_for_selector("#model-details", state="visible")
        details = page.inner_text("#model-details")
        with_details = page.evaluate(_OVERFLOW_JS)
    assert whole_page == [WIDTH, []]
    assert with_details == [WIDTH, []]
    assert max(columns) <= 12, columns
    assert headings[0].startswith("Kinds of pattern"), headings
    # a model's details give its kinds of pattern before its single templates
    assert details.index("Kinds of pattern") < details.index("Template label shares")


def _clipped_and_legends(fig) -> tuple[list[str], list[list[str]]]:
    """What of the figure, as drawn, reaches outside its canvas: legends, titles, axis labels,
    the tick labels in view, texts and annotations; and each legend's entries."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    pieces = [(f"legend {legend.get_title().get_text()!r}", legend.get_window_extent(renderer))
              for legend in legends]
    texts = [*fig.texts, *(t for ax in fig.axes for t in (ax.title, *ax.texts))]
    pieces += [(repr(t.get_text()), t.get_window_extent(renderer)) for t in texts
               if t.get_visible() and t.get_text().strip()]
    for ax in fig.axes:  # tick labels in view and the axis label, as the axis draws them
        pieces += [(f"{axis.axis_name} axis of {ax.get_title()!r}", axis.get_tightbbox(renderer))
                   for axis in (ax.xaxis, ax.yaxis) if ax.axison and axis.get_visible()]
    inside = fig.bbox.padded(1)
    clipped = [name for name, box in pieces if box is not None and not _within(box, inside)]
    return clipped, [[t.get_text() for t in legend.get_texts()] for legend in legends]


def _within(box, outer) -> bool:
    return (box.x0 >= outer.x0 and box.y0 >= outer.y0 and box.x1 <= outer.x1
            and box.y1 <= outer.y1)


def test_no_plot_cuts_off_a_legend_or_a_label_and_label_plots_stack_by_kind(many_labels):
    """Every figure the report saves, checked as drawn: no text or legend reaches outside the
    canvas; the label-share and layer-share plots' legends name kinds of pattern, not the 36
    single labels."""
    figures = many_labels.figures
    assert {"label_shares.png", f"layer_shares_{ASKED}.png", "clusterability_vs_top1.png"} <= set(
        figures)
    assert {name: clipped for name, (clipped, _) in figures.items() if clipped} == {}
    for name in ("label_shares.png", f"layer_shares_{ASKED}.png"):
        entries = [e for legend in figures[name][1] for e in legend]
        assert entries and set(entries) <= KINDS, (name, entries)


def test_printed_summary_gives_kinds_of_pattern_before_single_templates(many_labels, capsys,
                                                                         monkeypatch):
    """`dwscan report`'s output (the stage itself stubbed with the fixture's result): the kinds
    of pattern, then each single template beneath its kind, in short lines."""
    import dwscan.stages.report

    monkeypatch.setattr(dwscan.stages.report, "write_reports", lambda *a, **k: many_labels.reports)
    assert main(["report", "--out", str(many_labels.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = next(i for i, line in enumerate(lines) if line.startswith("Kinds of pattern"))
    templates = next(i for i, line in enumerate(lines) if line.startswith("Templates"))
    assert kinds < templates
    block = "\n".join(lines[kinds:templates])
    assert all(kind in block for kind in KINDS - {"unclustered"}), block
    end = next(i for i, line in enumerate(lines) if line.startswith("wrote"))
    assert max(len(line) for line in lines[kinds:end]) <= 100, lines[kinds:end]
    # every single template is named beneath, on the line of its kind or the lines after
    assert all(any(label in line for line in lines[templates:end]) for label in LABELS)
    assert any(line.startswith("  centre-surround on: #0 on-centre DoG sigma 0.5 ")
               for line in lines[templates:end])
