"""Shared fixtures. The hub stand-in starts here, at import, before any test module can import
huggingface_hub (see tests/helpers.py:shared_hub)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.helpers import shared_hub, tiny_state_dict

shared_hub()


@pytest.fixture
def tiny_state() -> dict[str, np.ndarray]:
    return tiny_state_dict()


@pytest.fixture
def tiny_safetensors(tmp_path, tiny_state):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_state, str(path))
    return path
