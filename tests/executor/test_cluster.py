"""dwscan on real multi-node local Ray clusters (token authentication on): the autoscaler sees a
zoo's demand and adds nodes; a node that does not see `--out` stops the run, whether it is
there at the start or joins later, before it writes anything;
joining a cluster without its token, or an address nobody answers on, is one clear line; a job
log is plain lines that end with the summary; outputs get the user's umask."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch
from safetensors.torch import save

from dwscan.io.accuracy import DEMO_ACCURACY_CSV, DEMO_PRETRAIN_CSV
from dwscan.io.storage import OutputLayout, read_table, read_tables
from dwscan.testing.hub_server import Fault, Repo, shared_hub
from tests.helpers import shared_ray, shared_ray_env
from tests.ray_cluster import LocalCluster, fake_autoscaling_config, free_port, node_ip

pytestmark = pytest.mark.slow
# no network, no Ray Train: k-means templates keep each run to seconds
FAST = ["--templates", "kmeans", "--accuracy-csv", str(DEMO_ACCURACY_CSV),
        "--pretrain-csv", str(DEMO_PRETRAIN_CSV)]
ZOO_SIZE = 50
MAX_WORKERS = 4  # the autoscaling test's cpu_worker nodes


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"blocks.0.conv_dw.weight": torch.randn(16, 1, 3, 3, generator=g),
            "blocks.1.conv_dw.weight": torch.randn(16, 1, 5, 5, generator=g),
            "head.fc.weight": torch.randn(4, 16, generator=g)}


def dwscan(args: list[str], cwd: Path, env: dict[str, str] | None = None,
           **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "", **(env or {})}
    return subprocess.run(["dwscan", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


def _tables(out: Path) -> dict[str, list]:
    """Every table a run writes, in a fixed order, without when-and-how-often bookkeeping."""
    layout = OutputLayout(out)
    models = read_table(layout.models_path).drop_columns(["scanned_at", "attempts",
                                                          "peak_memory_bytes"])
    tables = {"models": models.sort_by("model_id"),
              "kernels": read_tables(sorted(layout.kernels_dir.glob("*.parquet")), None),
              "templates": read_table(layout.templates_path),
              "assignments": read_tables(sorted(layout.assignments_dir.glob("*.parquet")), None),
              "clusterability": read_table(layout.clusterability_path)}
    return {name: table.to_pylist() for name, table in tables.items()}


def test_the_autoscaler_adds_nodes_for_a_zoo_and_the_tables_match_a_local_run(tmp_path):
    """Head with CPU 0, worker nodes from 0 up to 4: only the scan's pending tasks can make the
    autoscaler start nodes, and the tasks must spread over more than one of them. Mid-scan, one
    worker node's raylet is killed (a node lost): its tasks run again on the others, counted,
    and every model still comes back as a local run has it."""
    hub = shared_hub()
    for i in range(ZOO_SIZE):
        hub.add_repo(f"scale-org/net{i:02d}", Repo({"model.safetensors": save(tiny_state(i))}))
    select = ["--hub", "--author", "scale-org", *FAST]
    # the reference run on the tests' shared local Ray (its workers see the same hub stand-in)
    local = dwscan(["run", "--out", str(tmp_path / "local"), *select], cwd=tmp_path,
                   env=shared_ray_env())
    assert local.returncode == 0, local.stderr[-3000:]

    # The cluster's nodes start with an empty Hub cache, and each checkpoint takes a second to
    # arrive, as over a real network: cached or loopback-fast tasks could drain the queue on the
    # first node before the autoscaler's next ones join, and nothing would show the spread. A
    # batch reads its models side by side, so each takes ten seconds: when the first is done,
    # the nodes that joined after it are still on theirs, and the one killed loses its batch.
    slow_downloads = Fault(path="/model.safetensors", kind="stall", times=10 * ZOO_SIZE,
                           seconds=10.0)
    hub.faults.append(slow_downloads)
    port = free_port()
    config = fake_autoscaling_config(f"{node_ip()}:{port}", max_workers=MAX_WORKERS,
                                     worker_cpus=1)
    try:
        # umask 027 on every node and the driver: what workers write on the autoscaled nodes
        # (kernels, assignments) must get 0640/0750, neither 0644 nor mkstemp's 0600
        with LocalCluster(autoscaling=config, port=port, dashboard=True, umask=0o027,
                          env={"HF_HUB_CACHE": str(tmp_path / "node-hf-cache")}) as cluster:
            reports = tmp_path / "autoscaler.jsonl"
            watcher = _watch_the_autoscaler(cluster, reports)
            log = tmp_path / "cluster.log"
            with log.open("w") as handle:
                # default flags: a worker reads hub models in batches of up to 16 side by
                # side (a cluster with no CPU up yet: 16 a batch), so four batch tasks ask for
                # the four workers
                process = subprocess.Popen(
                    ["dwscan", "run", "--address", cluster.address, "--out",
                     str(tmp_path / "cluster"), *select], cwd=tmp_path,
                    env={**cluster.env, "RAY_ADDRESS": ""}, stdout=handle,
                    stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: os.umask(0o027))
            killed = _kill_a_busy_worker_node(cluster, tmp_path / "cluster" / "kernels", process)
            assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
            watcher.kill()
            watcher.wait()
            output = log.read_text()
            assert "\x1b" not in output  # a job log: no colour codes (Ray's own lines included)
            runs = read_table(OutputLayout(tmp_path / "cluster").runs_path).to_pylist()
            retries = runs[-1]["n_system_retries"]
            assert retries >= 1, (killed, output[-3000:])  # the lost node was running tasks
            assert f"{retries} task(s) ran again after Ray lost their worker or node" in output
            seen = json.loads(cluster.python(
                "import json\n"
                "from ray.util.state import list_tasks\n"
                "nodes = [n for n in ray.nodes() if n['Resources'].get('CPU')]\n"
                f"tasks = list_tasks(address={cluster.dashboard!r}, limit=10000, detail=True,\n"
                "                   filters=[('name', '=', 'extract_hub_models_to_parquet')])\n"
                "print(json.dumps({'workers': len(nodes),"
                " 'task_nodes': [t.node_id for t in tasks]}))"
            ).splitlines()[-1])
    finally:
        hub.faults.remove(slow_downloads)
    assert seen["workers"] >= 2, seen  # the head has no CPU: every worker node was autoscaled
    batch = int(re.search(rf"extract \({ZOO_SIZE} hub models, (\d+) a batch\)", output)[1])
    # each batch is a task, and each retry a task of its own
    assert len(seen["task_nodes"]) == -(-ZOO_SIZE // batch) + retries
    # What the autoscaler itself reported (what `ray status` prints), every half second: the
    # scan's queued tasks as demand while it still had nodes to add, then all of them up.
    # (Before the cluster is first full: after the node is killed, Ray still counts its CPU
    # for a while, and even a stage that kept one task waiting would show two.)
    status = [json.loads(line) for line in reports.read_text().splitlines()]
    grown = [(_cpu_demand(r), r["autoscaler_report"]["active_nodes"].get("cpu_worker", 0))
             for r in status if r.get("autoscaler_report")]
    full = [i for i, (_, up) in enumerate(grown) if up == MAX_WORKERS]
    assert full, grown  # the cluster reached its configured maximum
    assert max(demand for demand, _ in grown[:full[0]]) > 1, grown
    # Spread: no node ran more than twice its fair share of the extraction tasks (batches of up
    # to 16 models), a quarter of them (the cluster had its four workers). Twice leaves room
    # for the first node's head start and for the killed node's batch, which another ran
    # again; a queue that drained onto one node would not pass.
    per_node = Counter(seen["task_nodes"])
    fair = len(seen["task_nodes"]) / MAX_WORKERS
    assert len(per_node) >= 2 and max(per_node.values()) <= 2 * fair, per_node
    assert _tables(tmp_path / "cluster") == _tables(tmp_path / "local")
    models = read_table(OutputLayout(tmp_path / "cluster").models_path)
    assert pc.all(pc.equal(models["status"], "ok")).as_py() and models.num_rows == ZOO_SIZE
    written = [tmp_path / "cluster", *(tmp_path / "cluster").rglob("*")]
    assert {p.parent.name for p in written} >= {"kernels", "assignments", "reports"}
    for path in written:  # the modes of the nodes' and the driver's umask 027
        assert stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640), path


# Reads what `ray status` prints, the autoscaler's report in the GCS, every half second, and
# writes each new one as a JSON line
AUTOSCALER_WATCH = r"""
import sys, time
import ray._raylet
from ray._private import ray_constants

gcs, last = ray._raylet.GcsClient(address=sys.argv[1]), None
with open(sys.argv[2], "w") as out:
    while True:
        report = gcs.internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS.encode(), None)
        if report and report != last:
            out.write(report.decode() + "\n")
            out.flush()
            last = report
        time.sleep(0.5)
"""


def _watch_the_autoscaler(cluster: LocalCluster, reports: Path) -> subprocess.Popen:
    """A process that records the autoscaler's reports while the scan runs (one process, not a
    `ray status` every half second: each would import Ray again on our two cores)."""
    return subprocess.Popen([sys.executable, "-c", AUTOSCALER_WATCH, cluster.address,
                             str(reports)], env=cluster.env)


def _cpu_demand(report: dict) -> int:
    """Tasks the autoscaler reported waiting for a CPU ('Demands' in `ray status`)."""
    return sum(count for shape, count in report["load_metrics_report"]["resource_demand"]
               if shape.get("CPU"))


def _kill_a_busy_worker_node(cluster: LocalCluster, kernels: Path,
                             process: subprocess.Popen) -> int:
    """Once two autoscaled nodes are up and eight models are extracted (the first batch is done;
    the nodes that joined after it are ten seconds into theirs), SIGKILL the raylet of the
    newest worker node that is running a batch, as a reclaimed spot instance would go; its
    workers die with it. Returns the raylet's pid."""
    deadline = time.time() + 300
    while True:
        assert process.poll() is None, "the run ended before a node could be killed"
        assert time.time() < deadline, "no two worker nodes and eight models in 300 s"
        raylets = cluster.raylets()
        # the head's raylet started first; a node just up may have no batch yet
        busy = [pid for pid in cluster.busy_raylets("extract_hub_models_to_parquet")
                if pid != raylets[0]]
        if len(raylets) >= 3 and busy and len(list(kernels.glob(".*.pending"))) >= 8:
            break
        time.sleep(0.2)
    os.kill(busy[-1], signal.SIGKILL)
    return busy[-1]


def _checkpoint(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / "net.safetensors"
    save_file(tiny_state(0), str(path))
    return path


def _run_then_join_a_blind_node(cluster: LocalCluster, command: list[str], out: Path, log: Path,
                                node_id: str) -> tuple[subprocess.Popen, str]:
    """Start `dwscan COMMAND --address ... --out OUT` (output to `log`), wait for its token in
    `out` (its start check is done), then join a one-CPU node in its own mount namespace, where
    a tmpfs hides `out`. Returns the run and the node's id."""
    with log.open("w") as handle:
        process = subprocess.Popen(
            ["dwscan", command[0], "--address", cluster.address, "--out", str(out),
             *command[1:]], cwd=out.parent, env=cluster.env, stdout=handle,
            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(out.glob(".dwscan-shared-*")):  # the driver's token: the run began
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the run wrote no token in 120 s"
        time.sleep(0.2)
    in_own_mounts = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     f'mount -t tmpfs tmpfs "{out}" && exec "$@"', "sh"]
    return process, cluster.add_node(cpus=1, wrapper=in_own_mounts, node_id=node_id)


def test_a_node_that_sees_another_out_folder_stops_the_run_when_it_joins_or_at_the_start(
        tmp_path):
    """A node in its own mount namespace (a tmpfs over the output folder) sees an empty folder
    where the head sees the driver's. Joining mid-run, it is caught by the first task it takes,
    before that task writes anything; there at the start, it stops the run before any work."""
    out = tmp_path / "out"
    out.mkdir()
    hub = shared_hub()
    # 17 models: a worker reads up to 16 hub models side by side, so two batch tasks, one
    # for the head's one CPU and one left for the node that joins
    models = [f"late-org/net{i}" for i in range(17)]
    for i, repo in enumerate(models):
        hub.add_repo(repo, Repo({"model.safetensors": save(tiny_state(i))}))
    # every download takes a minute: the head's one CPU is still on its first batch, the other
    # queued, when the node joins (the run ends as soon as that node's task is refused)
    stalled = Fault(path="/model.safetensors", kind="stall", times=20, seconds=60.0)
    hub.faults.append(stalled)
    try:
        with LocalCluster(head_cpus=1) as cluster:
            log = tmp_path / "late.log"
            process, isolated = _run_then_join_a_blind_node(
                cluster, ["scan", *[arg for repo in models for arg in ("--model", repo)]], out,
                log, node_id="ab" * 28)
            assert process.wait(timeout=120) == 2, log.read_text()[-3000:]
            late = log.read_text()
            # what that node saw at the path of --out: nothing written by it
            blind_view = Path(f"/proc/{cluster.raylets()[-1]}/root{out}")
            assert blind_view.is_dir() and list(blind_view.iterdir()) == []

            result = dwscan(["scan", "--address", cluster.address, "--out", str(out),
                             "--checkpoint", str(_checkpoint(tmp_path))], cwd=tmp_path,
                            env=cluster.env)
    finally:
        hub.faults.remove(stalled)
    error = [line for line in late.splitlines() if line.startswith("dwscan: error:")]
    assert len(error) == 1 and "Traceback" not in late, late[-3000:]
    assert f"--out {out} is not one folder for every node: node " in error[0]
    assert f"(node {isolated[:12]}) joined after the start" in error[0]
    assert "the run stops before that node writes anything" in error[0] and "s3://" in error[0]

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("dwscan: error:")]
    assert len(error) == 1, result.stderr[-3000:]
    assert f"--out {out} is not one folder for every node: 1 of 2 nodes" in error[0]
    assert f"(node {isolated[:12]})" in error[0] and "s3://" in error[0]
    # nothing scanned by either run, no token or lock left behind
    assert [p for p in out.rglob("*") if not p.is_dir()] == []


def test_a_node_that_joins_blind_while_ray_train_waits_for_it_stops_the_training(tmp_path):
    """`dwscan train --train-workers 2` on a head of one CPU: Ray Train waits for a second CPU,
    and the node that brings it does not see `--out` (its own mount namespace). The rank placed
    there raises before it reads a kernel, and the run ends as a scan's late node ends it: one
    line naming that node, exit 2, no autoencoder written (Ray Train's own logs may carry the
    rank's traceback)."""
    out = tmp_path / "out"
    out.mkdir()
    with LocalCluster(head_cpus=1, dashboard=True) as cluster:  # Ray Train watches the state API
        scanned = dwscan(["scan", "--address", cluster.address, "--out", str(out),
                          "--checkpoint", str(_checkpoint(tmp_path))], cwd=tmp_path,
                         env=cluster.env)
        assert scanned.returncode == 0, scanned.stderr[-3000:]
        log = tmp_path / "train.log"
        process, isolated = _run_then_join_a_blind_node(
            cluster, ["train", "--train-workers", "2", "--seeds", "1", "--epochs", "1"], out, log,
            node_id="cd" * 28)
        assert process.wait(timeout=300) == 2, log.read_text()[-3000:]
    output = log.read_text()
    error = [line for line in output.splitlines() if line.startswith("dwscan: error:")]
    assert len(error) == 1, output[-3000:]
    assert f"--out {out} is not one folder for every node: node " in error[0]
    assert f"(node {isolated[:12]}) joined after the start" in error[0]
    assert "training failed" not in output  # not the generic end of a training that raised
    assert not list(out.glob("autoencoders/*"))


def test_joining_without_the_token_or_where_nobody_answers_is_one_clear_line(tmp_path):
    checkpoint = _checkpoint(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}

    def scan(address: str, **auth: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dwscan", "scan", "--address", address, "--out",
                               str(tmp_path / "out"), "--checkpoint", str(checkpoint)],
                              env={**base, **auth}, capture_output=True, text=True, timeout=300)

    cluster = shared_ray()  # a head with token authentication on, as any of ours
    no_token = scan(cluster.address)
    wrong_token = scan(cluster.address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    nobody = scan(f"127.0.0.1:{free_port()}")
    for result in (no_token, wrong_token, nobody):
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        # ray.init alone would retry for 20 s, one warning a second, then raise
        assert result.stderr.count("Failed to get cluster ID") <= 1, result.stderr[-3000:]
        error = [line for line in result.stderr.splitlines() if line.startswith("dwscan: error:")]
        assert len(error) == 1, result.stderr[-3000:]
    for result in (no_token, wrong_token):
        assert "requires its authentication token" in result.stderr
        assert "RAY_AUTH_MODE=token" in result.stderr and "ray get-auth-token" in result.stderr
    assert "cannot join the Ray cluster at 127.0.0.1:" in nobody.stderr
    assert "nothing answers there" in nobody.stderr
    assert not (tmp_path / "out" / "kernels").exists()
