"""Operations: incremental re-scans against the hub stand-in, kill-and-resume, and the job
entrypoints submitted to a real Ray head with `ray job submit` (token auth on)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save

from dwscan.io.accuracy import DEMO_ACCURACY_CSV, DEMO_PRETRAIN_CSV
from dwscan.io.storage import OutputLayout, read_table
from dwscan.testing.hub_server import Fault, Repo, shared_hub
from tests.helpers import shared_ray_env
from tests.ray_cluster import LocalCluster

pytestmark = pytest.mark.slow
# no network, no Ray Train: k-means templates keep each run to seconds
FAST = ["--templates", "kmeans", "--accuracy-csv", str(DEMO_ACCURACY_CSV),
        "--pretrain-csv", str(DEMO_PRETRAIN_CSV)]


def small_state(seed: int) -> dict[str, torch.Tensor]:
    """ConvNeXt-style depthwise layers (7x7 and 3x3) and a dense head."""
    g = torch.Generator().manual_seed(seed)
    return {"stages.0.blocks.0.conv_dw.weight": torch.randn(48, 1, 7, 7, generator=g),
            "stages.1.blocks.0.conv_dw.weight": torch.randn(64, 1, 3, 3, generator=g),
            "head.fc.weight": torch.randn(10, 64, generator=g)}


def dwscan(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = shared_ray_env()  # the killed runs alone keep a Ray of their own
    return subprocess.run(["dwscan", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


def _file_requests(hub) -> set[str]:
    """Repos whose files (not listings or model info) were requested."""
    return {path.split("/resolve/")[0].strip("/") for _, path, _ in hub.requests
            if "/resolve/" in path}


def test_rescan_processes_only_new_changed_and_failed_repos(tmp_path):
    hub = shared_hub()
    for i in range(4):
        hub.add_repo(f"rescan-org/net{i}", Repo({"model.safetensors": save(small_state(i))}))
    hub.add_repo("rescan-org/broken", Repo({"model.safetensors": save(small_state(9))[:300]}))
    out = tmp_path / "out"
    rescan = ["rescan", "--hub", "--author", "rescan-org", "--out", str(out),
              "--max-attempts", "2", *FAST]
    layout = OutputLayout(out)

    first = dwscan(rescan, tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]  # the broken repo fails, alone
    assert "5 new, 0 changed" in first.stdout
    models = {r["model_id"]: r for r in read_table(layout.models_path).to_pylist()}
    assert models["rescan-org/broken"]["status"] == "failed"
    assert {m: r["attempts"] for m, r in models.items()} == dict.fromkeys(models, 1)
    first_set = read_table(layout.templates_path).column("template_set")[0].as_py()

    hub.add_repo("rescan-org/net4", Repo({"model.safetensors": save(small_state(4))}))
    changed = hub.add_repo("rescan-org/net1", Repo({"model.safetensors": save(small_state(11))}))
    hub.requests.clear()
    second = dwscan(rescan, tmp_path)
    assert second.returncode == 1, second.stderr[-3000:]
    assert "1 new, 1 changed, 1 retried, 3 unchanged" in second.stdout
    # unchanged repos cost the listing only: not one of their files was asked for
    assert _file_requests(hub) == {"rescan-org/net4", "rescan-org/net1", "rescan-org/broken"}
    models = {r["model_id"]: r for r in read_table(layout.models_path).to_pylist()}
    assert models["rescan-org/net1"]["revision"] == changed.sha
    assert models["rescan-org/broken"]["attempts"] == 2
    for model_id in ("rescan-org/net1", "rescan-org/net4", "rescan-org/net0"):
        sets = set(read_table(layout.assignments_path(model_id)).column("template_set").to_pylist())
        assert sets == {first_set}  # new kernels, current template set: no retraining
    kernels = read_table(layout.kernels_path("rescan-org/net1")).to_pylist()
    assert kernels[0]["weights"] == pytest.approx(
        small_state(11)["stages.0.blocks.0.conv_dw.weight"][0, 0].flatten().tolist())

    hub.requests.clear()
    third = dwscan(rescan, tmp_path)  # broken has failed twice: left alone; nothing else changed
    assert third.returncode == 0, third.stderr[-3000:]
    assert "nothing to scan" in third.stdout and "1 left failed after 2 attempts" in third.stdout
    assert _file_requests(hub) == set()

    retrained = dwscan([*rescan, "--retrain"], tmp_path)
    assert retrained.returncode == 1, retrained.stderr[-3000:]
    new_set = read_table(layout.templates_path).column("template_set")[0].as_py()
    assert new_set != first_set  # trained over changed kernels
    for model_id in ("rescan-org/net0", "rescan-org/net1", "rescan-org/net4"):
        assert set(read_table(layout.assignments_path(model_id)).column(
            "template_set").to_pylist()) == {new_set}
    assert set(read_table(layout.clusterability_path).column("template_set").to_pylist()) == {
        new_set}

    runs = read_table(layout.runs_path).to_pylist()
    assert [(r["n_new"], r["n_changed"], r["n_retried"], r["n_unchanged"], r["n_failed"],
             r["retrained"]) for r in runs] == [
        (5, 0, 0, 0, 1, True), (1, 1, 1, 3, 1, False), (0, 0, 0, 6, 0, False),
        (0, 0, 0, 6, 0, True)]
    assert all(r["ended"] >= r["started"] for r in runs) and len({r["run_id"] for r in runs}) == 4


def _checkpoints(tmp_path: Path) -> list[str]:
    args = []
    for i in range(3):
        path = tmp_path / "zoo" / f"net{i}.safetensors"
        path.parent.mkdir(exist_ok=True)
        from safetensors.torch import save_file

        save_file(small_state(i), str(path))
        args += ["--checkpoint", str(path)]
    return args


def _outputs(out: Path) -> dict[str, object]:
    """Every Parquet table under `out`, less the bookkeeping of when and how often it ran."""
    bookkeeping = {"scanned_at", "attempts", "peak_memory_bytes", "run_id", "started", "ended"}
    tables = {}
    for path in sorted(out.rglob("*.parquet")):
        if path.name == "runs.parquet":
            continue
        table = pq.read_table(path)
        tables[str(path.relative_to(out))] = table.drop_columns(
            [c for c in table.column_names if c in bookkeeping])
    return tables


# (name, a file whose appearance marks the moment to kill): during extraction (a model's kernels
# written, pending until models.parquet records the scan), right after the template set is
# written, and in the middle of the report stage
KILL_POINTS = [("extract", "kernels/.net0.parquet.*.pending"), ("templates", "template_set.json"),
               ("report", "reports/clusterability.parquet")]


def test_killed_runs_resume_to_the_outputs_of_an_uninterrupted_run(tmp_path):
    """One output folder, killed with SIGKILL at each point in turn: each run resumes what the
    last one left (a stale lock, pending kernels, a template set without its table, half the
    reports) until one finishes; its tables equal an uninterrupted run's."""
    # three local checkpoints and one from the hub stand-in, whose first download by the killed
    # runs (an empty Hub cache of their own) stalls for 3 s: the local models' pending kernels
    # then wait that long for the scan's commit, a window the kill cannot miss on a busy machine
    hub = shared_hub()
    hub.add_repo("kill-org/slow", Repo({"model.safetensors": save(small_state(7))}))
    checkpoints = [*_checkpoints(tmp_path), "--model", "kill-org/slow"]
    reference = tmp_path / "reference"
    done = dwscan(["run", "--out", str(reference), *checkpoints, *FAST], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = _outputs(reference)
    assert len(expected) >= 12

    out = tmp_path / "killed"
    stall = Fault(path="kill-org/slow/resolve/", kind="stall", times=1, seconds=3.0)
    hub.faults.append(stall)
    own_ray = {**os.environ, "RAY_ADDRESS": "", "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    for i, (name, marker) in enumerate(KILL_POINTS):
        log = tmp_path / f"killed-{name}.log"
        with log.open("w") as handle:  # a Ray of its own: the kill takes all of it down
            process = subprocess.Popen(["dwscan", "run", "--out", str(out), *checkpoints, *FAST],
                                       cwd=tmp_path, start_new_session=True, env=own_ray,
                                       stdout=handle, stderr=subprocess.STDOUT)
        if name == "extract":  # while it runs, a second run on the same folder is refused
            _wait_for(out / ".dwscan.lock", process)  # taken before Ray starts (~10 s here)
            second = dwscan(["run", "--out", str(out), *checkpoints, *FAST], tmp_path)
            assert second.returncode == 3 and "in use by another run" in second.stderr
            assert process.poll() is None, "the first run ended before the refusal was seen"
        _wait_for(out / marker, process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert (out / ".dwscan.lock").exists()  # nothing cleaned up after SIGKILL
        assert i == 0 or "stale lock" in log.read_text(), (name, log.read_text()[-3000:])

    assert stall.times == 0, "the hub model was never requested: nothing held the window open"
    resumed = dwscan(["run", "--out", str(out), *checkpoints, *FAST], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stale lock" in resumed.stderr
    got = _outputs(out)
    assert got.keys() == expected.keys()
    for path, table in expected.items():
        assert got[path].equals(table), path
    assert not list(out.rglob(".*.tmp")) and not (out / ".dwscan.lock").exists()


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until `path` exists (a glob pattern in its name: until a file matches it)."""
    deadline = time.time() + timeout
    while not (any(path.parent.glob(path.name)) if "*" in path.name else path.exists()):
        assert process.poll() is None, f"the run ended before {path.name} appeared"
        assert time.time() < deadline
        time.sleep(0.02)


def test_rescan_submitted_as_a_ray_job_to_a_local_head(tmp_path):
    """`ray job submit -- python -m dwscan.jobs.rescan` to a head started with `ray start
    --head`, with its dashboard (the job API) and Ray's token authentication on, against the
    hub stand-in. A head of its own: the shared ones run without a dashboard, which costs an
    idle Ray a third more CPU."""
    hub = shared_hub()
    for i in range(3):
        hub.add_repo(f"jobs-org/net{i}", Repo({"model.safetensors": save(small_state(20 + i))}))
    with LocalCluster(head_cpus=os.cpu_count() or 2, dashboard=True) as head:
        _submit_and_check_rescan(head, tmp_path)


def _submit_and_check_rescan(head: LocalCluster, tmp_path: Path) -> None:
    env = {k: v for k, v in head.env.items() if k != "RAY_ADDRESS"}
    address = head.dashboard
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    out = tmp_path / "out"
    no_token = subprocess.run([ray, "job", "list", "--address", address],
                              env={**env, "RAY_AUTH_MODE": "", "RAY_AUTH_TOKEN": ""},
                              capture_output=True, text=True, timeout=120)
    assert no_token.returncode != 0  # the job API is closed without the token
    runtime_env = {"env_vars": {k: os.environ[k] for k in (
        "HF_ENDPOINT", "HF_HUB_CACHE", "HF_HUB_DISABLE_TELEMETRY", "DWSCAN_CACHE")}}
    submit = [ray, "job", "submit", "--address", address, "--submission-id", "rescan-1",
              "--no-wait", "--runtime-env-json", json.dumps(runtime_env), "--",
              "python", "-m", "dwscan.jobs.rescan", "--hub", "--author", "jobs-org", "--out",
              str(out), *FAST]
    # A head started moments ago (slow tests run first) may not have its job agent yet: Ray
    # answers 500 "No available agent to submit job, please try again later", and no job exists
    deadline = time.time() + 120
    while True:
        submitted = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent" not in submitted.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    deadline, status = time.time() + 400, ""
    while time.time() < deadline:
        asked = subprocess.run([ray, "job", "status", "--address", address, "rescan-1"],
                               env=env, capture_output=True, text=True, timeout=120)
        status = (asked.stdout + asked.stderr).lower()
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            break
        time.sleep(2)
    logs = subprocess.run([ray, "job", "logs", "--address", address, "rescan-1"], env=env,
                          capture_output=True, text=True, timeout=120).stdout
    assert "job 'rescan-1' succeeded" in status, status + logs[-3000:]
    assert "3 new, 0 changed" in logs
    layout = OutputLayout(out)
    models = read_table(layout.models_path).to_pylist()
    assert sorted((r["model_id"], r["status"]) for r in models) == [
        (f"jobs-org/net{i}", "ok") for i in range(3)]
    assert read_table(layout.clusterability_path).num_rows == 3 * 3  # all sizes + 7x7 + 3x3
    assert (layout.reports_dir / "index.html").exists()
