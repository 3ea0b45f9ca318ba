"""Helpers the tests import: small checkpoints, and the one local Ray that dwscan commands of
this test process can share."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


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


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    """A safetensors file written by hand: its header's length, the header, the data (any
    header, checked by nothing: hostile files too)."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def many_tiny_tensors(path, n: int) -> None:
    """A safetensors file of n tiny depthwise tensors, written directly (fast at 10^6)."""
    path.write_bytes(safetensors_bytes(
        {f"b.{i}.w": {"dtype": "F32", "shape": [1, 1, 2, 2], "data_offsets": [16 * i, 16 * i + 16]}
         for i in range(n)}, bytes(16 * n)))


_RAY = None


def shared_ray():
    """This test process's one local Ray (tests.ray_cluster.LocalCluster: a head with token
    authentication on, no dashboard: an idle head with one burns a third more CPU, and only
    the job-submission test needs its job API, on a head of its own), started on first use,
    stopped at exit. Nothing may `ray stop` it: that stops every Ray on the machine."""
    global _RAY
    if _RAY is None:
        from tests.ray_cluster import LocalCluster

        _RAY = LocalCluster(head_cpus=os.cpu_count() or 2).__enter__()
        atexit.register(_RAY.__exit__)
    return _RAY


def shared_ray_env() -> dict[str, str]:
    """The environment of a `dwscan` subprocess that joins the shared local Ray, so that a
    command does not pay for starting its own Ray (seconds on 2 cores, dozens of commands).

    The head's workers see the environment of the moment it started (the hub stand-in's
    HF_ENDPOINT and caches from conftest): a test that gives its command's workers anything else
    (another hub, S3 credentials) or kills its driver mid-run keeps a Ray of its own
    (`RAY_ADDRESS=""`)."""
    cluster = shared_ray()
    return {**cluster.env, "RAY_ADDRESS": cluster.address}


@contextmanager
def page_in_chromium(page_file: Path, viewport: dict | None = None) -> Iterator[object]:
    """`page_file` loaded in headless Chromium (Debian's package, through Playwright): the
    Playwright page, the browser closed after."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "the browser test needs Debian's chromium: apt-get install -y chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(**({"viewport": viewport} if viewport else {}))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            yield page
        finally:
            browser.close()
