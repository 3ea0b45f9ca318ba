"""Hub latency: `dwscan scan --hub` over a planted zoo of 300 (and 1,000) models served by the
loopback hub stand-in with 30 ms added to every answer (a modest network round trip), default
flags, a local Ray of its own. Per run: wall time of the command (Ray start included), requests
per model (the listing's one request spread over the models), bytes the hub sent against the
floor (per model: its safetensors header, its depthwise tensors and its config.json), the peak
summed PSS of the dwscan process tree (driver, Ray, workers; `benchmarks.zoo.ProcessTreeMemory`),
every model's status, and the machine's 1-minute load average before and after (2 cores: a load
above ~2 means other work shared them). Targets (issue 24, 300 models on 2 cores): <= 30 s,
<= 6 requests per model, <= 1.5 GiB, every model ok, bytes <= 1.1x the floor.
`python -m benchmarks hub_latency --models 300` picks the sizes."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

SIZES = (300, 1000)
LATENCY_S = 0.030
TARGETS = {"seconds": 30.0, "requests": 6.0, "gib": 1.5, "floor": 1.1}


def floor_bytes(folder: Path) -> int:
    """What reading one served model needs at least: its safetensors header, its depthwise
    tensors, its config.json."""
    from benchmarks.hub import _depthwise_bytes

    blob = (folder / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(blob[:8], "little")
    config = folder / "config.json"
    return header + _depthwise_bytes(blob, header) + (config.stat().st_size if config.exists() else 0)


def run_scan(n_models: int, workdir: Path, latency: float = LATENCY_S,
             extra_args: tuple[str, ...] = ()) -> dict:
    """Build and serve a planted zoo of `n_models`, scan it once; the benchmark row."""
    from benchmarks.zoo import HUB_AUTHOR, ProcessTreeMemory, serve_zoo
    from dwscan.io.storage import read_table
    from dwscan.testing.hub_server import HubStandIn
    from dwscan.testing.synthetic import write_planted_zoo

    zoo = write_planted_zoo(workdir / "zoo", n_models, seed=n_models)
    floor = sum(floor_bytes(folder) for folder in zoo["models"].iterdir())
    out = workdir / "out"
    with HubStandIn(latency=latency) as hub:
        serve_zoo(hub, zoo["models"])
        env = {**os.environ, "RAY_ADDRESS": "", "HF_ENDPOINT": hub.endpoint,
               "HF_HUB_CACHE": str(workdir / "hf-cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        command = ["dwscan", "scan", "--hub", "--author", HUB_AUTHOR, "--out", str(out),
                   *extra_args]
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        with open(workdir / "dwscan.log", "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            with ProcessTreeMemory(process.pid) as memory:
                process.wait()
        wall = time.perf_counter() - start
        requests = len(hub.requests)
        sent = sum(hub.bytes_sent.values())
    models = read_table(out / "models.parquet").to_pylist()
    status = {s: sum(m["status"] == s for m in models) for s in ("ok", "skipped", "failed")}
    row = {"models": n_models, "latency ms": latency * 1000,
           "flags": " ".join(extra_args) or "default", "wall s": wall,
           "requests/model": requests / n_models, "fetched MB": sent / 1e6,
           "fetched/floor": sent / floor, "peak tree PSS GiB": memory.peak_tree_pss / 2**30,
           "largest process RSS GiB": memory.peak_process_rss / 2**30,
           "ok/skipped/failed": f"{status['ok']}/{status['skipped']}/{status['failed']}",
           "exit": process.returncode,
           "load avg before/after": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}"}
    row["targets met"] = _targets(row, status, n_models)
    print(json.dumps(row), flush=True)
    print("memory peak: " + ", ".join(f"{name} {pss / 2**20:.0f} MiB"
                                      for name, pss in memory.at_peak[:8]), flush=True)
    return row


def _targets(row: dict, status: dict, n_models: int) -> str:
    checks = {f"time <= {TARGETS['seconds']:g} s": n_models != 300 or row["wall s"] <= TARGETS["seconds"],
              f"<= {TARGETS['requests']:g} requests/model": row["requests/model"] <= TARGETS["requests"],
              f"memory <= {TARGETS['gib']:g} GiB": row["peak tree PSS GiB"] <= TARGETS["gib"],
              "every model ok": status["ok"] == n_models,
              f"bytes <= {TARGETS['floor']:g}x floor": row["fetched/floor"] <= TARGETS["floor"]}
    missed = [name for name, ok in checks.items() if not ok]
    return "all" if not missed else "missed: " + ", ".join(missed)


def run(sizes: tuple[int, ...] = SIZES) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"dwscan-hub-latency-{n}-") as folder:
            rows.append(run_scan(n, Path(folder)))
    return rows
