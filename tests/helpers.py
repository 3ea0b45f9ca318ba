"""Helpers the tests import: small checkpoints, and the one hub stand-in of this test process."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import torch

from tests.hub_server import HubStandIn

_HUB: HubStandIn | None = None


def shared_hub() -> HubStandIn:
    """Start the hub stand-in once per process and point HF_ENDPOINT and HF_HUB_CACHE at it.

    Call it before anything imports huggingface_hub, which reads both once, at import; every
    subprocess a test starts (dwscan, Ray workers) inherits them.
    """
    global _HUB
    if _HUB is None:
        _HUB = HubStandIn().__enter__()
        cache = tempfile.mkdtemp(prefix="dwscan-test-hub-cache-")
        os.environ["HF_ENDPOINT"] = _HUB.endpoint
        os.environ["HF_HUB_CACHE"] = cache
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        atexit.register(_HUB.__exit__)
        atexit.register(shutil.rmtree, cache, True)
    return _HUB


def tiny_state_dict() -> dict[str, np.ndarray]:
    """Depthwise 3x3 and 5x5 layers (names that sort wrongly as text), a non-square depthwise
    weight, and non-depthwise tensors around them."""
    rng = np.random.default_rng(0)
    return {
        "stem.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),  # dense conv
        "blocks.2.conv_dw.weight": rng.normal(size=(8, 1, 3, 3)).astype(np.float32),
        "blocks.2.bn.weight": np.ones(8, np.float32),
        "blocks.10.conv_dw.weight": rng.normal(size=(16, 1, 5, 5)).astype(np.float32),
        "blocks.10.conv_pw.weight": rng.normal(size=(16, 8, 1, 1)).astype(np.float32),
        "blocks.11.conv_dw.weight": rng.normal(size=(4, 1, 1, 7)).astype(np.float32),  # 1x7
        "head.fc.weight": rng.normal(size=(10, 16)).astype(np.float32),
    }


def write_torch(state: dict[str, np.ndarray], path, wrapper: str | None = None) -> None:
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    torch.save({wrapper: tensors, "epoch": 3} if wrapper else tensors, path)
