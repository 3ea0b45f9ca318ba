"""The zoo benchmark's machinery on a small zoo: a planted zoo served through the loopback hub and
scanned by `dwscan run --hub` gives back every model's planted clustered fraction and the planted
rank correlation with top-1."""

import numpy as np
import pytest

from benchmarks.zoo import run_zoo
from dwscan.io.storage import read_table
from dwscan.testing.synthetic import PLANTED_ARCHITECTURES, write_planted_zoo

pytestmark = pytest.mark.slow


def test_a_planted_zoo_holds_what_its_truth_says(tmp_path):
    from dwscan.stages.extract import extract_depthwise_kernels

    zoo = write_planted_zoo(tmp_path, 4, seed=1)
    truth = read_table(zoo["truth"]).to_pylist()
    assert [t["family"] for t in truth] == list(PLANTED_ARCHITECTURES)
    for t in truth:
        kernels = extract_depthwise_kernels(zoo["models"] / t["name"], t["name"]).kernels
        assert kernels.num_rows == t["n_kernels"]
        assert set(kernels.column("kernel_size").to_pylist()) <= {5, 7}
        assert 0.3 <= t["planted_fraction"] <= 0.9
    accuracy = zoo["accuracy_csv"].read_text().splitlines()
    assert len(accuracy) == 5 and accuracy[1].startswith(f"{truth[0]['accuracy_key']},224,")


def test_a_served_planted_zoo_comes_back_through_dwscan_run(tmp_path):
    # k-means templates: the machinery is under test here (serving, timing, memory, the row);
    # the autoencoder on planted zoos through `dwscan run`: tests/test_run_e2e.py
    row = run_zoo(20, tmp_path, extra_args=("--templates", "kmeans"))
    planted = np.array([p for _, p, _ in row["per_model"]])
    measured = np.array([m for _, _, m in row["per_model"]])
    assert len(planted) == 20 and np.ptp(planted) > 0.3
    assert np.abs(measured - planted).max() <= 0.01, row["per_model"]
    assert abs(row["spearman measured"] - row["spearman planted"]) <= 0.02
    assert row["spearman planted"] > 0.5
    assert row["max abs(fraction - planted)"] == pytest.approx(np.abs(measured - planted).max())
    assert (row["train + templates s"], row["train s"], row["train steps (stop)"]) == (
        None, None, "")  # nothing trained
    assert row["extract s"] > 0 and row["templates s"] > 0 and row["peak tree PSS GiB"] > 0.1
