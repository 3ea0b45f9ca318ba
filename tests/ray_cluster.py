"""Real local Ray clusters for tests: a head started with `ray start --head --block` (token
authentication on, its own GCS port and temp dir), worker nodes joined to it, and Ray's fake
multi-node autoscaler. Nothing here stops a Ray it did not start (no `ray stop`)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent_ports() -> list[str]:
    """Free ports for a node's dashboard agent, runtime-env agent and metrics exporter."""
    return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port",
            str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port())]


def node_ip() -> str:
    """The address Ray names this host's nodes by (never 127.0.0.1, see shared README)."""
    import ray._private.services

    return ray._private.services.get_node_ip_address()


class LocalCluster:
    """A head on this host; `add_node()` joins more nodes. Every process it starts is stopped on
    exit: the `ray start --block` processes by their process group, and the raylets of nodes an
    autoscaler started (which outlive their head) by their session folder under our temp dir."""

    def __init__(self, head_cpus: int = 0, autoscaling: dict | None = None,
                 env: dict[str, str] | None = None, dashboard: bool = False,
                 port: int | None = None, umask: int | None = None):
        """`umask`: the nodes' (an autoscaler's nodes inherit the head's), for the modes of
        what workers write."""
        self.umask = umask
        self.temp = Path(tempfile.mkdtemp(prefix="rayc", dir="/tmp"))  # socket paths stay short
        self.port = port or free_port()
        self.address = f"{node_ip()}:{self.port}"
        self.token = secrets.token_hex(32)
        self.env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self._processes: list[subprocess.Popen] = []
        self.dashboard = f"http://127.0.0.1:{free_port()}" if dashboard else None
        head = [RAY, "start", "--head", "--block", "--port", str(self.port),
                "--num-cpus", str(head_cpus), "--temp-dir", str(self.temp),
                "--disable-usage-stats", "--include-dashboard", str(dashboard).lower()]
        if dashboard:
            head += ["--dashboard-host", "127.0.0.1", "--dashboard-port",
                     self.dashboard.rsplit(":", 1)[1]]
        # Ray's agents listen on fixed default ports (52365 for the job agent): a Ray started
        # beside another (the other pytest-xdist worker's, a run's own) found them taken, its
        # agent failed, and `ray job submit` answered "No available agent" for good
        head += _agent_ports()
        head_env = dict(self.env)
        if autoscaling is not None:
            config = self.temp / "autoscaling.json"
            config.write_text(json.dumps(autoscaling))
            head.append(f"--autoscaling-config={config}")
            head_env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        self._start(head, head_env, "head")

    def _start(self, command: list[str], env: dict[str, str], name: str,
               node_id: str = "") -> str:
        """Start `command` (under `node_id`, if given) and wait until it blocks; returns the
        node id in use."""
        started, text = self._launch(command, env, name, node_id)
        # Ray gives a starting node 30 s to register with the GCS (fixed in ray/_private/
        # node.py): on two cores under two busy test workers a node missed it once in about ten
        # CI runs. Once more, under a new node id (the GCS may hold the first as dead).
        if not started and name == "node" and "timed out during startup" in text:
            node_id = secrets.token_hex(28) if node_id else ""
            started, text = self._launch(command, env, name, node_id)
        assert started, f"{name} did not start:\n{text[-3000:]}"
        return node_id

    def _launch(self, command: list[str], env: dict[str, str], name: str,
                node_id: str) -> tuple[bool, str]:
        """(whether it reached `ray start --block`'s wait, its log); what a failed start left
        running is killed."""
        log = open(self.temp / f"{name}-{len(self._processes)}.log", "wb")
        umask = self.umask
        process = subprocess.Popen(
            command, env={**env, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id} if node_id else env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=None if umask is None else lambda: os.umask(umask))
        self._processes.append(process)
        deadline = time.time() + 120
        text = ""
        while "will now block forever" not in text and process.poll() is None:
            assert time.time() < deadline, f"{name} did not start in 120 s:\n{text[-3000:]}"
            time.sleep(0.5)
            text = Path(log.name).read_text(errors="replace")
        if "will now block forever" in text:
            return True, text
        with contextlib.suppress(ProcessLookupError):  # what it started, if anything
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        return False, text

    def add_node(self, cpus: int = 1, wrapper: list[str] | None = None,
                 env: dict[str, str] | None = None, node_id: str = "") -> str:
        """Join one worker node; `wrapper` is a command prefix (e.g. `unshare --mount ...`),
        `node_id` the id Ray gives it (56 hex digits; "": Ray's choice). Returns the node id in
        use (another than `node_id` if the node had to start again), or "" for Ray's choice."""
        command = [RAY, "start", "--address", self.address, "--block", "--num-cpus", str(cpus),
                   "--disable-usage-stats", *_agent_ports()]
        return self._start([*(wrapper or []), *command], {**self.env, **(env or {})}, "node",
                           node_id)

    def python(self, code: str, timeout: float = 120) -> str:
        """Run `code` in a driver joined to the cluster; returns its stdout."""
        done = subprocess.run([sys.executable, "-c", f"import ray\nray.init({self.address!r})\n"
                               + code], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        # SIGKILL, not SIGTERM: `ray start --block` took 30 s to wind down after SIGTERM (idle
        # time every test with a cluster paid), and nothing of this throwaway cluster needs
        # saving; the process groups, then whatever else names our temp dir
        for process in reversed(self._processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self._processes:
            process.wait(timeout=60)
        self._kill_leftovers()
        shutil.rmtree(self.temp, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """Processes of nodes the fake autoscaler started: their command lines name our temp dir."""
        for pid, _, _ in self._own_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # gone meanwhile
                continue

    def raylets(self) -> list[int]:
        """The pids of this cluster's raylets, oldest first (the head's, then its nodes')."""
        found = [(started, pid) for pid, cmdline, started in self._own_processes()
                 if cmdline.split(b"\0")[0].endswith(b"/raylet")]
        return [pid for _, pid in sorted(found)]

    def busy_raylets(self, task_name: str) -> list[int]:
        """The raylets (oldest first) with a worker that is running a task named `task_name`
        right now: Ray titles a worker `ray::<task name>` while it runs one."""
        raylets = self.raylets()
        title = f"ray::{task_name}".encode()
        busy = {fields[1] for _, cmdline, fields in _processes()
                if fields[1] in raylets and cmdline.startswith(title)}
        return [pid for pid in raylets if pid in busy]

    def _own_processes(self) -> list[tuple[int, bytes, int]]:
        """(pid, command line, start time in clock ticks) of every process, other than this
        one, whose command line names our temp dir."""
        marker = str(self.temp).encode()
        return [(pid, cmdline, fields[19]) for pid, cmdline, fields in _processes()
                if marker in cmdline and pid != os.getpid()]


def _processes() -> Iterator[tuple[int, bytes, list[int]]]:
    """(pid, command line, the numeric fields of /proc/pid/stat after the name: [1] is the
    parent's pid, [19] the start time in clock ticks) of every process still there."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            yield int(entry.name), cmdline, [0, *(int(f) for f in fields[1:])]
        except (OSError, ValueError, IndexError):
            continue


def fake_autoscaling_config(gcs_address: str, max_workers: int, worker_cpus: int) -> dict:
    """Ray's fake multi-node provider (nodes are raylets on this host): a head with no CPU and
    one worker type from zero up to `max_workers` nodes. Ray 2.60's wheel lacks the example
    config that `ray.cluster_utils.AutoscalingCluster` reads, so it is written out here."""
    empty = ("initialization_commands", "setup_commands", "head_setup_commands",
             "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
             "cluster_synced_files", "rsync_exclude", "rsync_filter")
    return {
        "cluster_name": "dwscan-test", "max_workers": max_workers, "upscaling_speed": 10.0,
        "idle_timeout_minutes": 10,
        # as Ray's own fake_multi_node/example.yaml: nodes are known by their node id (they
        # share this host's address) and have nothing to set up; they join the GCS on port
        # 6379 unless `gcs_address` says otherwise
        # (one node per launch call: asked for several at once, the provider starts them all
        # but the autoscaler sees them late, starts more, and removes the extra ones busy)
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address,
                     "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "nobody"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {"resources": {"CPU": worker_cpus}, "node_config": {},
                           "min_workers": 0, "max_workers": max_workers},
        },
        "head_node_type": "ray.head.default", "file_mounts": {},
        "file_mounts_sync_continuously": False, **{key: [] for key in empty},
    }
