"""Extraction: kernels per second and checkpoint MB per second of `extract_depthwise_kernels`
(a local checkpoint to an in-memory KERNELS table), against reading the same checkpoint without
extracting anything: `torch.load(weights_only=True)` for torch files, a raw read of every byte
(`Path.read_bytes`) for safetensors, which extraction reads by byte ranges, tensor by tensor.
The demo zoo's EfficientNet-Lite torch files, EfficientNet-Lite2 converted to safetensors,
timm's convnext_tiny (random weights, 114 MB, depthwise kernels 1% of it) and a synthetic
checkpoint of depthwise 7x7 layers only. The page cache is warm for both sides (one untimed run
first); times are the minimum and median of 5 runs, rates come from the minimum, and the ratio
is extraction time over baseline time. The last column is the whole `extract_model_to_parquet`
(extraction and the atomic Parquet write)."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks._common import times

REPEATS = 5
SYNTHETIC_LAYERS, SYNTHETIC_CHANNELS = 64, 8192  # 524,288 depthwise 7x7 kernels, 103 MB


def run() -> list[dict]:
    import torch

    from dwscan.io.zoo import demo_zoo

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        cases = [(spec.model_id, Path(spec.source)) for spec in demo_zoo()]
        lite2 = cases[-1][1]
        cases.append(("efficientnet-lite2", _to_safetensors(
            torch.load(lite2, map_location="cpu", weights_only=True), folder / "lite2.safetensors")))
        cases.append(("convnext_tiny (random)", _convnext_tiny(folder / "convnext_tiny.safetensors")))
        cases.append((f"synthetic {SYNTHETIC_LAYERS} x {SYNTHETIC_CHANNELS} 7x7",
                      _synthetic(folder / "depthwise_only.safetensors")))
        for name, path in cases:
            rows.append(_case(name, path, folder / "out"))
            print(rows[-1], flush=True)
    return rows


def _case(name: str, path: Path, out: Path) -> dict:
    import torch

    from dwscan.io.zoo import local_checkpoint_spec
    from dwscan.stages.extract import extract_depthwise_kernels, extract_model_to_parquet

    if path.suffix == ".safetensors":
        baseline_name, baseline = "raw read", path.read_bytes
    else:
        baseline_name = "torch.load"
        def baseline() -> object:
            return torch.load(path, map_location="cpu", weights_only=True)
    spec = local_checkpoint_spec(path, model_id="bench")
    extract, base, to_parquet = (_timed(call) for call in (
        lambda: extract_depthwise_kernels(path, "bench"), baseline,
        lambda: extract_model_to_parquet(spec, out)))
    kernels = extract_depthwise_kernels(path, "bench").n_filters
    size_mb = path.stat().st_size / 1e6
    return {"checkpoint": name, "format": path.suffix.lstrip("."), "file MB": size_mb,
            "kernels": kernels, "extract s (min/median)": _min_median(extract),
            "kernels/s": kernels / min(extract), "MB/s": size_mb / min(extract),
            "baseline": baseline_name, "baseline s (min/median)": _min_median(base),
            "extract / baseline": min(extract) / min(base),
            "extract + Parquet s (min/median)": _min_median(to_parquet)}


def _timed(call: Callable[[], object]) -> list[float]:
    call()  # warm the page cache and the imports
    return times(call, REPEATS)


def _min_median(seconds: list[float]) -> str:
    return f"{min(seconds):.3g} / {statistics.median(seconds):.3g}"


def _to_safetensors(state: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    return path


def _convnext_tiny(path: Path) -> Path:
    import timm
    import torch

    torch.manual_seed(0)
    return _to_safetensors(timm.create_model("convnext_tiny").state_dict(), path)


def _synthetic(path: Path) -> Path:
    """Depthwise layers only: every byte is a kernel, so the rate per kernel shows alone."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({f"blocks.{i}.conv_dw.weight": rng.standard_normal(
        (SYNTHETIC_CHANNELS, 1, 7, 7), dtype=np.float32) for i in range(SYNTHETIC_LAYERS)},
        str(path))
    return path
