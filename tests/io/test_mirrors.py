"""Issue 23: dwscan against a real hub mirror, olah 0.5.4 run offline over three local git repos
(one a git-lfs pointer). olah ignores Range, has no model listing and answers 401 RepoNotFound
for a missing repo: one `dwscan scan` reads the three repos and a missing one, one `dwscan scan
--hub` tries its listing.

olah needs a venv of its own (pipeline/testing/olah.py). These tests run where it exists
($DWSCAN_OLAH_VENV, default ~/.cache/dwscan/olah-0.5.4) or where DWSCAN_TEST_OLAH=1 lets the
fixture build it (about 35 s, network to PyPI); elsewhere they are skipped, saying so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.numpy import save

from dwscan.io.storage import OutputLayout, read_table
from dwscan.stages.extract import extract_depthwise_kernels
from dwscan.testing import olah
from tests.helpers import tiny_state_dict

pytestmark = pytest.mark.slow
REPOS = {"timm/tiny_a": 1.0, "timm/tiny_b": 2.0, "timm/tiny_c": -0.5}  # weights scaled by
LFS_REPO = "timm/tiny_c"


@pytest.fixture(scope="session")
def olah_cli() -> Path:
    if shutil.which("git") is None:
        pytest.skip("olah mirror tests need git (olah reads the repos with it)")
    venv = olah.default_venv()
    cli = olah.olah_cli(venv)
    if cli is None and os.environ.get("DWSCAN_TEST_OLAH") == "1":
        cli = olah.install_olah(venv)
    if cli is None:
        pytest.skip(f"olah {olah.OLAH_VERSION} is not installed in {venv}: set "
                    "DWSCAN_TEST_OLAH=1 to install it there (about 35 s, network to PyPI), or "
                    "DWSCAN_OLAH_VENV to a venv that has it")
    return cli


@pytest.fixture
def mirror(olah_cli, tmp_path):
    """olah over the three repos; yields (endpoint, {repo: weights bytes}, local files)."""
    mirrors, repos, local = tmp_path / "mirrors", tmp_path / "olah-cache", tmp_path / "local"
    local.mkdir()
    weights = {}
    for repo_id, scale in REPOS.items():
        state = {k: v * scale for k, v in tiny_state_dict().items()}
        weights[repo_id] = save(state)
        (local / f"{repo_id.replace('/', '--')}.safetensors").write_bytes(weights[repo_id])
        olah.make_repo(mirrors, repo_id, {
            "model.safetensors": weights[repo_id],
            "config.json": json.dumps({"architecture": "tiny", "pretrained_cfg": {
                "tag": repo_id.split("_")[-1]}}).encode()},
            lfs=frozenset({"model.safetensors"}) if repo_id == LFS_REPO else frozenset())
        olah.seed_model_info(repos, mirrors, repo_id)
    with olah.running_olah(olah_cli, mirrors, repos) as endpoint:
        yield endpoint, weights, local


def _dwscan(endpoint: str, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "", "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache)}
    return subprocess.run(["dwscan", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_olah_repos_scan_in_one_pass_each_and_missing_is_not_found(mirror, tmp_path):
    endpoint, weights, local = mirror
    out = tmp_path / "out"
    models = [a for repo_id in [*REPOS, "timm/nope"] for a in ("--model", repo_id)]
    result = _dwscan(endpoint, tmp_path / "hf-cache", "scan", "--out", str(out),
                     "--concurrency", "2", *models)
    assert result.returncode == 1, result.stderr[-3000:]  # timm/nope failed
    rows = {r["model_id"]: r for r in read_table(OutputLayout(out).models_path).to_pylist()}
    nope = rows.pop("timm/nope")
    assert (nope["status"], nope["error"]) == ("failed", "not found (model info of timm/nope)")
    for repo_id, row in rows.items():
        assert (row["status"], row["range_support"]) == ("ok", "no"), row
        assert row["bytes_fetched"] <= 1.1 * len(weights[repo_id]), (repo_id, row)
        hub = read_table(OutputLayout(out).kernels_path(repo_id)).drop(["model_id"])
        disk = extract_depthwise_kernels(
            local / f"{repo_id.replace('/', '--')}.safetensors", repo_id).kernels
        assert hub.equals(disk.drop(["model_id"])), repo_id

    listing = _dwscan(endpoint, tmp_path / "hf-cache", "scan", "--hub", "--author", "timm",
                      "--out", str(tmp_path / "listed"))
    assert listing.returncode == 2, listing.stderr[-3000:]
    error = listing.stderr.strip()
    assert "\n" not in error and "Traceback" not in error, error
    assert error.startswith(f"dwscan scan: error: the hub endpoint HF_ENDPOINT={endpoint} cannot "
                            "list models ("), error
    assert error.endswith("name the repos with --model REPO_ID instead"), error
