"""Shared fixtures. The hub stand-in starts here, at import, before any test module can import
huggingface_hub (see pipeline/testing/scanned_zoo.py:shared_hub)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from dwscan.testing.hub_server import shared_hub
from tests.helpers import tiny_state_dict

shared_hub()
# URLs read by the report stage (timm's tables) are cached here, not in the user's ~/.cache
os.environ.setdefault("DWSCAN_CACHE", tempfile.mkdtemp(prefix="dwscan-test-cache-"))


@pytest.fixture
def tiny_state() -> dict[str, np.ndarray]:
    return tiny_state_dict()


@pytest.fixture
def tiny_safetensors(tmp_path, tiny_state):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_state, str(path))
    return path
