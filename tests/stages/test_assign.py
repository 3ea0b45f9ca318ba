import numpy as np
import pyarrow as pa
import pytest

from dwscan import schemas
from dwscan.io.arrays import matrices_to_list_array
from dwscan.io.template_index import (
    FAISS_DEVICE_ENV,
    TemplateIndex,
    chance_clustered_fraction,
    choose_index_device,
    index_device,
)
from dwscan.method.preprocess import centre_and_normalise
from dwscan.stages.assign import assign_kernels
from dwscan.testing.synthetic import noisy_copies, planted_patterns


def kernels_table(weights: np.ndarray, k: int, model_id: str = "m") -> pa.Table:
    n = len(weights)
    return pa.table({
        "model_id": [model_id] * n, "layer": ["l"] * n,
        "layer_index": pa.array([0] * n, pa.int32()), "depth": pa.array([0.0] * n, pa.float32()),
        "channel": pa.array(range(n), pa.int32()), "kernel_size": pa.array([k] * n, pa.int32()),
        "weights": matrices_to_list_array([weights]),
    }, schema=schemas.KERNELS)


def test_faiss_nearest_equals_brute_force_cosine():
    rng = np.random.default_rng(0)
    templates, _ = centre_and_normalise(rng.normal(size=(16, 49)))
    queries, _ = centre_and_normalise(rng.normal(size=(5000, 49)))
    ids, cos = TemplateIndex(templates).nearest(queries)
    brute = queries @ templates.T
    np.testing.assert_array_equal(ids, brute.argmax(axis=1))
    np.testing.assert_allclose(cos, brute.max(axis=1), atol=1e-5)


def test_threshold_invalid_rows_and_raw_scale():
    e = np.eye(9, dtype=np.float32)
    t0, _ = centre_and_normalise(e[:1] - e[1:2])
    t1, _ = centre_and_normalise(e[2:3] - e[3:4])
    index = {3: TemplateIndex(np.concatenate([t0, t1]))}
    # 5*t0 + 2: cosine 1 to t0; -t1: cosine -1 to t1, 0 to t0; then a kernel at cosine
    # 1/sqrt(1 + 1.3^2) ~ 0.61 to t1; a zero kernel; a NaN kernel
    halfway = t1[0] + 1.3 * (e[4] - e[5]) / np.sqrt(2)
    weights = np.stack([5 * t0[0] + 2, -t1[0], halfway, np.zeros(9), np.full(9, np.nan)])
    out = assign_kernels(kernels_table(weights, 3), index, threshold=0.8,
                         families=True).to_pylist()
    assert out[0]["template_id"] == 0 and out[0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert out[1]["template_id"] is None and out[1]["nearest_template_id"] == 0
    assert out[2]["nearest_template_id"] == 1 and out[2]["template_id"] is None
    assert out[2]["cosine"] == pytest.approx(1 / np.sqrt(1 + 1.3**2), abs=1e-4)
    assert [r["invalid_reason"] for r in out] == [None, None, None, "zero", "non_finite"]
    assert out[3]["cosine"] is None and out[4]["nearest_template_id"] is None
    # the yardstick: scored for valid kernels only; no master key at 3x3
    assert all(0 <= r["family_cosine"] <= 1 + 1e-6 for r in out[:3])
    assert out[3]["family_cosine"] is None and out[4]["family_cosine"] is None
    assert {r["master_key"] for r in out} == {None}
    # without --family-yardstick (the default: the search is slow) nothing is scored
    plain = assign_kernels(kernels_table(weights, 3), index, threshold=0.8).to_pylist()
    assert {r["family_cosine"] for r in plain} == {None}


def test_noisy_copies_are_assigned_to_their_template():
    truth = np.stack([p.weights(5) for p in planted_patterns(5)])
    raw, which = noisy_copies(truth, 200, noise=0.3, rng=np.random.default_rng(1))
    out = assign_kernels(kernels_table(raw, 5), {5: TemplateIndex(truth)}, threshold=0.8)
    assert np.array_equal(out.column("template_id").to_numpy(), which)


def test_chance_level_falls_with_kernel_size():
    rng = np.random.default_rng(0)
    by_size = {}
    for k in (3, 5, 7):
        templates, _ = centre_and_normalise(rng.normal(size=(10, k * k)))
        by_size[k] = chance_clustered_fraction(TemplateIndex(templates), 0.6, n=20000)
    assert by_size[3] > by_size[5] > by_size[7] >= 0
    assert 0.01 < by_size[3] < 0.5


def test_sign_invariant_index_matches_negatives_with_sign():
    e = np.eye(4, dtype=np.float32)
    index = TemplateIndex(e[:2], sign_invariant=True)
    ids, cos, signs = index.nearest_with_sign(np.stack([e[0], -e[0], -e[1]]))
    assert ids.tolist() == [0, 0, 1] and signs.tolist() == [1, -1, -1]
    np.testing.assert_allclose(cos, 1.0)
    ids, cos = TemplateIndex(e[:2]).nearest(np.stack([-e[0]]))
    assert cos[0] <= 0.0


def test_a_file_assigned_in_batches_equals_one_pass(tmp_path):
    from dwscan.io.arrays import matrices_to_list_array as to_list
    from dwscan.io.storage import read_table, write_table
    from dwscan.io.template_index import template_indexes
    from dwscan.stages.assign import assign_model_file

    truth = np.stack([p.weights(3) for p in planted_patterns(3)])
    raw, _ = noisy_copies(truth, 7, noise=0.5, rng=np.random.default_rng(2))
    raw[3] = 0.0  # an invalid kernel inside a batch
    kernels = kernels_table(raw, 3)
    write_table(kernels, tmp_path / "k.parquet", schemas.KERNELS)
    templates = pa.table({"kernel_size": pa.array([3] * 8, pa.int32()),
                          "template_id": pa.array(range(8), pa.int32()),
                          "weights": to_list([truth])})
    n = assign_model_file(tmp_path / "k.parquet", templates, 0.8, tmp_path / "a.parquet",
                          batch_size=5)
    whole = assign_kernels(kernels, template_indexes(templates), 0.8)
    assert n == 56 and read_table(tmp_path / "a.parquet").equals(whole.cast(schemas.ASSIGNMENTS))


def test_one_worker_assigning_against_one_set_then_another_uses_each_sets_templates(tmp_path):
    """A worker keeps the indexes of the last template set it assigned against (by its id, a
    hash of its templates): a file assigned against set B after set A gets B's templates, and
    A again gets A's, each what a fresh process would give."""
    from dwscan.io.arrays import matrices_to_list_array as to_list
    from dwscan.io.storage import read_table, write_table
    from dwscan.io.template_index import template_indexes
    from dwscan.io.template_set import with_template_set_id
    from dwscan.stages.assign import assign_model_file

    truth = np.stack([p.weights(3) for p in planted_patterns(3)])
    raw, _ = noisy_copies(truth, 7, noise=0.5, rng=np.random.default_rng(2))
    kernels = kernels_table(raw, 3)
    write_table(kernels, tmp_path / "k.parquet", schemas.KERNELS)

    def template_set(rows: np.ndarray) -> pa.Table:
        return with_template_set_id(pa.table({
            "template_set": pa.array([""] * len(rows), pa.string()),
            "kernel_size": pa.array([3] * len(rows), pa.int32()),
            "template_id": pa.array(range(len(rows)), pa.int32()), "weights": to_list([rows])}))

    first, second = template_set(truth), template_set(truth[::-1][:5])
    for n, templates in enumerate([first, second, first]):
        out = tmp_path / f"a{n}.parquet"
        assign_model_file(tmp_path / "k.parquet", templates, 0.8, out)
        fresh = assign_kernels(kernels, template_indexes(templates), 0.8,
                               templates.column("template_set")[0].as_py())
        assert read_table(out).equals(fresh.cast(schemas.ASSIGNMENTS)), n
    assert not read_table(tmp_path / "a0.parquet").equals(read_table(tmp_path / "a1.parquet"))


def test_a_kernel_size_without_templates_leaves_its_kernels_unclustered():
    """A size where no kernel reached the threshold has no templates: its valid kernels are
    unclustered with no nearest template, and the other size is assigned as usual."""
    rng = np.random.default_rng(1)
    t5, _ = centre_and_normalise(rng.normal(size=(2, 25)))
    table = pa.concat_tables([kernels_table(rng.normal(size=(4, 9)).astype(np.float32), 3),
                              kernels_table(np.repeat(t5[:1], 3, 0) * 2.0, 5)])
    out = assign_kernels(table, {5: TemplateIndex(t5)}, threshold=0.8)
    rows = out.to_pylist()
    three, five = rows[:4], rows[4:]
    assert all(r["template_id"] is None and r["nearest_template_id"] is None
               and r["cosine"] is None and r["invalid_reason"] is None for r in three)
    assert [r["template_id"] for r in five] == [0, 0, 0]
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-5) for r in five)


def test_the_index_device_is_the_gpu_only_when_faiss_can_use_one():
    assert choose_index_device(num_gpus=2, has_gpu_api=True) == "gpu"
    assert choose_index_device(num_gpus=0, has_gpu_api=True) == "cpu"  # GPU build, no GPU
    assert choose_index_device(num_gpus=1, has_gpu_api=False) == "cpu"  # faiss-cpu
    assert choose_index_device(num_gpus=1, has_gpu_api=True, requested="cpu") == "cpu"
    assert choose_index_device(num_gpus=1, has_gpu_api=True, requested=" GPU ") == "gpu"
    assert choose_index_device(num_gpus=1, has_gpu_api=True, requested="") == "gpu"  # unset: auto
    with pytest.raises(ValueError, match="has no GPU support"):
        choose_index_device(num_gpus=0, has_gpu_api=False, requested="gpu")
    with pytest.raises(ValueError, match="sees no GPU"):
        choose_index_device(num_gpus=0, has_gpu_api=True, requested="gpu")
    with pytest.raises(ValueError, match="expected one of auto, cpu, gpu"):
        choose_index_device(num_gpus=1, has_gpu_api=True, requested="cuda")


def test_the_env_override_reaches_the_index(monkeypatch):
    """Here (faiss-cpu or no GPU) auto and cpu give CPU indexes that search; gpu is refused."""
    import faiss

    gpu_here = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    templates, _ = centre_and_normalise(np.random.default_rng(0).normal(size=(4, 9)))
    for requested in ("cpu", "auto"):
        monkeypatch.setenv(FAISS_DEVICE_ENV, requested)
        expected = "gpu" if gpu_here and requested == "auto" else "cpu"
        assert index_device() == expected
        ids, _ = TemplateIndex(templates).nearest(templates)
        np.testing.assert_array_equal(ids, np.arange(4))
    if not gpu_here:
        monkeypatch.setenv(FAISS_DEVICE_ENV, "gpu")
        with pytest.raises(ValueError, match=f"{FAISS_DEVICE_ENV}=gpu"):
            TemplateIndex(templates)


def test_each_seeds_own_template_of_every_kernel_a_seed_without_templates_included():
    """Three seeds at 3x3: seed 0 has t0 and t1, seed 1 none at this size, seed 2 only t1 (its
    template 0). A kernel on t0 is clustered under seed 0 alone; one on t1 under seeds 0 and 2;
    the list keeps each seed in its place (seed 1's entry null), an invalid kernel has none."""
    from dwscan.io.template_index import seed_template_indexes

    e = np.eye(9, dtype=np.float32)
    t0, _ = centre_and_normalise(e[:1] - e[1:2])
    t1, _ = centre_and_normalise(e[2:3] - e[3:4])
    rows = [(0, 0, t0[0]), (0, 1, t1[0]), (2, 0, t1[0])]
    seeds = pa.table({
        "kernel_size": pa.array([3] * 3, pa.int32()),
        "seed_index": pa.array([r[0] for r in rows], pa.int32()),
        "n_seeds": pa.array([3] * 3, pa.int32()),
        "template_id": pa.array([r[1] for r in rows], pa.int32()),
        "weights": matrices_to_list_array([np.stack([r[2] for r in rows])])})
    indexes = seed_template_indexes(seeds)
    assert len(indexes[3]) == 3 and indexes[3][1] is None
    weights = np.stack([t0[0], t1[0], np.zeros(9)])
    out = assign_kernels(kernels_table(weights, 3), {3: TemplateIndex(np.concatenate([t0, t1]))},
                         threshold=0.8, seed_indexes=indexes).column("seed_template_ids")
    assert out.to_pylist() == [[0, None, None], [1, None, 0], None]


def test_each_size_lists_its_own_seeds_when_sizes_have_different_numbers():
    """3x3 with two seeds (a third left out: untrained_members), 5x5 with three: each kernel's
    list has its size's seeds, in their places."""
    from dwscan.io.template_index import seed_template_indexes

    t3, _ = centre_and_normalise(np.eye(9, dtype=np.float32)[:1] - np.eye(9)[1:2])
    t5, _ = centre_and_normalise(np.eye(25, dtype=np.float32)[:1] - np.eye(25)[1:2])
    seeds = pa.table({
        "kernel_size": pa.array([3, 3, 5, 5, 5], pa.int32()),
        "seed_index": pa.array([0, 1, 0, 1, 2], pa.int32()),
        "n_seeds": pa.array([2, 2, 3, 3, 3], pa.int32()),
        "template_id": pa.array([0, 0, 0, 0, 0], pa.int32()),
        "weights": matrices_to_list_array([np.repeat(t3, 2, 0).reshape(2, 9),
                                           np.repeat(t5, 3, 0).reshape(3, 25)])})
    indexes = seed_template_indexes(seeds)
    assert [len(indexes[3]), len(indexes[5])] == [2, 3]
    kernels = pa.concat_tables([kernels_table(t3, 3), kernels_table(t5, 5)])
    out = assign_kernels(kernels, {3: TemplateIndex(t3), 5: TemplateIndex(t5)}, threshold=0.8,
                         seed_indexes=indexes).column("seed_template_ids")
    assert out.to_pylist() == [[0, 0], [0, 0, 0]]
