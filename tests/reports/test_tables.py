import pyarrow as pa
import pytest

from dwscan import schemas
from dwscan.reports.tables import clusterability_table, format_clusterability, threshold_sweep_table


def _assignments(rows: list[tuple[str, int, int | None, str | None]],
                 family_cosine: list[float | None] | None = None,
                 master_key: list[int | None] | None = None,
                 master_key_cosine: list[float | None] | None = None) -> pa.Table:
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
    assert header[4:8] == ["clustered", "families", "master", "keys"]
    a_line = next(line for line in text.splitlines() if line.startswith("a ") and " all " in line)
    assert a_line.split()[4:7] == ["50.0%", "100.0%", "-"]  # clustered, families, master keys


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
