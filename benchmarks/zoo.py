"""Zoo: `dwscan run --hub` end to end on a served synthetic zoo of 300 (and 1,000) models with
planted clustered fractions (5x5 and 7x7 kernels, channel counts of real networks: about 4,600
kernels a model) and a planted top-1 table (`dwscan.testing.synthetic.write_planted_zoo`), read through
the loopback hub stand-in the tests use. Per run: wall time per stage (the run summary's),
training steps and why training stopped, peak memory (see `ProcessTreeMemory`), the largest
|measured - planted| clustered fraction over models, and the Spearman correlation of clustered
fraction with top-1 as planted and as dwscan measured it. Targets: 300 models <= 5 min, 1,000
<= 4 min (issue 24), peak memory <= 2 GiB, every fraction within 0.01, Spearman within 0.02.
`python -m benchmarks zoo --models 300` picks the sizes."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

SIZES = (300, 1000)
TARGET_SECONDS = {300: 300, 1000: 240}  # 1,000: issue 24's four minutes
TARGET_GIB = 2.0
HUB_AUTHOR = "planted"


class ProcessTreeMemory:
    """Samples, every `interval` s, the memory of a process and all its descendants (the dwscan
    driver, Ray's GCS and raylet, and the Ray workers they start): the largest single RSS, and
    the sum of PSS over the tree (shared pages split between the processes sharing them, so the
    sum is what the tree really holds, which summing RSS would overcount)."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid, self.interval = pid, interval
        self.peak_tree_pss = self.peak_process_rss = 0  # bytes
        self.at_peak: list[tuple[str, int]] = []  # (process, PSS bytes) at the tree's peak
        self.peak_at_s = 0.0  # seconds after the start when the tree's peak was sampled
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> ProcessTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            pss = rss = 0
            each = []
            for pid in _descendants(self.pid):
                fields = _status_kib(pid, ("Pss:", "Rss:"))
                pss += fields.get("Pss:", 0)
                rss = max(rss, fields.get("Rss:", 0))
                each.append((_process_name(pid), fields.get("Pss:", 0) * 1024))
            if pss * 1024 > self.peak_tree_pss:
                self.peak_tree_pss = pss * 1024
                self.at_peak = sorted(each, key=lambda e: -e[1])
                self.peak_at_s = time.perf_counter() - self._start
            self.peak_process_rss = max(self.peak_process_rss, rss * 1024)

    def describe_peak(self, stages: dict[str, float], top: int = 8) -> str:
        """When the tree's memory peaked (the stage, from the run summary's stage times, in
        order) and the processes that held most of it: where to cut."""
        stage, end = "after the stages", 0.0
        for name, seconds in stages.items():
            end += seconds
            if self.peak_at_s <= end:
                stage = name
                break
        return (f"at {self.peak_at_s:.0f} s ({stage}): "
                + ", ".join(f"{name} {pss / 2**20:.0f} MiB" for name, pss in self.at_peak[:top]))


def _process_name(pid: int) -> str:
    """Ray's process title (ray::IDLE, ray::_TrainWorker...) or the program and its script."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    words = [Path(w).name if "/" in w else w for w in words if w][:2]
    return " ".join(words)[:40] or "?"


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    return {line.split()[0]: int(line.split()[1]) for line in lines if line.startswith(keys)}


def serve_zoo(hub, models_dir: Path) -> list[str]:
    """Put every model folder of `models_dir` on the hub stand-in as `planted/<name>`."""
    from dwscan.testing.hub_server import Repo

    repo_ids = []
    for folder in sorted(models_dir.iterdir()):
        repo_id = f"{HUB_AUTHOR}/{folder.name}"
        hub.add_repo(repo_id, Repo({f.name: f.read_bytes() for f in folder.iterdir()},
                                   tags=["timm", "safetensors", "planted"]))
        repo_ids.append(repo_id)
    return repo_ids


def run_zoo(n_models: int, workdir: Path, extra_args: tuple[str, ...] = ()) -> dict:
    """Build, serve and scan a planted zoo of `n_models`; returns the benchmark row, with the
    per-model comparison under the key 'per_model' (model, planted, measured)."""
    import numpy as np
    import pyarrow.compute as pc

    from dwscan import schemas
    from dwscan.io.storage import OutputLayout, read_table
    from dwscan.reports.statistics import spearman
    from dwscan.testing.hub_server import HubStandIn
    from dwscan.testing.synthetic import write_planted_zoo

    start = time.perf_counter()
    zoo = write_planted_zoo(workdir / "zoo", n_models, seed=n_models)
    build_seconds = time.perf_counter() - start
    truth = read_table(zoo["truth"]).to_pylist()
    out = workdir / "out"
    with HubStandIn() as hub:
        serve_zoo(hub, zoo["models"])
        env = {**os.environ, "RAY_ADDRESS": "", "HF_ENDPOINT": hub.endpoint,
               "HF_HUB_CACHE": str(workdir / "hf-cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        command = ["dwscan", "run", "--hub", "--author", HUB_AUTHOR, "--out", str(out),
                   "--accuracy-csv", str(zoo["accuracy_csv"]),
                   "--pretrain-csv", str(zoo["pretrain_csv"]), *extra_args]
        start = time.perf_counter()
        with open(workdir / "dwscan.log", "w") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                       env=env)
            with ProcessTreeMemory(process.pid) as memory:
                stdout, _ = process.communicate()
        wall = time.perf_counter() - start
        fetched = sum(hub.bytes_sent.values())
    (workdir / "dwscan.out").write_text(stdout)
    print(f"memory peak {memory.describe_peak(_stage_seconds(stdout))}", flush=True)
    for line in stdout.splitlines():  # the run summary's training and timing lines
        if line.startswith(("train ", "Wall time per stage:")):
            print(line, flush=True)
    if process.returncode != 0:
        raise RuntimeError(f"dwscan run exited {process.returncode}; see {workdir}/dwscan.log")

    layout = OutputLayout(out)
    overall = read_table(layout.clusterability_path)
    overall = overall.filter(pc.is_null(overall.column("kernel_size"))).to_pylist()
    measured = {r["model_id"]: r["clustered_fraction"] for r in overall}
    per_model = [(f"{HUB_AUTHOR}/{t['name']}", t["planted_fraction"],
                  measured.get(f"{HUB_AUTHOR}/{t['name']}")) for t in truth]
    errors = np.array([abs(m - p) if m is not None else np.inf for _, p, m in per_model])
    planted_rho = spearman(np.array([t["planted_fraction"] for t in truth]),
                           np.array([t["top1"] for t in truth]))
    correlation = read_table(layout.table_path(schemas.CORRELATION)).to_pylist()
    measured_rho = next(r["estimate"] for r in correlation if r["statistic"] == "spearman"
                        and r["scope"] == "all" and r["kernel_size"] is None)
    stages = _stage_seconds(stdout)
    training = {k: json.loads((layout.autoencoders_dir / f"k{k}.json").read_text())
                for k in (5, 7) if (layout.autoencoders_dir / f"k{k}.json").exists()}
    target = TARGET_SECONDS.get(n_models)
    row = {
        "models": n_models, "kernels": sum(t["n_kernels"] for t in truth),
        "fetched MB": fetched / 1e6, "wall s (dwscan run)": wall,
        **{f"{stage} s": stages.get(stage) for stage in
           ("ray start", "extract", "train + templates", "train", "templates", "assign",
            "report")},
        "train steps (stop)": "; ".join(
            f"{k}x{k}: {t['steps']:,} ({t['stop_reason']})" for k, t in sorted(training.items())),
        "peak tree PSS GiB": memory.peak_tree_pss / 2**30,
        "largest process RSS GiB": memory.peak_process_rss / 2**30,
        "max abs(fraction - planted)": float(errors.max()),
        "spearman planted": float(planted_rho), "spearman measured": float(measured_rho),
        "targets met": _targets(wall, target, memory.peak_tree_pss, errors.max(),
                                abs(measured_rho - planted_rho)),
        "zoo build s (not timed)": build_seconds,
        "per_model": per_model,
    }
    return row


def _stage_seconds(stdout: str) -> dict[str, float]:
    """The run summary's 'Wall time per stage: extract 2.3s, train 30.3s, ...'."""
    line = next((line for line in stdout.splitlines() if line.startswith("Wall time per stage:")),
                "")
    stages = {}
    for part in line.split(":", 1)[-1].split(","):
        name, _, seconds = part.strip().rpartition(" ")
        if name:
            stages[name] = float(seconds.rstrip("s"))
    return stages


def _targets(wall: float, target_s: float | None, pss: int, max_error: float,
             rho_error: float) -> str:
    checks = {f"time <= {target_s or 0:g} s": target_s is None or wall <= target_s,
              f"memory <= {TARGET_GIB:g} GiB": pss <= TARGET_GIB * 2**30,
              "fractions within 0.01": max_error <= 0.01, "spearman within 0.02": rho_error <= 0.02}
    missed = [name for name, ok in checks.items() if not ok]
    return "all" if not missed else "missed: " + ", ".join(missed)


def run(sizes: tuple[int, ...] = SIZES) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"dwscan-zoo-{n}-") as folder:
            row = run_zoo(n, Path(folder))
        row.pop("per_model")
        print(row, flush=True)
        rows.append(row)
    return rows
