"""The report at zoo scale (a finished scan of 240 models written table by table, no Ray): plots
aggregated per family, names on outliers only, no image wider than 2,400 px, a layer-share plot
only for the models asked for, and index.html's model table sorted, filtered and opened in a
real browser."""

from __future__ import annotations

import shutil

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pytest

from dwscan import schemas
from dwscan.io.storage import OutputLayout
from dwscan.reports.plots import MAX_WIDTH_PX, _save, scatter_labels
from dwscan.reports.tables import family_label_shares
from dwscan.stages.report import write_reports
from dwscan.testing.scanned_zoo import (
    SCANNED_INVALID,
    ZOO_FAMILIES,
    ZOO_LABELS,
    ZOO_OUTLIERS,
    write_scanned_zoo,
    zoo_of,
)

N_MODELS = 240
LAYERS = 6
CHANNELS = 40
N_VALID = LAYERS * CHANNELS - SCANNED_INVALID
ZOO = list(zoo_of(N_MODELS))
ASKED = "mixnet_m0003"
# the pre-training data each ZOO_TAGS tag names
PRETRAIN = {"ra_in1k": "in1k", "fb_in22k_ft_in1k": "in22k", "in12k_ft_in1k": "in12k",
            "fb_in1k": "in1k"}


@pytest.fixture(scope="module")
def zoo_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    results, pretrain = write_scanned_zoo(root, ZOO, layers=LAYERS, channels=CHANNELS,
                                          labels=ZOO_LABELS)
    reports = write_reports(OutputLayout(root), accuracy_csv=results, pretrain_csv=pretrain,
                            show_models=[ASKED, "no_such_model"])
    return root, reports


def _family(model_id: str) -> str:
    return model_id.rsplit("_m", 1)[0]


def test_family_label_shares_average_each_model_once():
    rows = [("a1", "fam", 3, "on-centre", 0.5), ("a1", "fam", 3, "unclustered", 0.5),
            ("a2", "fam", 3, "unclustered", 1.0), ("a1", "fam", None, "unclustered", 0.5),
            ("b1", None, 5, "+d/dx", 0.25), ("b1", None, 5, "unclustered", 0.75)]
    table = pa.Table.from_pylist(
        [{"model_id": m, "family": f, "kernel_size": k, "label": label, "n_kernels": 1,
          "share": share} for m, f, k, label, share in rows], schema=schemas.LABEL_SHARES)
    got = {(r["family"], r["kernel_size"], r["label"]): (r["n_models"], r["share"])
           for r in family_label_shares(table).to_pylist()}
    assert got == {("fam", 3, "on-centre"): (2, 0.25), ("fam", 3, "unclustered"): (2, 0.75),
                   ("unknown", 5, "+d/dx"): (1, 0.25), ("unknown", 5, "unclustered"): (1, 0.75)}


def test_scatter_names_the_planted_outliers_and_the_asked_models_only():
    ids = [m for m, *_ in ZOO]
    x = np.array([top1 for _, _, top1, _ in ZOO])
    y = 100 * np.array([fraction for *_, fraction in ZOO])
    named = scatter_labels(ids, x, y, named=(ASKED,))
    assert named[0] == ASKED
    assert sorted(named[1:]) == sorted(ids[:ZOO_OUTLIERS])
    assert scatter_labels(ids[:12], x[:12], y[:12]) == ids[:12]  # a small zoo: every point


def test_save_caps_the_width_of_any_figure(tmp_path):
    fig = plt.figure(figsize=(60, 3))
    fig.add_subplot().plot([0, 1], [0, 1])
    width = matplotlib.image.imread(_save(fig, tmp_path / "wide.png")).shape[1]
    assert 2000 < width <= MAX_WIDTH_PX


def test_only_the_asked_model_gets_a_layer_share_plot(zoo_report):
    root, reports = zoo_report
    assert reports.unknown_models == ["no_such_model"]
    assert list(reports.layer_share_plots) == [ASKED]
    per_model = sorted(p.name for p in (root / "reports").glob("layer_shares_*.png"))
    assert per_model == [f"layer_shares_{ASKED}.png"]
    images = sorted((root / "reports").glob("*.png"))
    assert {p.name for p in images} >= {"clusterability_vs_top1.png", "label_shares.png",
                                        "clusterability_vs_depth.png", "templates_k7.png"}
    for image in images:
        assert matplotlib.image.imread(image).shape[1] <= MAX_WIDTH_PX, image.name


def test_page_stays_small(zoo_report):
    """Inline JSON, not a table per model: a few KB a model (6 layers, 4 labels, 2 sizes)."""
    root, _ = zoo_report
    size = (root / "reports" / "index.html").stat().st_size
    assert size < 4000 * N_MODELS, size
    assert size > 500 * N_MODELS, size  # every model's details are there


def _rows(page) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#models tbody tr", "trs => trs.map(tr => Array.from(tr.cells).map(td => td.innerText))")


def _heading(page, text: str) -> int:
    headings = page.eval_on_selector_all("#models thead th", "ths => ths.map(th => th.innerText)")
    index = next(i for i, h in enumerate(headings) if h.strip().startswith(text))
    page.locator("#models thead th").nth(index).click()
    return index


def test_model_table_sorts_filters_and_opens_a_model_in_chromium(zoo_report):
    """Headless Chromium (Debian's package) on the 240-model page: sorting and each filter change
    the rows to the known ones, every image decodes and none is wider than 2,400 px, and a row's
    link shows that model's layers, label shares and accuracy row."""
    from playwright.sync_api import sync_playwright

    _, reports = zoo_report
    chromium = shutil.which("chromium")
    assert chromium, "the browser test needs Debian's chromium: apt-get install -y chromium"
    top1 = {m: t for m, _, t, _ in ZOO}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(reports.index_html.as_uri())
        page.wait_for_load_state("load")

        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])")
        assert len(images) >= 5
        for src, complete, width in images:
            assert complete and 0 < width <= MAX_WIDTH_PX, (src, width)

        rows = _rows(page)
        assert len(rows) == N_MODELS
        assert [r[0] for r in rows] == sorted(top1)  # by model id at first
        column = _heading(page, "top-1")
        rows = _rows(page)
        assert rows[0][0] == min(top1, key=top1.get)
        assert [float(r[column]) for r in rows] == sorted(float(r[column]) for r in rows)
        _heading(page, "top-1")  # again: reversed
        assert _rows(page)[0][0] == max(top1, key=top1.get)
        column = _heading(page, "clustered")
        shown = [float(r[column].rstrip("%")) for r in _rows(page)]
        assert shown == sorted(shown) and shown[0] < shown[-1]

        page.select_option("#f-family", "convnext")
        rows = _rows(page)
        assert len(rows) == N_MODELS // len(ZOO_FAMILIES)
        assert {r[1] for r in rows} == {"convnext"}
        page.select_option("#f-pretrain", "in22k")
        expected = {m for m, key, *_ in ZOO
                    if _family(m) == "convnext" and PRETRAIN[key.split(".")[1]] == "in22k"}
        assert {r[0] for r in _rows(page)} == expected and 0 < len(expected) < len(rows)
        page.select_option("#f-family", "")
        page.select_option("#f-pretrain", "")
        page.select_option("#f-kernel", "7")
        expected = {m for m, *_ in ZOO if 7 in ZOO_FAMILIES[_family(m)][:LAYERS]}
        assert {r[0] for r in _rows(page)} == expected
        page.select_option("#f-kernel", "")
        page.fill("#f-search", "m0012")
        assert [r[0] for r in _rows(page)] == ["mobilenetv3_m0012"]
        page.fill("#f-search", "FB_IN22K")  # the timm key is searched too, case aside
        assert len(_rows(page)) == sum(PRETRAIN[k.split(".")[1]] == "in22k" for _, k, *_ in ZOO)
        page.fill("#f-search", "")
        assert page.inner_text("#model-count") == f"{N_MODELS} of {N_MODELS} models"

        model_id, key, model_top1, fraction = ZOO[1]  # a planted outlier, to the details
        page.click(f"#models a[href='#model={model_id}']")
        page.wait_for_selector("#model-details", state="visible")
        assert page.inner_text("#model-details h3") == model_id
        tables = page.eval_on_selector_all(
            "#model-details table",
            "ts => ts.map(t => Array.from(t.tBodies[0].rows).map(r => r.innerText))")
        titles = page.eval_on_selector_all("#model-details h4", "hs => hs.map(h => h.innerText)")
        per_size, kinds, layers, shares, accuracy = tables
        assert titles[1].startswith("Kinds of pattern") and kinds  # before the single labels
        assert titles[2] == f"Depthwise layers ({LAYERS})" and len(layers) == LAYERS
        sizes = ZOO_FAMILIES[_family(model_id)]
        assert len(per_size) == len(sizes)
        n_clustered = round(fraction * N_VALID)
        unclustered = next(r for r in shares if r.startswith("all") and "unclustered" in r)
        assert f"{100 * (N_VALID - n_clustered) / N_VALID:.1f}%" in unclustered
        assert len(accuracy) == 1 and f"{model_top1:.3f}" in accuracy[0]
        assert "dwscan report --out OUT --model" in page.inner_text("#model-details")

        page.click(f"#models a[href='#model={ASKED}']")  # drawn: its plot is in its details
        page.wait_for_function(
            f"document.querySelector('#model-details h3').innerText === '{ASKED}'")
        page.wait_for_function("(e => e && e.complete)(document.querySelector('#model-details img'))")
        plot = page.eval_on_selector("#model-details img",
                                     "e => [e.getAttribute('src'), e.complete, e.naturalWidth]")
        browser.close()
    assert plot[0] == f"layer_shares_{ASKED}.png" and plot[1] and 0 < plot[2] <= MAX_WIDTH_PX


def test_tables_built_a_batch_of_models_at_a_time_equal_one_pass_over_the_zoo(zoo_report):
    """240 models are 3 batches of MODELS_PER_BATCH: the written tables must be the rows that
    the per-model functions give over every model's assignments at once, in the same order."""
    from dwscan.io.catalogue import ok_model_ids
    from dwscan.io.storage import read_table
    from dwscan.io.template_index import chance_clustered_fraction, template_indexes
    from dwscan.io.template_set import read_template_set_record, template_set_of
    from dwscan.reports.tables import (
        clusterability_table,
        label_shares_table,
        layer_clusterability_table,
        threshold_sweep_table,
    )
    from dwscan.stages.report import MODELS_PER_BATCH, _read_assignments

    assert N_MODELS > 2 * MODELS_PER_BATCH
    root, _ = zoo_report
    layout = OutputLayout(root)
    templates = read_table(layout.templates_path)
    record = read_template_set_record(layout.template_set_path)
    metadata = read_table(layout.table_path(schemas.MODEL_METADATA))
    chance = {k: chance_clustered_fraction(index, record.threshold, seed=0)
              for k, index in template_indexes(templates, record.sign_invariant).items()}
    ids = ok_model_ids(read_table(layout.models_path))
    everything = _read_assignments(layout, ids[::-1])  # any order: each table sorts its rows
    expected = {
        schemas.CLUSTERABILITY: clusterability_table(
            everything, record.threshold, chance, metadata, record.sign_invariant,
            template_set_of(templates)),
        schemas.LAYERS: layer_clusterability_table(everything, metadata),
        schemas.LABEL_SHARES: label_shares_table(everything, templates, metadata),
        schemas.THRESHOLD_SWEEP: threshold_sweep_table(everything)}
    for schema, table in expected.items():
        written = read_table(layout.table_path(schema))
        assert written.num_rows == table.num_rows > N_MODELS
        assert written.to_pylist() == table.cast(written.schema).to_pylist(), schema
