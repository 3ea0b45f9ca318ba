"""The report stage over a finished scan (written table by table, no Ray): metadata joins,
per-model/layer/label tables, statistics, plots, index.html in a real browser, and SQL."""

from __future__ import annotations

import json
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

from dwscan import schemas
from dwscan.cli import main
from dwscan.io.accuracy import TIMM_PRETRAIN_URL, TIMM_RESULTS_URL, remembered_sources
from dwscan.io.query import QueryError, query_table
from dwscan.io.storage import OutputLayout, read_table, schema_version_of
from dwscan.stages.report import write_reports
from dwscan.testing.scanned_zoo import (
    SCANNED_CHANNELS,
    SCANNED_INVALID,
    SCANNED_LAYERS,
    SCANNED_ZOO,
    write_scanned_zoo,
)
from tests.helpers import page_in_chromium

N_VALID = SCANNED_LAYERS * SCANNED_CHANNELS - SCANNED_INVALID


def _expected_fraction(fraction: float) -> float:
    return round(fraction * N_VALID) / N_VALID


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("scanned")
    results, pretrain = write_scanned_zoo(root)
    reports = write_reports(OutputLayout(root), accuracy_csv=results, pretrain_csv=pretrain,
                            show_models=["convnext_b"])
    return root, reports


def test_every_report_table_is_written_under_its_schema(reported):
    root, _ = reported
    layout = OutputLayout(root)
    for schema in (schemas.CLUSTERABILITY, schemas.LAYERS, schemas.LABEL_SHARES,
                   schemas.MODEL_METADATA, schemas.ACCURACY, schemas.CORRELATION,
                   schemas.THRESHOLD_SWEEP):
        path = layout.table_path(schema)
        assert schema_version_of(path) == schemas.SCHEMA_VERSION
        written = pq.read_schema(path)
        assert written.equals(schema, check_metadata=False), path
        # every column keeps its description for Parquet readers
        assert all(schemas.description(f) for f in written), path


def test_clusterability_joins_accuracy_family_and_pretraining(reported):
    root, _ = reported
    rows = {r["model_id"]: r for r in read_table(OutputLayout(root).clusterability_path).to_pylist()
            if r["kernel_size"] is None}
    assert set(rows) == {m[0] for m in SCANNED_ZOO}  # the failed model has no row
    for model_id, key, top1, fraction in SCANNED_ZOO:
        row = rows[model_id]
        assert row["accuracy_key"] == key
        assert row["clustered_fraction"] == pytest.approx(_expected_fraction(fraction))
        assert row["top1"] == pytest.approx(top1)  # the 224 px row: the model's own input size
        assert row["img_size"] == 224
    assert [rows[m]["family"] for m in ("mobilenetv3_z", "efficientnet_x", "convnext_a")] == [
        "mobilenetv3", "efficientnet", "convnext"]
    assert rows["convnext_b"]["pretrain"] == "in22k"  # from the tag fb_in22k_ft_in1k
    assert rows["efficientnet_y"]["pretrain"] == "in12k"
    assert rows["convnext_a"]["pretrain"] == "in1k"
    assert rows["convnext_b"]["param_count_m"] == pytest.approx(1014.45)  # quoted "1,014.45"
    metadata = {r["model_id"]: r for r in read_table(
        OutputLayout(root).table_path(schemas.MODEL_METADATA)).to_pylist()}
    assert metadata["mobilenetv3_z"]["pretrain_source"] == "metadata"
    assert metadata["convnext_b"]["pretrain_source"] == "tag"
    assert metadata["convnext_b"]["accuracy_rows"] == 2


def test_accuracy_rows_keep_image_sizes_apart(reported):
    root, _ = reported
    rows = read_table(OutputLayout(root).table_path(schemas.ACCURACY)).to_pylist()
    b = sorted((r["img_size"], r["top1"]) for r in rows if r["model_id"] == "convnext_b")
    assert b == [(224, pytest.approx(84.0)), (384, pytest.approx(85.0))]
    assert len(rows) == len(SCANNED_ZOO) + 1


def test_layer_and_label_tables_count_by_hand(reported):
    root, _ = reported
    layout = OutputLayout(root)
    layers = [r for r in read_table(layout.table_path(schemas.LAYERS)).to_pylist()
              if r["model_id"] == "mobilenetv3_z"]
    n_clustered = round(0.40 * N_VALID)  # clustered kernels come first: layer 0 is full
    assert [(r["layer_index"], r["n_filters"], r["n_invalid"], r["n_clustered"]) for r in layers] == [
        (0, SCANNED_CHANNELS, 0, min(n_clustered, SCANNED_CHANNELS)),
        (1, SCANNED_CHANNELS, SCANNED_INVALID, max(0, n_clustered - SCANNED_CHANNELS))]
    assert layers[0]["family"] == "mobilenetv3" and layers[0]["top1"] == 70.0
    shares = {(r["kernel_size"], r["label"]): r for r in read_table(
        layout.table_path(schemas.LABEL_SHARES)).to_pylist() if r["model_id"] == "convnext_b"}
    clustered = round(0.9 * N_VALID)
    assert shares[None, "on-centre"]["n_kernels"] == (clustered + 1) // 2  # even rows: template 0
    assert shares[None, "+d/dx"]["n_kernels"] == clustered // 2
    assert shares[None, "unclustered"]["n_kernels"] == N_VALID - clustered
    assert sum(r["share"] for (k, _), r in shares.items() if k is None) == pytest.approx(1.0)
    assert shares[5, "on-centre"]["n_kernels"] == shares[None, "on-centre"]["n_kernels"]


def test_correlations_with_intervals_and_caveats(reported):
    _, reports = reported
    rows = {(r["statistic"], r["scope"], r["kernel_size"]): r for r in reports.correlation.to_pylist()}
    overall = rows["spearman", "all", None]
    assert overall["n"] == len(SCANNED_ZOO) and overall["estimate"] == pytest.approx(1.0)
    assert overall["note"] is None and overall["ci_low"] <= 1.0 <= overall["ci_high"] + 1e-9
    assert rows["pearson", "all", None]["estimate"] > 0.95
    convnext = rows["spearman", "convnext", None]
    assert convnext["n"] == 3 and "fewer than 5 models" in convnext["note"]
    assert convnext["ci_low"] is None
    in22k = rows["mean_difference", "in22k", None]
    in1k = [f for _, key, _, f in SCANNED_ZOO if key.endswith(("lamb_in1k", "ra_in1k", "fb_in1k"))]
    expected = _expected_fraction(0.9) - sum(map(_expected_fraction, in1k)) / len(in1k)
    assert (in22k["n"], in22k["n_reference"]) == (1, len(in1k))
    assert in22k["estimate"] == pytest.approx(expected)
    assert "fewer than 5" in in22k["note"]


def test_report_page_shows_tables_and_plots_in_chromium(reported):
    """Open index.html in headless Chromium (Debian's package): every plot decodes, every
    scanned model is in the tables, and only the model asked for has a layer-share plot."""
    root, reports = reported
    with page_in_chromium(reports.index_html) as page:
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth > 0])")
        tables = page.eval_on_selector_all("table", "els => els.map(e => e.innerText)")
    sources = {src for src, _ in images}
    assert {"clusterability_vs_top1.png", "label_shares.png", "clusterability_vs_depth.png",
            "templates_k5.png"} <= sources
    assert sources - {"clusterability_vs_top1.png", "label_shares.png",
                      "clusterability_vs_depth.png", "templates_k5.png"} == {
        "layer_shares_convnext_b.png"}  # the one model asked for
    assert all(loaded for _, loaded in images), [src for src, ok in images if not ok]
    for model_id, *_ in SCANNED_ZOO:
        assert any(model_id in text for text in tables), model_id
    assert not any("broken" in text for text in tables)


def test_sql_over_the_views(reported, capsys):
    root, _ = reported
    table = query_table(root, "SELECT model_id, clustered_fraction, top1 FROM clusterability "
                              "WHERE kernel_size IS NULL ORDER BY top1")
    assert table.column("model_id").to_pylist() == [m[0] for m in SCANNED_ZOO]
    joined = query_table(root, "SELECT m.status, count(*) AS n FROM models m LEFT JOIN "
                               "assignments a USING (model_id) GROUP BY m.status ORDER BY 1")
    assert joined.to_pylist() == [{"status": "failed", "n": 1},
                                  {"status": "ok", "n": len(SCANNED_ZOO) * SCANNED_LAYERS
                                   * SCANNED_CHANNELS}]
    with pytest.raises(QueryError, match="views in .*clusterability"):
        query_table(root, "SELECT * FROM no_such_table")

    assert main(["query", "--out", str(root), "--format", "csv",
                 "SELECT model_id, n_clustered FROM clusterability WHERE kernel_size IS NULL "
                 "ORDER BY model_id LIMIT 2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '"model_id","n_clustered"'
    assert lines[1] == f'"convnext_a",{round(0.7 * N_VALID)}'
    out = root / "q.parquet"
    assert main(["query", "--out", str(root), "--format", "parquet", "--output", str(out),
                 "SELECT * FROM layers"]) == 0
    assert pq.read_table(out).num_rows == len(SCANNED_ZOO) * SCANNED_LAYERS
    assert main(["query", "--out", str(root), "SELECT * FROM nope"]) == 2
    assert "views in" in capsys.readouterr().err


def test_report_command_rebuilds_from_disk(reported, tmp_path):
    root, _ = reported
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "reports")
    results, pretrain = str(root / "results-imagenet.csv"), str(root / "model_metadata-in1k.csv")
    result = subprocess.run(["dwscan", "report", "--out", str(copy), "--accuracy-csv", results,
                             "--pretrain-csv", pretrain, "--model", "convnext_a", "--model",
                             "no_such_model"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "spearman" in result.stdout and (copy / "reports" / "index.html").exists()
    assert [p.name for p in (copy / "reports").glob("layer_shares_*.png")] == [
        "layer_shares_convnext_a.png"]
    assert "layer_shares_convnext_a.png" in (copy / "reports" / "index.html").read_text()
    assert ("dwscan report: --model no_such_model: no model of that id was scanned ok in "
            f"{copy} (see models.parquet); not drawn") in result.stderr.splitlines()
    assert read_table(copy / "reports" / "clusterability.parquet").equals(
        read_table(root / "reports" / "clusterability.parquet"))


def test_a_later_report_joins_the_tables_the_last_one_read(reported, tmp_path, caplog):
    """`dwscan report` without --accuracy-csv (or `write_reports` without sources) on a folder
    whose report was given one joins the same tables again (it fell back to timm's URL, offline
    to the demo excerpt, and dropped every top-1); a flag still wins, and a recorded file that
    is gone gives way with a warning."""
    root, _ = reported
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    recorded = json.loads((copy / "reports" / "accuracy_sources.json").read_text())
    assert recorded == {"accuracy_csv": str((root / "results-imagenet.csv").resolve()),
                        "pretrain_csv": str((root / "model_metadata-in1k.csv").resolve())}
    (copy / "reports" / "clusterability.parquet").unlink()
    assert main(["report", "--out", str(copy)]) == 0
    again = read_table(copy / "reports" / "clusterability.parquet")
    assert again.equals(read_table(root / "reports" / "clusterability.parquet"))
    assert None not in again.column("top1").to_pylist()
    # and so does the library call without sources (it raised a TypeError on None)
    (copy / "reports" / "clusterability.parquet").unlink()
    write_reports(OutputLayout(copy))
    assert read_table(copy / "reports" / "clusterability.parquet").equals(again)

    sources = copy / "reports" / "accuracy_sources.json"
    assert remembered_sources(sources, accuracy_csv="mine.csv")[0] == "mine.csv"
    sources.write_text(json.dumps({**recorded, "accuracy_csv": str(tmp_path / "gone.csv")}))
    assert remembered_sources(sources) == (TIMM_RESULTS_URL, recorded["pretrain_csv"])
    assert "gone.csv, which the last report of this folder read" in caplog.text
    for broken in ("not json", "[1, 2]", json.dumps({"accuracy_csv": 5, "pretrain_csv": None})):
        sources.write_text(broken)  # a broken or hand-edited record remembers nothing
        assert remembered_sources(sources) == (TIMM_RESULTS_URL, TIMM_PRETRAIN_URL)


def test_report_command_without_a_run_says_what_to_do(tmp_path):
    result = subprocess.run(["dwscan", "report", "--out", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "dwscan run --out" in result.stderr
