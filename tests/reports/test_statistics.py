"""Correlations and group differences over models: known answers, intervals, caveats."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dwscan import schemas
from dwscan.reports.statistics import bootstrap_interval, correlation_table, pearson, rank, spearman


def test_rank_averages_ties():
    assert rank(np.array([10.0, 30.0, 20.0, 30.0])).tolist() == [1.0, 3.5, 2.0, 3.5]


def test_spearman_and_pearson_known_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x ** 3 + 0.3 * rng.normal(size=40)  # monotone plus noise: no ties
    d = rank(x) - rank(y)
    n = len(x)
    assert spearman(x, y) == pytest.approx(1 - 6 * (d ** 2).sum() / (n * (n ** 2 - 1)))
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert np.isnan(pearson(x, np.ones(n)))


def test_bootstrap_interval_covers_and_narrows_with_more_models():
    rng = np.random.default_rng(1)

    def width(n: int) -> float:
        x = rng.normal(size=n)
        y = 0.6 * x + 0.8 * rng.normal(size=n)  # true correlation 0.6
        low, high = bootstrap_interval(pearson, [x, y], n_boot=500, seed=0)
        assert low < pearson(x, y) < high
        return high - low

    assert width(400) < 0.5 * width(20)


def _clusterability(rows: list[tuple[str, float, float, str, str]]) -> pa.Table:
    """(model, top1, clustered fraction, family, pretrain) all-sizes rows."""
    return pa.Table.from_pylist([
        {"model_id": m, "kernel_size": None, "n_filters": 10, "n_invalid": 0, "n_clustered": 1,
         "clustered_fraction": f, "threshold": 0.8, "sign_invariant": False, "top1": t,
         "family": fam, "pretrain": pre} for m, t, f, fam, pre in rows],
        schema=schemas.CLUSTERABILITY)


def test_correlation_table_scopes_groups_and_caveats():
    rows = [(f"a{i}", 70.0 + i, 0.5 + 0.04 * i, "alpha", "in1k") for i in range(6)]
    rows += [(f"b{i}", 80.0 + i, 0.9 - 0.01 * i, "beta", "in22k") for i in range(3)]
    table = correlation_table(_clusterability(rows), n_boot=300)
    got = {(r["statistic"], r["scope"]): r for r in table.to_pylist()}
    alpha = got["spearman", "alpha"]
    assert (alpha["n"], alpha["estimate"], alpha["note"]) == (6, pytest.approx(1.0), None)
    beta = got["spearman", "beta"]
    assert beta["estimate"] == pytest.approx(-1.0) and "fewer than 5 models (3)" in beta["note"]
    assert beta["ci_low"] is None and beta["ci_high"] is None
    assert got["pearson", "all"]["n"] == 9
    difference = got["mean_difference", "in22k"]
    expected = np.mean([0.9, 0.89, 0.88]) - np.mean([0.5 + 0.04 * i for i in range(6)])
    assert difference["estimate"] == pytest.approx(expected)
    assert (difference["n"], difference["n_reference"]) == (3, 6)


def test_too_few_models_give_no_estimate():
    table = correlation_table(_clusterability([("a", 70.0, 0.5, "alpha", "in22k"),
                                               ("b", 71.0, 0.6, "alpha", "in22k")]))
    got = {(r["statistic"], r["scope"]): r for r in table.to_pylist()}
    assert got["spearman", "all"]["estimate"] is None
    assert "too few" in got["spearman", "all"]["note"]
    assert "no in1k model" in got["mean_difference", "in22k"]["note"]


def test_the_seed_range_of_a_correlation_is_each_seeds_own_estimate():
    """Five models; the consensus fractions rise with top-1 (Spearman +1). Seed 0's own sets
    give fractions that fall with it (-1), seed 1's rise but one pair swaps (+0.9): the range
    is -1 .. +0.9, the consensus estimate still +1."""
    rows = [(f"m{i}", 70.0 + i, 0.5 + 0.05 * i, "alpha", "in1k") for i in range(5)]
    table = _clusterability(rows)
    seeds = [[0.9 - 0.1 * i, 0.5 + 0.05 * i] for i in range(5)]
    seeds[3][1], seeds[4][1] = seeds[4][1], seeds[3][1]
    table = table.set_column(table.schema.get_field_index("clustered_fraction_by_seed"),
                             schemas.CLUSTERABILITY.field("clustered_fraction_by_seed"),
                             pa.array(seeds, pa.list_(pa.float64())))
    got = {(r["statistic"], r["scope"]): r
           for r in correlation_table(table, n_boot=200).to_pylist()}
    spearman_all = got["spearman", "all"]
    assert spearman_all["estimate"] == pytest.approx(1.0)
    assert spearman_all["estimate_seed_min"] == pytest.approx(-1.0)
    assert spearman_all["estimate_seed_max"] == pytest.approx(0.9)
    # without every model's per-seed fractions there is no range
    plain = correlation_table(_clusterability(rows), n_boot=200).to_pylist()
    assert all(r["estimate_seed_min"] is None for r in plain)
