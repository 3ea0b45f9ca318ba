import numpy as np
import pyarrow as pa
import pytest

from dwscan import schemas
from dwscan.reports.tables import (
    clusterability_table,
    format_clusterability,
    pattern_counts,
    pattern_shares_table,
    seeds_by_size,
    threshold_sweep_table,
)


def _assignments(rows: list[tuple[str, int, int | None, str | None]],
                 family_cosine: list[float | None] | None = None,
                 master_key: list[int | None] | None = None,
                 master_key_cosine: list[float | None] | None = None,
                 seed_ids: list[list[int | None] | None] | None = None) -> pa.Table:
    """(model, kernel size, template id or None, invalid reason or None) per kernel; the
    yardstick columns as given (family_cosine 0.9 for valid kernels unless given)."""
    n = len(rows)
    if family_cosine is None:
        family_cosine = [None if r[3] else 0.9 for r in rows]
    return pa.table({
        "model_id": [r[0] for r in rows], "layer": ["l"] * n,
        "layer_index": pa.array([0] * n, pa.int32()), "depth": pa.array([0.0] * n, pa.float32()),
        "channel": pa.array(range(n), pa.int32()),
        "kernel_size": pa.array([r[1] for r in rows], pa.int32()),
        "template_id": pa.array([r[2] for r in rows], pa.int32()),
        "nearest_template_id": pa.array([None if r[3] else 0 for r in rows], pa.int32()),
        "cosine": pa.array([None if r[3] else 0.9 for r in rows], pa.float32()),
        "sign": pa.array([None if r[3] else 1 for r in rows], pa.int8()),
        "invalid_reason": pa.array([r[3] for r in rows], pa.string()),
        "template_set": pa.array(["ts1"] * n, pa.string()),
        "family_cosine": pa.array(family_cosine, pa.float32()),
        "master_key": pa.array(master_key or [None] * n, pa.int32()),
        "master_key_cosine": pa.array(master_key_cosine or [None] * n, pa.float32()),
        "seed_template_ids": pa.array(seed_ids or [None] * n, pa.list_(pa.int32())),
    }, schema=schemas.ASSIGNMENTS)


def test_counts_fractions_chance_and_top1():
    rows = ([("a", 3, 0, None)] * 3 + [("a", 3, None, None)] + [("a", 3, None, "zero")]
            + [("a", 5, 1, None)] * 1 + [("a", 5, None, None)] * 3
            + [("b", 5, 2, None)] * 2)
    metadata = pa.Table.from_pylist([
        {"model_id": "a", "accuracy_key": "arch_a.in1k", "top1": 75.5, "family": "arch",
         "accuracy_rows": 1}, {"model_id": "b", "accuracy_rows": 0}],
        schema=schemas.MODEL_METADATA)
    table = clusterability_table(_assignments(rows), 0.8, chance={3: 0.1, 5: 0.0},
                                 metadata=metadata)
    assert table.schema.equals(schemas.CLUSTERABILITY, check_metadata=False)
    got = {(r["model_id"], r["kernel_size"]): r for r in table.to_pylist()}
    assert set(got) == {("a", None), ("a", 3), ("a", 5), ("b", None), ("b", 5)}
    a3, a5, a = got["a", 3], got["a", 5], got["a", None]
    assert (a3["n_filters"], a3["n_invalid"], a3["n_clustered"]) == (5, 1, 3)
    assert a3["clustered_fraction"] == pytest.approx(3 / 4)
    assert a5["clustered_fraction"] == pytest.approx(1 / 4)
    assert (a["n_filters"], a["n_invalid"], a["n_clustered"]) == (9, 1, 4)
    assert a["clustered_fraction"] == pytest.approx(4 / 8)
    assert a["chance_fraction"] == pytest.approx((4 * 0.1 + 4 * 0.0) / 8)
    assert a["top1"] == 75.5 and a3["top1"] == 75.5 and got["b", None]["top1"] is None
    assert a3["family"] == "arch" and a3["accuracy_key"] == "arch_a.in1k"
    assert got["b", 5]["clustered_fraction"] == 1.0
    text = format_clusterability(table)
    assert "50.0%" in text and "75.500" in text
    header = text.splitlines()[0].split()
    assert header[4:10] == ["clustered", "seed", "range", "families", "master", "keys"]
    a_line = next(line for line in text.splitlines() if line.startswith("a ") and " all " in line)
    # clustered, seed range (none: no seed sets), families, master keys
    assert a_line.split()[4:8] == ["50.0%", "-", "100.0%", "-"]


def test_yardstick_fractions_and_master_key_counts():
    """family_fraction counts valid kernels at family_cosine >= threshold (invalid ones are left
    out); master keys only at 7x7, per filter; unscored assignments (before schema 1.6) give
    null, never a share of 0."""
    rows = ([("a", 3, None, None)] * 4 + [("a", 3, None, "zero")] + [("a", 7, None, None)] * 5
            + [("b", 5, None, None)] * 2)
    family = [0.95, 0.81, 0.79, 0.2, None, 0.9, 0.9, 0.5, 0.85, 0.1, None, None]
    key = [None] * 5 + [2, 2, 5, 5, 1] + [None] * 2
    key_cosine = [None] * 5 + [0.99, 0.7, 0.85, 0.8, 0.95] + [None] * 2
    table = clusterability_table(_assignments(rows, family, key, key_cosine), 0.8)
    got = {(r["model_id"], r["kernel_size"]): r for r in table.to_pylist()}
    assert got["a", 3]["family_fraction"] == pytest.approx(2 / 4)
    assert got["a", 7]["family_fraction"] == pytest.approx(3 / 5)
    assert got["a", None]["family_fraction"] == pytest.approx(5 / 9)
    assert got["a", 3]["master_key_fraction"] is None and got["a", 3]["master_key_counts"] is None
    assert got["a", 7]["master_key_fraction"] == pytest.approx(4 / 5)
    assert got["a", 7]["master_key_counts"] == [(1, 1), (2, 1), (5, 2)]
    assert got["a", None]["master_key_fraction"] == pytest.approx(4 / 5)  # of its 7x7 kernels
    assert got["a", None]["master_key_counts"] == [(1, 1), (2, 1), (5, 2)]
    assert got["b", 5]["family_fraction"] is None and got["b", None]["family_fraction"] is None
    assert got["b", None]["master_key_fraction"] is None


def test_a_zoo_prints_its_most_and_least_clustered_models_only():
    """30 models, model i with i+1 of 31 kernels clustered: the text names the 3 most and 3 least
    clustered (all sizes), says how many there are, and leaves the middle out."""
    rows = []
    for i in range(30):
        rows += [(f"m{i:02d}", 5, 0, None)] * (i + 1) + [(f"m{i:02d}", 5, None, None)] * (30 - i)
    text = format_clusterability(clusterability_table(_assignments(rows), 0.8), max_models=6)
    shown = [line.split()[0] for line in text.splitlines()[1:7]]
    assert shown == ["m29", "m28", "m27", "m02", "m01", "m00"]
    assert "m15" not in text and "5x5" not in text and "30 models" in text
    assert len(text.splitlines()) == 8


def test_threshold_sweep_counts_by_hand():
    table = _assignments([("a", 3, 0, None)] * 4 + [("a", 3, None, "zero")])
    cosines = pa.array([0.52, 0.71, 0.9, 0.96, None], pa.float32())
    table = table.set_column(table.schema.get_field_index("cosine"), "cosine", cosines)
    sweep = threshold_sweep_table(table)
    assert sweep.schema.equals(schemas.THRESHOLD_SWEEP, check_metadata=False)
    got = {(r["kernel_size"], r["threshold"]): r for r in sweep.to_pylist()}
    assert sorted({t for _, t in got}) == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    expected = {0.5: 4, 0.55: 3, 0.7: 3, 0.75: 2, 0.9: 2, 0.95: 1}
    for t, n in expected.items():
        for k in (None, 3):
            assert got[k, t]["n_clustered"] == n and got[k, t]["n_valid"] == 4
            assert got[k, t]["clustered_fraction"] == pytest.approx(n / 4)


def _named(rows: list[tuple], seeds: bool) -> pa.Table:
    """TEMPLATES-like (or SEED_TEMPLATES-like) rows: (size, [seed index,] id, family, polarity)."""
    names = ["kernel_size", *(["seed_index"] if seeds else []), "template_id", "family", "polarity"]
    return pa.table({name: [r[i] for r in rows] for i, name in enumerate(names)})


def test_with_three_seeds_the_headline_is_the_median_of_the_seeds_own_fractions():
    """Model a: four valid 3x3 kernels, the consensus clusters one; seeds 0, 1, 2 cluster 4, 3
    and 2 of them with their own sets: the headline is 3/4, the consensus's 1/4 is kept beside
    it. Two valid 5x5 kernels, clustered by 2, 0 and 1 seeds: on the all-sizes row each seed's
    own total counts (6, 3, 3 of 6: median 3/6), not the sum of the sizes' medians (4)."""
    seed_ids = [[0, 0, 0], [0, 0, 0], [0, 0, None], [0, None, None],
                [0, None, 0], [0, None, None]]
    rows = [("a", 3, 0, None)] + [("a", 3, None, None)] * 3 + [("a", 5, None, None)] * 2
    got = {r["kernel_size"]: r for r in clusterability_table(
        _assignments(rows, seed_ids=seed_ids), 0.8).to_pylist()}
    assert got[3]["clustered_fraction"] == pytest.approx(3 / 4)
    assert got[3]["clustered_fraction_consensus"] == pytest.approx(1 / 4)
    assert got[3]["n_clustered"] == 1  # as the assignments have it
    assert got[3]["clustered_fraction_by_seed"] == pytest.approx([1.0, 0.75, 0.5])
    assert got[5]["clustered_fraction"] == pytest.approx(1 / 2)
    assert got[None]["clustered_fraction"] == pytest.approx(3 / 6)
    assert got[None]["clustered_fraction_consensus"] == pytest.approx(1 / 6)
    assert "50.0%  50.0-100.0%" in format_clusterability(clusterability_table(
        _assignments(rows, seed_ids=seed_ids), 0.8))


def test_a_size_with_a_seed_left_out_has_its_own_seeds_and_the_all_sizes_row_sums_the_sizes():
    """3x3 with three seeds (one left out of four: untrained_members), 5x5 with four. Each
    size's median and range are over its own seeds; the seeds of two sizes cannot be paired,
    so the all-sizes row sums the sizes' headlines (1 + 1.5 of 5 kernels) and their lows and
    highs (0 + 0, 2 + 2). The 3x3 kinds' shares are over its three seeds too."""
    seed_ids = [[0, 0, None], [0, None, None], [None, None, None],  # 3x3: 2, 1, 0 of 3
                [0, 0, 0, None], [0, 0, None, None]]  # 5x5: 2, 2, 1, 0 of 2
    rows = [("a", 3, 0, None), ("a", 3, None, None), ("a", 3, None, None),
            ("a", 5, 0, None), ("a", 5, 0, None)]
    table = _assignments(rows, seed_ids=seed_ids)
    got = {r["kernel_size"]: r for r in clusterability_table(table, 0.8).to_pylist()}
    assert got[3]["clustered_fraction_by_seed"] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert got[3]["clustered_fraction"] == pytest.approx(1 / 3)
    assert got[5]["clustered_fraction_by_seed"] == pytest.approx([1.0, 1.0, 0.5, 0.0])
    assert got[5]["clustered_fraction"] == pytest.approx(3 / 4)  # median of 2, 2, 1, 0 of 2
    assert got[None]["clustered_fraction"] == pytest.approx(2.5 / 5)
    assert got[None]["clustered_fraction_consensus"] == pytest.approx(3 / 5)
    assert got[None]["clustered_fraction_seed_min"] == pytest.approx(0.0)
    assert got[None]["clustered_fraction_seed_max"] == pytest.approx(4 / 5)
    assert got[None]["clustered_fraction_by_seed"] is None
    templates = _named([(3, 0, "centre-surround", "on"), (5, 0, "centre-surround", "on")],
                       False)
    seeds = _named([(3, i, 0, "centre-surround", "on") for i in range(3)]
                   + [(5, i, 0, "centre-surround", "on") for i in range(4)], True)
    shares = {r["kernel_size"]: r for r in pattern_shares_table(
        pattern_counts(table, templates, seeds)).to_pylist() if r["model_id"] == "a"}
    assert (shares[3]["share"], shares[3]["share_seed_max"]) == (1 / 3, 2 / 3)
    assert (shares[5]["share"], shares[5]["share_seed_min"]) == (3 / 4, 0.0)


def test_sizes_that_kept_different_seeds_of_one_count_are_not_paired_by_place():
    """Two seeds kept at 3x3 and at 5x5, but not the same two (5x5 lost seed 11, 3x3 seed 12):
    place 1 is seed 12 at 5x5 and seed 11 at 3x3, so the all-sizes row is the envelope; with
    the same seeds kept it is each seed's own total."""
    seed_ids = [[0, None], [0, 0], [None, 0], [0, 0]]  # 3x3: 2, 1 of 2; 5x5: 1, 2 of 2
    rows = [("a", 3, 0, None), ("a", 3, 0, None), ("a", 5, 0, None), ("a", 5, 0, None)]
    table = _assignments(rows, seed_ids=seed_ids)
    seeds = _named([(3, 0, 0, "centre-surround", "on"), (3, 1, 0, "centre-surround", "on"),
                    (5, 0, 0, "centre-surround", "on"), (5, 1, 0, "centre-surround", "on")], True)
    seeds = seeds.append_column("seed", pa.array([10, 11, 10, 12])).append_column(
        "n_seeds", pa.array([2, 2, 2, 2]))
    lists = seeds_by_size(seeds)
    assert lists == {3: (10, 11), 5: (10, 12)}
    got = {r["kernel_size"]: r for r in clusterability_table(table, 0.8,
                                                             seed_lists=lists).to_pylist()}
    assert got[None]["clustered_fraction_by_seed"] is None  # no seed has a total
    assert got[None]["clustered_fraction_seed_min"] == pytest.approx((1 + 1) / 4)
    assert got[None]["clustered_fraction_seed_max"] == pytest.approx((2 + 2) / 4)
    same = clusterability_table(table, 0.8, seed_lists={3: (10, 11), 5: (10, 11)}).to_pylist()
    assert [r for r in same if r["kernel_size"] is None][0]["clustered_fraction_by_seed"] == \
        pytest.approx([3 / 4, 3 / 4])


def test_seed_ranges_and_pattern_shares_count_by_hand():
    """Model a, 3x3: four valid kernels and one invalid. The consensus clusters three (two on
    template 0, on-centre; one on template 1, off-centre). Seed 0's own set clusters all four,
    seed 1's two: so the fraction is 3/4 with range 2/4..4/4. Seed 0 names its template 5 off-
    centre, seed 1 its template 0 on-centre."""
    seed_ids = [[5, 0], [5, 0], [5, None], [5, None], None]
    table = _assignments([("a", 3, 0, None), ("a", 3, 0, None), ("a", 3, 1, None),
                          ("a", 3, None, None), ("a", 3, None, "zero")], seed_ids=seed_ids)
    row = {(r["model_id"], r["kernel_size"]): r
           for r in clusterability_table(table, 0.8).to_pylist()}[("a", 3)]
    assert row["clustered_fraction"] == row["clustered_fraction_consensus"] == pytest.approx(3 / 4)
    assert (row["clustered_fraction_seed_min"], row["clustered_fraction_seed_max"]) == (0.5, 1.0)
    assert "75.0%  50.0-100.0%" in format_clusterability(clusterability_table(table, 0.8))
    templates = _named([(3, 0, "centre-surround", "on"), (3, 1, "centre-surround", "off")], False)
    seeds = _named([(3, 0, 5, "centre-surround", "off"), (3, 1, 0, "centre-surround", "on")], True)
    shares = {(r["model_id"], r["polarity"]): r for r in pattern_shares_table(
        pattern_counts(table, templates, seeds)).to_pylist()}
    on, off = shares["a", "on"], shares["a", "off"]
    assert (on["n_valid"], on["n_kernels"], on["share"]) == (4, 2, 0.5)
    assert (on["share_seed_min"], on["share_seed_max"]) == (0.0, 0.5)  # seed 0: none; seed 1: 2
    assert (off["n_kernels"], off["share"]) == (1, 0.25)
    assert (off["share_seed_min"], off["share_seed_max"]) == (0.0, 1.0)  # seed 0: 4; seed 1: 0
    # the zoo's rows pool the models: a second model b, one valid kernel on template 0 under all
    more = _assignments([("b", 3, 0, None)], seed_ids=[[5, 0]])
    counts = {**pattern_counts(table, templates, seeds), **pattern_counts(more, templates, seeds)}
    zoo = {r["polarity"]: r for r in pattern_shares_table(counts).to_pylist()
           if r["model_id"] is None}
    assert (zoo["on"]["n_valid"], zoo["on"]["n_kernels"]) == (5, 3)
    assert (zoo["on"]["share_seed_min"], zoo["on"]["share_seed_max"]) == (0.0, 3 / 5)
    assert (zoo["off"]["share_seed_min"], zoo["off"]["share_seed_max"]) == (0.0, 5 / 5)


def test_with_three_seeds_a_kinds_share_is_the_median_of_the_seeds_own():
    """Model a, 3x3, four valid kernels; the consensus puts one on an on-centre template. Seed
    0 names its template 5 on-centre (three kernels), seed 1 its 0 on-centre (two) and 1
    off-centre (one), seed 2 its 7 off-centre (two). On: 3, 2, 0 -> median 2 of 4; off: 0, 1,
    2 -> 1 of 4. The consensus's own share is kept beside it."""
    seed_ids = [[5, 0, 7], [5, 0, 7], [5, 1, None], [None, None, None]]
    table = _assignments([("a", 3, 0, None)] + [("a", 3, None, None)] * 3, seed_ids=seed_ids)
    templates = _named([(3, 0, "centre-surround", "on")], False)
    seeds = _named([(3, 0, 5, "centre-surround", "on"), (3, 1, 0, "centre-surround", "on"),
                    (3, 1, 1, "centre-surround", "off"), (3, 2, 7, "centre-surround", "off")],
                   True)
    rows = pattern_shares_table(pattern_counts(table, templates, seeds)).to_pylist()
    for model_id in ("a", None):  # one model: the zoo's rows are the same
        got = {r["polarity"]: r for r in rows if r["model_id"] == model_id}
        assert (got["on"]["share"], got["on"]["share_consensus"]) == (2 / 4, 1 / 4)
        assert (got["on"]["share_seed_min"], got["on"]["share_seed_max"]) == (0.0, 3 / 4)
        assert (got["off"]["share"], got["off"]["share_consensus"]) == (1 / 4, 0.0)
        assert got["off"]["n_kernels"] == 0


def test_the_kinds_caption_says_whose_share_when_a_size_kept_fewer_than_three_seeds():
    """Three seeds at 3x3, two at 5x5 (one left out): the 3x3 shares are medians, the 5x5 ones
    the consensus's, and the caption says so; with three at both it says median alone."""
    from dwscan.reports.patterns import format_kinds

    counts = {("a", 3): (4, {("centre-surround", "on"): (2, np.array([2, 1, 3]))}),
              ("a", 5): (4, {("centre-surround", "on"): (1, np.array([1, 2]))})}
    shares = pattern_shares_table(counts)
    templates = pa.Table.from_pylist([
        {"kernel_size": k, "template_id": 0, "label": "on-centre DoG sigma 0.5", "share": 1.0,
         "family": "centre-surround", "polarity": "on", "support": n, "n_seeds": n}
        for k, n in ((3, 3), (5, 2))])
    text = format_kinds(shares, templates)
    assert ("(share of valid kernels, the median of the seeds', the consensus templates' for a "
            "size of fewer than 3 seeds; seed range)") in text
    even = templates.set_column(templates.schema.get_field_index("n_seeds"), "n_seeds",
                                pa.array([3, 3]))
    assert "(share of valid kernels, the median of the seeds'; seed range)" in \
        format_kinds(shares, even)
