"""Hub ingestion: bytes fetched per model against the physical floor, and models per minute.

Serves timm architectures (random weights, saved by timm's own state dict) from the loopback hub
stand-in that the tests use, scans them through a local Ray exactly as `dwscan scan` does, and
returns table rows. Run all benchmarks with `python -m benchmarks`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

ARCHS = {"convnext_atto": "d2_in1k", "mobilenetv3_small_050": "lamb_in1k",
         "efficientnet_b0": "ra_in1k", "resnet18": "a1_in1k"}
ZOO_SIZE = 200
CONCURRENCY = (1, 4, 16)


def run() -> list[dict]:
    from dwscan.testing.hub_server import shared_hub

    hub = shared_hub()
    import timm
    import torch
    from safetensors.torch import save

    from dwscan.testing.hub_server import Repo

    payloads = {}
    for arch, tag in ARCHS.items():
        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in timm.create_model(arch).state_dict().items()}
        payloads[arch] = {"model.safetensors": save(state), "config.json": json.dumps(
            {"architecture": arch, "pretrained_cfg": {"tag": tag}}).encode()}
        hub.add_repo(f"timm/{arch}.{tag}", Repo(payloads[arch]))
    for i in range(ZOO_SIZE):  # the zoo for throughput: 200 repos of mobilenetv3_small_050
        hub.add_repo(f"zoo/mobilenetv3_small_050.copy{i:03d}", Repo(
            payloads["mobilenetv3_small_050"], tags=["zoo"]))

    from dwscan.executor import ray_executor
    from dwscan.io.storage import OutputLayout
    from dwscan.io.zoo import hub_spec
    from dwscan.run import scan_models

    ray_executor.init_ray(None)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        layout = OutputLayout(out)
        specs = [hub_spec(f"timm/{arch}.{tag}") for arch, tag in ARCHS.items()]
        scanned, _ = scan_models(specs, layout, max_in_flight=1)
        for row in scanned.to_pylist():
            arch = row["architecture"]
            size = len(payloads[arch]["model.safetensors"])
            header = 8 + int.from_bytes(payloads[arch]["model.safetensors"][:8], "little")
            floor = header + _depthwise_bytes(payloads[arch]["model.safetensors"], header)
            sent = hub.bytes_sent[row["model_id"]]
            rows.append({"architecture": arch, "status": row["status"],
                         "checkpoint_mb": size / 1e6, "fetched_mb": sent / 1e6,
                         "floor_mb": floor / 1e6, "fetched/checkpoint": sent / size,
                         "fetched/floor": sent / floor})
        zoo = [hub_spec(f"zoo/mobilenetv3_small_050.copy{i:03d}") for i in range(ZOO_SIZE)]
        for concurrency in CONCURRENCY:
            load = os.getloadavg()[0]  # 2 cores: above ~2, other work shared them
            start = time.perf_counter()
            scanned, _ = scan_models(zoo, layout, max_in_flight=concurrency)
            seconds = time.perf_counter() - start
            ok = scanned.column("status").to_pylist().count("ok")
            rows.append({"zoo of 200 repos": f"concurrency {concurrency}",
                         "models": ZOO_SIZE, "ok": ok, "seconds": seconds,
                         "models/min": 60 * ZOO_SIZE / seconds,
                         "load avg before/after": f"{load:.1f}/{os.getloadavg()[0]:.1f}"})
    import ray

    ray.shutdown()
    os.environ.pop("HF_ENDPOINT", None)
    return rows


def _depthwise_bytes(blob: bytes, header_end: int) -> int:
    from dwscan.io.checkpoints import TensorInfo
    from dwscan.stages.extract import depthwise_verdict

    header = json.loads(blob[8:header_end])
    total = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if depthwise_verdict(TensorInfo(name, tuple(meta["shape"]), meta["dtype"])) == "keep":
            begin, end = meta["data_offsets"]
            total += end - begin
    return total
