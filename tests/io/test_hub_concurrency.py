"""Issue 24: many hub models read side by side in one worker, against the hub stand-in with a
round trip added to every answer: the first round trip of a model overlaps its requests, models
overlap each other, the byte budget bounds what they hold, and a deadline, a cap or a kill
ends one model (or the batch) without harm to the others. No Ray: the batch function runs here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dwscan.io.checkpoints import ReadLimits
from dwscan.io.storage import OutputLayout, pending_path, read_table
from dwscan.io.zoo import hub_spec
from dwscan.stages.extract import extract_depthwise_kernels, extract_hub_models_to_parquet
from dwscan.testing.hub_server import Fault, Repo, peak_overlap, shared_hub
from dwscan.testing.synthetic import write_planted_zoo

N_MODELS = 8
LATENCY_S = 0.05


@pytest.fixture(scope="module")
def planted():
    """Eight planted models (four architectures, 4,000 to 5,800 kernels each) on the stand-in as
    conc/<name>, and their local folders."""
    with tempfile.TemporaryDirectory() as folder:
        zoo = write_planted_zoo(Path(folder), N_MODELS, seed=24)
        folders = {f"conc/{f.name}": f for f in sorted(zoo["models"].iterdir())}
        for repo_id, f in folders.items():
            shared_hub().add_repo(repo_id, Repo({p.name: p.read_bytes() for p in f.iterdir()}))
        yield folders


@pytest.fixture
def hub(planted):
    """The shared stand-in with a round trip on every answer, its logs cleared; as it was after."""
    server = shared_hub()
    server.requests.clear()
    server.timeline.clear()
    server.bytes_sent.clear()
    server.latency = LATENCY_S
    yield server
    server.latency = 0.0
    server.faults.clear()


def _ranges(hub, after: int = 0) -> list[tuple[float, float]]:
    """When the stand-in served data ranges of the weights (not a first read from byte 0)."""
    return [(start, end) for method, path, wanted, start, end in hub.timeline[after:]
            if path.endswith("model.safetensors") and wanted and not wanted.startswith("bytes=0-")]


def test_models_in_one_worker_overlap_their_round_trips(hub, planted, tmp_path):
    rows = extract_hub_models_to_parquet([hub_spec(r) for r in planted], tmp_path, threads=8)
    assert [r["status"] for r in rows] == ["ok"] * N_MODELS, rows
    layout = OutputLayout(tmp_path)
    for repo_id, folder in planted.items():  # value for value what a local read gives
        local = extract_depthwise_kernels(folder, repo_id).kernels
        assert read_table(layout.kernels_path(repo_id)).column("weights").equals(
            local.column("weights"))
    # model info, config.json and the weights' first read in one round trip, then one range.
    # Counted for this test's repos only: the stand-in is shared, and a request an earlier test
    # stalled may be answered (and logged) while this one runs
    ours = [r for r in hub.requests if "/conc/" in r[1]]
    assert len(ours) == 4 * N_MODELS, (len(ours), len(hub.requests), ours)
    # one model at a time would have at most its 3 first requests open at once
    assert peak_overlap([(start, end) for *_, start, end in hub.timeline]) >= N_MODELS
    for row, folder in zip(rows, planted.values()):
        assert _floor(folder) <= row["bytes_fetched"] <= 1.1 * _floor(folder), folder.name


def _floor(folder: Path) -> int:
    """The bytes a model's scan needs: its safetensors header, depthwise tensors, config.json."""
    blob = (folder / "model.safetensors").read_bytes()
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + length])
    depthwise = sum(end - begin for name, meta in header.items() if name.endswith("conv_dw.weight")
                    for begin, end in [meta["data_offsets"]])
    return 8 + length + depthwise + (folder / "config.json").stat().st_size


def test_the_byte_budget_bounds_the_ranges_held_at_once(hub, planted, tmp_path):
    specs = [hub_spec(r) for r in planted]
    rows = extract_hub_models_to_parquet(specs, tmp_path / "wide", threads=8)
    assert peak_overlap(_ranges(hub)) > 1  # with room, the models' ranges overlap
    before = len(hub.timeline)
    tight = extract_hub_models_to_parquet(specs, tmp_path / "tight", threads=8, budget_bytes=1)
    assert [r["status"] for r in tight] == [r["status"] for r in rows] == ["ok"] * N_MODELS
    assert peak_overlap(_ranges(hub, before)) == 1  # each model's ranges wait for the last's


def test_a_stalled_model_times_out_and_one_over_a_cap_fails_alone_in_the_batch(hub, planted,
                                                                             tmp_path):
    """The stalled repo's requests never answer within its deadline: it fails 'timed out' at
    the deadline, not after the stall, and every other model of the batch is read."""
    stalled = next(r for r in planted if "convnext" in r)
    hub.faults.append(Fault(f"{stalled}/resolve/", "stall", times=20, seconds=6.0))
    start = time.monotonic()
    rows = extract_hub_models_to_parquet([hub_spec(r) for r in planted], tmp_path, threads=8,
                                         model_timeout=1.5,
                                         limits=ReadLimits(max_kernels=5000))
    elapsed = time.monotonic() - start
    assert elapsed < 5.0  # the stall (6 s) was not waited for
    by_id = {r["model_id"]: r for r in rows}
    assert (by_id[stalled]["status"], by_id[stalled]["error"]) == ("failed",
                                                                   "timed out after 1.5 s")
    for repo_id, row in by_id.items():
        if "efficientnet" in repo_id:  # 5,760 kernels
            assert row["status"] == "failed", row
            assert row["error"] == ("5760 depthwise kernels, over the cap of 5000 per model "
                                    "(--max-kernels)")
        elif repo_id != stalled:
            assert row["status"] == "ok", row


def test_a_batch_killed_midway_leaves_only_pending_files_that_the_next_run_drops(hub, planted,
                                                                                tmp_path):
    from dwscan.run import commit_pending_kernels, remove_partial_writes

    hub.latency = 0.2  # the batch takes seconds: time to kill it midway
    out, token = tmp_path / "out", "20260101T000000Z"
    code = ("import sys\nfrom dwscan.io.zoo import hub_spec\n"
            "from dwscan.stages.extract import extract_hub_models_to_parquet\n"
            "extract_hub_models_to_parquet([hub_spec(r) for r in sys.argv[3:]], sys.argv[1], "
            "token=sys.argv[2], threads=2)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(out), token, *planted],
                               env=os.environ.copy())
    layout = OutputLayout(out)
    pending = [pending_path(layout.kernels_path(r), token) for r in planted]
    deadline = time.monotonic() + 60
    while not any(p.exists() for p in pending):
        assert process.poll() is None and time.monotonic() < deadline, "no model was written"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = sum(p.exists() for p in pending)
    assert 1 <= written < N_MODELS  # killed midway
    assert not list(layout.kernels_dir.glob("*.parquet"))  # nothing in place
    remove_partial_writes(layout)  # what the next run does first: a write cut short,
    commit_pending_kernels(layout)  # and pending files no models.parquet row names
    assert not list(layout.kernels_dir.iterdir())


@pytest.mark.parametrize(("n", "concurrency", "cpus", "expected"), [
    (300, None, 2, (16, None)),  # default: 16 models a worker, one worker per CPU, the rest queued
    (20, None, 8, (3, None)),  # a small zoo is spread over the CPUs (the CPU part is per worker)
    (300, 8, 2, (4, 2)),  # --concurrency 8: 8 models in flight, over two workers
    (300, 1, 2, (1, 1)),  # --concurrency 1: one model at a time, as before
    (3, 8, 16, (3, 3)),  # never more workers than models
    (50, 4, 0, (1, 4)),  # a cluster with no CPU up yet (all autoscaled): one model a worker
])
def test_concurrency_is_models_in_flight(n, concurrency, cpus, expected):
    from dwscan.run import hub_batches

    size, workers = hub_batches(n, concurrency, cpus)
    assert (size, workers) == expected
    assert workers is None or size * workers >= min(n, concurrency)
