"""Shared fixtures. The hub stand-in starts here, at import, before any test module can import
huggingface_hub (see pipeline/testing/scanned_zoo.py:shared_hub)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from dwscan.testing.hub_server import shared_hub
from tests.helpers import tiny_state_dict

shared_hub()
# Training in this process uses one thread, as the train stage's tasks do (stages.train
# TRAIN_THREADS): the same numbers, and no spinning threads fighting the other xdist worker's.
torch.set_num_threads(1)
# URLs read by the report stage (timm's tables) are cached here, not in the user's ~/.cache,
# and removed when this process ends
if "DWSCAN_CACHE" not in os.environ:
    os.environ["DWSCAN_CACHE"] = tempfile.mkdtemp(prefix="dwscan-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DWSCAN_CACHE"], ignore_errors=True)
# A process the tests start (a dwscan command, Ray's nodes and workers) that dies of a fatal
# signal prints its Python stack: a rare crash in CI says where it was
os.environ.setdefault("PYTHONFAULTHANDLER", "1")


@pytest.fixture
def tiny_state() -> dict[str, np.ndarray]:
    return tiny_state_dict()


@pytest.fixture
def tiny_safetensors(tmp_path, tiny_state):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_state, str(path))
    return path


def pytest_collection_modifyitems(config, items):
    """Slow tests first (stable within each kind): with the suite on two pytest-xdist workers
    (pyproject's addopts), the long ones start at once and the quick ones fill in around them,
    instead of one long test ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
