"""`dwscan compare`: how far runs' answers lie apart, on tables with known answers and on
finished scans written table by table (no Ray, no training) and reported."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

from dwscan import schemas
from dwscan.cli import main
from dwscan.io.storage import OutputLayout, read_table, write_table
from dwscan.reports.agreement import (
    compare_runs,
    fraction_spread,
    matched_template_shares,
    pattern_share_spread,
)
from dwscan.stages.report import write_reports
from dwscan.testing.scanned_zoo import SCANNED_ZOO, write_scanned_zoo


def _unit(v) -> list[float]:
    v = np.asarray(v, np.float64)
    v = v - v.mean()
    return (v / np.linalg.norm(v)).tolist()


def _templates(k: int, weights: list[list[float]], shares: list[float]) -> pa.Table:
    return pa.table({"kernel_size": pa.array([k] * len(weights), pa.int32()),
                     "weights": pa.array(weights, pa.list_(pa.float32())),
                     "share": pa.array(shares, pa.float64())})


def test_matched_templates_count_the_clustered_kernels_of_matched_templates():
    """Run 0: templates a (60% of its clustered kernels) and b (40%). Run 1: a tilted to cosine
    ~0.97, and -b (the negative pattern). 0 -> 1 matches a only (60%), or both where a kernel and
    its negative are one pattern; at cosine 0.99 the tilt no longer matches."""
    rng = np.random.default_rng(0)
    a, b = _unit(rng.normal(size=9)), _unit(rng.normal(size=9))
    tilted = _unit(np.asarray(a) + 0.25 * np.asarray(_unit(rng.normal(size=9))))
    assert 0.95 < float(np.dot(a, tilted)) < 0.99 and abs(float(np.dot(a, b))) < 0.9
    runs = [_templates(3, [a, b], [0.6, 0.4]), _templates(3, [tilted, (-np.asarray(b)).tolist()],
                                                          [0.7, 0.3])]
    shares = {(r["run"], r["other_run"]): r["matched_share"]
              for r in matched_template_shares(runs).to_pylist()}
    assert shares == pytest.approx({(0, 1): 0.6, (1, 0): 0.7})
    invariant = {(r["run"], r["other_run"]): r["matched_share"]
                 for r in matched_template_shares(runs, sign_invariant=True).to_pylist()}
    assert invariant == pytest.approx({(0, 1): 1.0, (1, 0): 1.0})
    strict = matched_template_shares(runs, match_cosine=0.99).column("matched_share").to_pylist()
    assert strict == pytest.approx([0.0, 0.0])
    # a size only one run has is not compared
    only_one = pa.concat_tables([runs[0], _templates(5, [_unit(np.arange(25))], [1.0])])
    assert matched_template_shares([only_one, runs[1]]).column("kernel_size").to_pylist() == [3, 3]


def test_spreads_are_over_the_models_and_sizes_every_run_has():
    """Fractions: a model missing from a run and the all-sizes rows are left out. Shares: a kind
    a run lacks for a model counts 0; the zoo's rows (model_id null) are left out."""
    runs = [pa.table({"model_id": ["m", "m", "m", "gone"], "kernel_size": [None, 3, 5, 3],
                      "clustered_fraction": [0.5, 0.62, 0.40, 0.9]}),
            pa.table({"model_id": ["m", "m", "m"], "kernel_size": [None, 3, 5],
                      "clustered_fraction": [0.1, 0.60, 0.43]})]
    rows = fraction_spread(runs).to_pylist()
    assert [(r["model_id"], r["kernel_size"]) for r in rows] == [("m", 3), ("m", 5)]
    assert [r["spread_points"] for r in rows] == pytest.approx([2.0, 3.0])
    assert rows[0]["values"] == pytest.approx([0.62, 0.60])
    shares = [pa.table({"model_id": ["m", "m", None], "kernel_size": [3, 3, 3],
                        "family": ["centre-surround", "other", "centre-surround"],
                        "polarity": ["on", None, "on"], "share": [0.30, 0.05, 0.9]}),
              pa.table({"model_id": ["m"], "kernel_size": [3], "family": ["centre-surround"],
                        "polarity": ["on"], "share": [0.32]})]
    rows = {(r["family"], r["polarity"]): r for r in pattern_share_spread(shares).to_pylist()}
    assert set(rows) == {("centre-surround", "on"), ("other", None)}
    assert rows[("other", None)]["values"] == pytest.approx([0.05, 0.0])
    assert rows[("centre-surround", "on")]["spread_points"] == pytest.approx(2.0)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two reported scans of one zoo: the second with convnext_a's clustered fraction 6 points
    higher (0.76 instead of 0.70) and its second template replaced by another pattern."""
    roots = []
    for i, zoo in enumerate([SCANNED_ZOO, [(m, key, top1, fraction + 0.06 * (m == "convnext_a"))
                                          for m, key, top1, fraction in SCANNED_ZOO]]):
        root = tmp_path_factory.mktemp(f"run{i}")
        results, pretrain = write_scanned_zoo(root, zoo)
        if i:
            layout = OutputLayout(root)
            templates = read_table(layout.templates_path).to_pylist()
            for row in templates:
                if row["template_id"] == 1:
                    row["weights"] = _unit(np.arange(row["kernel_size"] ** 2))
            write_table(pa.Table.from_pylist(templates, schema=schemas.TEMPLATES),
                        layout.templates_path, schemas.TEMPLATES)
        write_reports(OutputLayout(root), accuracy_csv=results, pretrain_csv=pretrain)
        roots.append(root)
    return roots


def test_compare_runs_finds_the_moved_model_and_the_replaced_template(two_runs):
    agreement = compare_runs(two_runs)
    moved = {(r["model_id"], r["kernel_size"]): r["spread_points"]
             for r in agreement.fractions.to_pylist()}
    assert moved and all(v == pytest.approx(6.0, abs=0.3) if m == "convnext_a" else v == 0
                         for (m, _), v in moved.items())
    assert {r["matched_share"] for r in agreement.matched_templates.to_pylist()} == {0.5}
    kinds = {r["model_id"] for r in agreement.pattern_shares.to_pylist()
             if r["spread_points"] > 0}
    assert kinds == {"convnext_a"}


def test_compare_command_prints_the_measures_and_refuses_a_folder_without_a_run(
        two_runs, tmp_path, capsys):
    assert main(["compare", str(two_runs[0]), str(two_runs[1])]) == 0
    printed = capsys.readouterr().out
    # 137 and 149 clustered of 196 valid kernels (the scanned zoo's models are 5x5)
    assert "convnext_a 5x5: 69.9 / 76.0%, spread 6.1 points" in printed
    assert "convnext_b 5x5: 89.8 / 89.8%, spread 0.0 points" in printed
    assert "5x5: 0->1 50.0%, 1->0 50.0%" in printed
    # a zoo's many rows: the widest only, after the spreads' median and largest
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--rows", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    title = printed.index("Clustered fraction (the headline) per model and kernel size: 6 rows, "
                          "spread median 0.0, largest 6.1 points, the 1 widest:")
    assert printed[title + 1].startswith("  convnext_a 5x5:") and printed[title + 2] == ""
    # and the picture: two scatter panels and one matched-share panel for the zoo's one size
    plot = tmp_path / "agreement.png"
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--plot", str(plot)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"plot: {plot}"
    header = plot.read_bytes()[:24]
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and 1000 < width <= 2400 and height < width / 2
    assert main(["compare", str(two_runs[0]), str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert main(["compare", str(two_runs[0])]) == 2
    assert "give two or more output folders" in capsys.readouterr().err
    # templates of the wrong width (not written by dwscan): one line, no traceback
    bad = tmp_path / "bad"
    shutil.copytree(two_runs[1], bad)
    layout = OutputLayout(bad)
    rows = read_table(layout.templates_path).to_pylist()
    rows[0]["weights"] = rows[0]["weights"][:-1]
    write_table(pa.Table.from_pylist(rows, schema=schemas.TEMPLATES), layout.templates_path,
                schemas.TEMPLATES)
    capsys.readouterr()
    assert main(["compare", str(two_runs[0]), str(bad)]) == 2
    assert capsys.readouterr().err.startswith("dwscan compare: error: templates of kernel size 5")


def test_runs_at_another_threshold_are_compared_with_a_warning(two_runs, tmp_path, capsys):
    from dwscan.io.template_set import TemplateSetRecord, write_template_set_record

    other = tmp_path / "loose"
    shutil.copytree(two_runs[1], other)
    write_template_set_record(OutputLayout(other).template_set_path,
                              TemplateSetRecord(threshold=0.7))
    assert compare_runs(two_runs).settings == []
    assert compare_runs([two_runs[0], other]).settings == ["threshold differs: 0.8 / 0.7"]
    assert main(["compare", str(two_runs[0]), str(other)]) == 0
    assert ("WARNING: threshold differs: 0.8 / 0.7: the runs do not measure the same thing"
            in capsys.readouterr().out)
