"""End to end: `dwscan run` on the demo zoo (EfficientNet-Lite0/1/2) in this process, wall time
per stage, Ray start-up included (target: under 60 s on this machine)."""

from __future__ import annotations

import tempfile
import time


def run() -> list[dict]:
    import ray

    from dwscan.io.zoo import demo_zoo
    from dwscan.run import RunOptions, run_pipeline

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = run_pipeline(demo_zoo(), RunOptions(out=out))
        total = time.perf_counter() - start
    ray.shutdown()
    rows = [{"stage": stage, "seconds": seconds} for stage, seconds in summary.timings.items()]
    rows.append({"stage": "total (run_pipeline)", "seconds": total})
    return rows
