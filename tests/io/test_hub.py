"""Hub ingestion against a hub stand-in on 127.0.0.1 (pipeline/testing/hub_server.py): discovery, header-first
range reads, every weight layout, retries under injected faults, and the byte floor."""

import io
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save, save_file

from dwscan import schemas
from dwscan.io import hub as hub_io
from dwscan.io.accuracy import DEMO_PRETRAIN_CSV
from dwscan.io.checkpoints import COALESCE_GAP
from dwscan.io.storage import OutputLayout, read_table
from dwscan.io.zoo import hub_spec
from dwscan.stages.extract import extract_depthwise_kernels, extract_from_reader, extract_model_to_parquet
from dwscan.testing.hub_server import Fault, HubStandIn, Repo, shared_hub
from tests.helpers import shared_ray_env

timm = pytest.importorskip("timm")

ARCHS = {"convnext_atto": "d2_in1k", "mobilenetv3_small_050": "lamb_in1k",
         "efficientnet_b0": "ra_in1k", "resnet18": "a1_in1k"}


def timm_state(arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def timm_config(arch: str, tag: str) -> bytes:
    return json.dumps({"architecture": arch, "num_classes": 1000, "pretrained_cfg": {
        "tag": tag, "input_size": [3, 224, 224]}}).encode()


def build_zoo(hub: HubStandIn, local: Path) -> None:
    """The test zoo on the stand-in, and the same weights as local files under `local`."""
    for arch, tag in ARCHS.items():
        state = timm_state(arch)
        folder = local / arch  # the same repo as a local Hugging Face style folder
        folder.mkdir()
        save_file(state, str(folder / "model.safetensors"))
        (folder / "config.json").write_bytes(timm_config(arch, tag))
        hub.add_repo(f"timm/{arch}.{tag}", Repo({"model.safetensors": save(state),
                                                 "config.json": timm_config(arch, tag)}))
    # sharded: the efficientnet weights split over two files, with the index
    state = timm_state("efficientnet_b0")
    names = list(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    files = {shard: save({k: state[k] for k in keys}) for shard, keys in shards.items()}
    files["model.safetensors.index.json"] = json.dumps(
        {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}).encode()
    files["config.json"] = timm_config("efficientnet_b0", "sharded")
    hub.add_repo("timm/efficientnet_b0.sharded", Repo(files))
    # torch file only
    buffer = io.BytesIO()
    torch.save(timm_state("mobilenetv3_small_050"), buffer)
    hub.add_repo("timm/mobilenetv3_small_050.binonly", Repo({
        "pytorch_model.bin": buffer.getvalue(),
        "config.json": timm_config("mobilenetv3_small_050", "binonly")}))
    # half precision, and a depthwise tensor in int8
    state = timm_state("convnext_atto")
    half = {k: (v.half() if i % 2 else v.bfloat16()) if v.is_floating_point() else v
            for i, (k, v) in enumerate(state.items())}
    hub.add_repo("timm/convnext_atto.half", Repo({"model.safetensors": save(half)}))
    hub.add_repo("someone/int8-dw", Repo({"model.safetensors": save({
        "a.conv_dw.weight": torch.ones(4, 1, 3, 3, dtype=torch.int8),
        "b.conv_dw.weight": torch.randn(4, 1, 3, 3)})}, tags=["pytorch"]))
    hub.add_repo("timm/convnext_atto.gated", Repo({"model.safetensors": save(state)}, gated=True))
    # servers that do not answer Range as asked (Repo.range_mode): the same mobilenet weights
    mobilenet = save(timm_state("mobilenetv3_small_050"))
    for mode in RANGE_MODES:
        hub.add_repo(f"timm/mobilenetv3_small_050.range-{mode}", Repo({
            "model.safetensors": mobilenet,
            "config.json": timm_config("mobilenetv3_small_050", f"range-{mode}")},
            range_mode=mode))


RANGE_MODES = ("ignore", "shift", "gzip")


@pytest.fixture(scope="module")
def zoo():
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder)
        build_zoo(shared_hub(), local)
        yield shared_hub(), local


@pytest.fixture
def hub(zoo):
    """The stand-in that HF_ENDPOINT points at (see conftest), with its counters reset; the
    listing a test breaks is mended after it, for the other modules that share the stand-in."""
    server, _ = zoo
    server.bytes_sent.clear()
    server.requests.clear()
    server.timeline.clear()
    server.faults.clear()
    server.listing = "json"
    yield server
    server.faults.clear()
    server.listing = "json"


def _hub_kernels(repo_id: str, **options):
    from dwscan.io.hub import HubOptions, open_hub_checkpoint

    with open_hub_checkpoint(repo_id, options=HubOptions(**options)) as opened:
        return extract_from_reader(opened.reader, "m"), opened


@pytest.mark.parametrize("arch", list(ARCHS))
def test_hub_kernels_equal_the_local_read_value_for_value(hub, zoo, arch):
    _, local = zoo
    from_hub, opened = _hub_kernels(f"timm/{arch}.{ARCHS[arch]}")
    from_disk = extract_depthwise_kernels(local / arch, "m")
    assert from_hub.kernels.equals(from_disk.kernels)
    assert opened.revision == hub.repos[f"timm/{arch}.{ARCHS[arch]}"].sha
    assert opened.config["architecture"] == arch


def test_convnext_atto_costs_its_depthwise_bytes_and_header_only(hub):
    repo = "timm/convnext_atto.d2_in1k"
    extraction, opened = _hub_kernels(repo)
    depthwise_bytes = extraction.n_filters * 49 * 4
    floor = depthwise_bytes + opened.reader.header_bytes
    sent = hub.bytes_sent[repo]
    assert floor <= sent <= 1.1 * floor
    assert sent < 0.05 * len(hub.repos[repo].files["model.safetensors"])
    assert opened.bytes_fetched == sent
    ranges = [p for m, p, s in hub.requests if f"{repo}/" in p and p.endswith("model.safetensors")]
    assert 1 <= len(ranges) <= 2 + extraction.n_layers  # header (2 reads) + one per layer at most


def test_a_model_without_depthwise_convs_is_skipped_without_weights(hub, tmp_path):
    row = extract_model_to_parquet(hub_spec("timm/resnet18.a1_in1k"), tmp_path)
    assert (row["status"], row["error"]) == ("skipped", "no depthwise convs")
    weights = len(hub.repos["timm/resnet18.a1_in1k"].files["model.safetensors"])
    assert hub.bytes_sent["timm/resnet18.a1_in1k"] < 0.01 * weights
    assert not OutputLayout(tmp_path).kernels_path("timm/resnet18.a1_in1k").exists()


def test_scratch_folders_of_processes_gone_are_removed_first(tmp_path, monkeypatch):
    """A SIGKILLed worker's scratch folder (here: a half-written .bin) goes at the next process's
    first hub read on that machine; a live process's, another host's and unrelated ones stay."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"{hub_io._scratch_owner(gone.pid)}-a1b2c3d4"
    dead.mkdir()
    (dead / "pytorch_model.bin").write_bytes(b"\0" * 1000)
    live = tmp_path / f"{hub_io._scratch_owner(os.getpid())}-e5f6g7h8"
    other_host = tmp_path / f"{hub_io.SCRATCH_PREFIX}{gone.pid}-zzzz-i9j0k1l2"
    before_pids = tmp_path / f"{hub_io.SCRATCH_PREFIX}m3n4o5p6"  # named before this change
    no_such_pid = tmp_path / f"{hub_io._scratch_owner(10**30)}-q7r8s9t0"  # os.kill overflows
    for path in (live, other_host, before_pids, no_such_pid):
        path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(hub_io, "_swept", False)
    mine = hub_io.scratch_folder()
    assert mine.name.startswith(hub_io._scratch_owner(os.getpid()) + "-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, other_host, before_pids, no_such_pid, mine))
    (tmp_path / "again").mkdir()
    assert hub_io.remove_orphaned_scratch(tmp_path) == []  # nothing more to remove


def test_sharded_bin_only_and_half_precision_repos(hub, zoo, tmp_path, monkeypatch):
    _, local = zoo
    effnet = extract_depthwise_kernels(local / "efficientnet_b0", "m")
    sharded, _ = _hub_kernels("timm/efficientnet_b0.sharded")
    assert sharded.kernels.equals(effnet.kernels)

    mobilenet = extract_depthwise_kernels(local / "mobilenetv3_small_050", "m")
    # this read's scratch folder in a temp dir of its own: in the shared /tmp, another test's
    # hub read (the other pytest-xdist worker, a Ray worker) has its own there at any moment
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    with monkeypatch.context() as patched:
        patched.setattr(tempfile, "tempdir", str(scratch_root))
        bin_only, opened = _hub_kernels("timm/mobilenetv3_small_050.binonly")
    assert bin_only.kernels.equals(mobilenet.kernels)
    assert list(scratch_root.iterdir()) == []  # the downloaded .bin and its folder deleted

    half, _ = _hub_kernels("timm/convnext_atto.half")
    full = extract_depthwise_kernels(local / "convnext_atto", "m")
    got = np.array(half.kernels.column("weights").to_pylist())
    want = np.array(full.kernels.column("weights").to_pylist())
    assert half.n_filters == full.n_filters and np.allclose(got, want, rtol=1e-2, atol=1e-2)

    int8, _ = _hub_kernels("someone/int8-dw")
    assert int8.n_layers == 1 and int8.skipped_layers[0]["reason"] == "dtype I8 not supported"


def test_gated_and_missing_repos_fail_with_their_reason_and_are_not_retried(hub, tmp_path):
    gated = extract_model_to_parquet(hub_spec("timm/convnext_atto.gated"), tmp_path)
    missing = extract_model_to_parquet(hub_spec("timm/no-such-model"), tmp_path)
    assert gated["status"] == "failed" and gated["error"].startswith("gated or private")
    assert missing["status"] == "failed" and missing["error"].startswith("not found")
    info_calls = [p for m, p, s in hub.requests if p.startswith("/api/models/timm/convnext_atto.g")]
    assert len(info_calls) == 1


@pytest.mark.parametrize("kind", ["error500", "rate429", "stall", "truncate", "reset"])
def test_faults_are_retried_and_the_kernels_still_come_back_whole(hub, zoo, kind):
    _, local = zoo
    hub.faults.append(Fault("model.safetensors", kind, times=2, seconds=3.0))
    extraction, _ = _hub_kernels("timm/convnext_atto.d2_in1k", timeout=1.0, backoff=0.05)
    from_disk = extract_depthwise_kernels(local / "convnext_atto", "m")
    assert extraction.kernels.equals(from_disk.kernels)
    assert hub.faults[0].times == 0  # both faults were met, and retried past
    if kind == "rate429":
        assert [s for _, p, s in hub.requests if "convnext_atto.d2_in1k/" in p
                and p.endswith("model.safetensors")][:2] == [429, 429]


def test_a_fault_that_never_ends_fails_that_model_with_the_reason(hub, tmp_path):
    from dwscan.io.hub import HubError

    hub.faults.append(Fault("model.safetensors", "error500", times=100))
    with pytest.raises(HubError, match="gave up after 3 attempts"):
        _hub_kernels("timm/convnext_atto.d2_in1k", max_attempts=3, backoff=0.01)


def test_discovery_filters(hub):
    from dwscan.io.hub import list_hub_models

    timm_repos = list_hub_models(author="timm")
    assert "timm/convnext_atto.d2_in1k" in timm_repos and "someone/int8-dw" not in timm_repos
    assert list_hub_models(search="convnext") == [
        "timm/convnext_atto.d2_in1k", "timm/convnext_atto.gated", "timm/convnext_atto.half"]
    assert "someone/int8-dw" not in list_hub_models(filter="timm")
    assert len(list_hub_models(author="timm", limit=2)) == 2


def test_coalescing_joins_only_near_neighbours():
    from dwscan.io.checkpoints import SafetensorsReader

    # laid out a, b, c: b is wider than the coalescing gap, so a and c are not neighbours
    state = {"a": torch.zeros(16), "b": torch.ones(2 * COALESCE_GAP // 4), "c": torch.full((4,), 2.0)}
    blob = save(state)
    calls = []

    def fetch(file, start, stop):
        calls.append((start, stop))
        return blob[start:stop]

    reader = SafetensorsReader(fetch, ["m.safetensors"])
    calls.clear()
    reader.prefetch(["a", "c"])
    assert len(calls) == 2 and sum(b - a for a, b in calls) == 16 * 4 + 4 * 4
    calls.clear()
    reader.prefetch(["b", "c"])
    assert len(calls) == 1
    assert reader.read("c").tolist() == [2.0] * 4 and reader.read("a").tolist() == [0.0] * 16
    assert len(calls) == 1  # both came from the cache


def _dwscan(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = shared_ray_env()  # HF_ENDPOINT (conftest) points at the stand-in
    return subprocess.run(["dwscan", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_scan_the_hub_through_ray(hub, tmp_path):
    result = _dwscan(["scan", "--hub", "--author", "timm", "--concurrency", "4",
                      "--out", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # the gated and lying repos failed
    models = {r["model_id"]: r for r in read_table(tmp_path / "out" / "models.parquet").to_pylist()}
    assert set(models) == {r for r in hub.repos if r.startswith("timm/")}
    status = {m: r["status"] for m, r in models.items()}
    assert status.pop("timm/resnet18.a1_in1k") == "skipped"
    assert status.pop("timm/convnext_atto.gated") == "failed"
    for mode in ("shift", "gzip"):  # a 206 that is not the range asked: never stored
        lying = models[f"timm/mobilenetv3_small_050.range-{mode}"]
        assert "range response does not match the request" in lying["error"]
        assert status.pop(f"timm/mobilenetv3_small_050.range-{mode}") == "failed"
    assert set(status.values()) == {"ok"}
    assert {m: r["range_support"] for m, r in models.items() if r["status"] == "ok"
            and "range-" in m} == {"timm/mobilenetv3_small_050.range-ignore": "no"}
    assert {r["range_support"] for m, r in models.items() if r["status"] == "ok"
            and "range-" not in m and not m.endswith("binonly")} == {"yes"}
    ignored = models["timm/mobilenetv3_small_050.range-ignore"]
    assert ignored["bytes_fetched"] <= 1.1 * len(
        hub.repos["timm/mobilenetv3_small_050.range-ignore"].files["model.safetensors"])
    assert models["timm/convnext_atto.gated"]["error"].startswith("gated or private")
    for model_id, row in models.items():
        assert row["revision"] == hub.repos[model_id].sha or row["status"] == "failed"
    atto = models["timm/convnext_atto.d2_in1k"]
    assert (atto["accuracy_key"], atto["architecture"], atto["input_size"]) == (
        "convnext_atto.d2_in1k", "convnext_atto", "3x224x224")
    floor = atto["n_filters"] * 49 * 4
    assert floor < atto["bytes_fetched"] < 1.1 * floor
    assert "FAILED timm/convnext_atto.gated" in result.stderr
    # the progress counts batch tasks, and says so: N/M batches, M the batches of that size
    lines = re.findall(r"extract \((\d+) hub models, (\d+) a batch\): (\d+)/(\d+) batches \(",
                       result.stderr)
    n, size, done, total = map(int, lines[-1])
    assert n == len(models) and done == total == -(-n // size) < n, lines


@pytest.mark.slow
def test_run_from_the_hub_equals_run_from_local_files(hub, zoo, tmp_path):
    _, local = zoo
    chosen = ["convnext_atto", "mobilenetv3_small_050", "efficientnet_b0"]
    repo_ids = [f"timm/{arch}.{ARCHS[arch]}" for arch in chosen]
    # timm's published top-1 of these keys (results-imagenet.csv, commit aa4b5850); the weights
    # here are random, so only the join is under test
    accuracy = tmp_path / "results.csv"
    accuracy.write_text(
        "model,img_size,top1,top1_err,top5,top5_err,param_count,crop_pct,interpolation\n"
        "convnext_atto.d2_in1k,288,77.016,22.984,93.704,6.296,3.70,0.950,bicubic\n"
        "convnext_atto.d2_in1k,224,75.672,24.328,92.914,7.086,3.70,0.875,bicubic\n"
        "mobilenetv3_small_050.lamb_in1k,224,57.918,42.082,80.144,19.856,1.59,0.875,bicubic\n"
        "efficientnet_b0.ra_in1k,224,77.698,22.302,93.538,6.462,5.29,0.875,bicubic\n")
    sources = ["--accuracy-csv", str(accuracy), "--pretrain-csv", str(DEMO_PRETRAIN_CSV),
               # I/O, not the method: k-means templates (no training) over the same kernels
               "--templates", "kmeans"]
    from_hub = _dwscan(["run", "--out", str(tmp_path / "hub"), *sources,
                        *[a for r in repo_ids for a in ("--model", r)]], tmp_path)
    assert from_hub.returncode == 0, from_hub.stderr[-3000:]
    from_disk = _dwscan(["run", "--out", str(tmp_path / "disk"), *sources,
                         *[a for arch, r in zip(chosen, repo_ids)
                           for a in ("--checkpoint", str(local / arch), "--model-id", r)]],
                        tmp_path)
    assert from_disk.returncode == 0, from_disk.stderr[-3000:]
    a, b = OutputLayout(tmp_path / "hub"), OutputLayout(tmp_path / "disk")
    for repo_id in repo_ids:
        assert read_table(a.kernels_path(repo_id)).equals(read_table(b.kernels_path(repo_id)))
        assert read_table(a.assignments_path(repo_id)).equals(
            read_table(b.assignments_path(repo_id)))
    assert read_table(a.templates_path).equals(read_table(b.templates_path))
    assert read_table(a.clusterability_path).equals(read_table(b.clusterability_path))
    keys = ["model_id", "accuracy_key", "architecture", "n_layers", "n_filters", "status"]
    assert read_table(a.models_path).select(keys).equals(read_table(b.models_path).select(keys))
    overall = {r["model_id"]: r for r in read_table(a.clusterability_path).to_pylist()
               if r["kernel_size"] is None}
    assert {m: (r["family"], r["pretrain"], r["top1"], r["img_size"]) for m, r in overall.items()} == {
        "timm/convnext_atto.d2_in1k": ("convnext", "in1k", 75.672, 224),  # its config says 224
        "timm/mobilenetv3_small_050.lamb_in1k": ("mobilenetv3", "in1k", 57.918, 224),
        "timm/efficientnet_b0.ra_in1k": ("efficientnet", "in1k", 77.698, 224)}
    assert (a.reports_dir / "index.html").exists()
    assert read_table(a.table_path(schemas.CORRELATION)).num_rows > 0


def test_a_server_that_ignores_range_costs_one_pass_and_liars_fail_beside_a_good_repo(
        hub, zoo, tmp_path):
    """Issues 22 and 23: a mirror that answers Range with the whole file is read in one pass (one
    GET, at most the file's bytes); a shifted or gzip-encoded 206 is never stored, the model
    fails with the reason; the honest repo beside them reads as before."""
    from dwscan.io.hub import HubOptions

    _, local = zoo
    want = extract_depthwise_kernels(local / "mobilenetv3_small_050", "m").kernels
    good = extract_model_to_parquet(hub_spec("timm/mobilenetv3_small_050.lamb_in1k"), tmp_path)
    assert (good["status"], good["range_support"]) == ("ok", "yes")
    whole_file = len(hub.repos["timm/mobilenetv3_small_050.range-ignore"].files["model.safetensors"])
    rows = {mode: extract_model_to_parquet(hub_spec(f"timm/mobilenetv3_small_050.range-{mode}"),
                                           tmp_path) for mode in RANGE_MODES}
    ignore = rows["ignore"]
    assert (ignore["status"], ignore["range_support"]) == ("ok", "no"), ignore
    assert good["bytes_fetched"] < ignore["bytes_fetched"] <= 1.1 * whole_file
    layout = OutputLayout(tmp_path)
    assert read_table(layout.kernels_path("timm/mobilenetv3_small_050.range-ignore")).column(
        "weights").equals(want.column("weights"))
    gets = [p for m, p, s in hub.requests if m == "GET" and "range-ignore" in p
            and p.endswith("model.safetensors")]
    assert len(gets) == 1  # header and every depthwise tensor from the one whole-file answer
    for mode in ("shift", "gzip"):
        row = rows[mode]
        assert row["status"] == "failed", row
        assert "range response does not match the request" in row["error"], row["error"]
        assert "\n" not in row["error"]
        assert not layout.kernels_path(f"timm/mobilenetv3_small_050.range-{mode}").exists()
    assert "Content-Encoding gzip" in rows["gzip"]["error"]
    head = HubOptions().head_bytes  # the first read: the header length and the header
    assert f"asked bytes 0-{head - 1}, got Content-Range 'bytes 4-{head + 3}/" in rows["shift"][
        "error"]


def test_a_file_shorter_than_its_header_says_fails_at_once(hub, tmp_path):
    """A 206 cut at the end of the file is an honest answer about a truncated file: the model
    fails with that reason at once, not after every retry, and not as a lying server."""
    hub.add_repo("cut/short", Repo({"model.safetensors": save(timm_state("convnext_atto"))[:300]}))
    row = extract_model_to_parquet(hub_spec("cut/short"), tmp_path)
    assert row["status"] == "failed", row
    assert row["error"].startswith("model.safetensors of cut/short: the file ends at byte 300, "
                                   "before byte "), row["error"]
    # one request: the first read (HubOptions.head_bytes) finds the file ends before its header
    # (this repo's: the stand-in is shared, and another test's reads can reach it meanwhile)
    assert len([p for m, p, s in hub.requests
                if "cut/short/" in p and p.endswith("model.safetensors")]) == 1


def test_a_range_longer_than_the_request_cap_takes_several_requests(hub):
    from dwscan.io.hub import HubCheckpoint, HubOptions, RangeReader

    repo_id = "timm/convnext_atto.d2_in1k"
    data = hub.repos[repo_id].files["model.safetensors"]
    opened = HubCheckpoint(repo_id, hub.repos[repo_id].sha, None)
    # the query marks this reader's requests: other tests read the same file from the shared
    # stand-in at the same time (the server routes by the path and ignores the query)
    url = f"{hub.endpoint}/{repo_id}/resolve/main/model.safetensors?by=range-cap-test"
    reader = RangeReader(lambda file: url, HubOptions(max_range_bytes=1000), opened)
    assert reader("model.safetensors", 100, 3600) == data[100:3600]
    ranges = [p for m, p, s in hub.requests if p.endswith("?by=range-cap-test")]
    assert len(ranges) == 4 and opened.bytes_fetched == 3500 and opened.range_support == "yes"


class _EndlessFile:
    """A server whose one file declares 1 GiB and streams it for as long as anyone reads: as a
    whole-file 200 ('whole'), or as a 206 with the Content-Range asked but no Content-Length and
    a body that goes on past it ('long206')."""

    SIZE = 1 << 30

    def __init__(self, mode: str):
        import http.server
        import threading

        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                first, last = self.headers["Range"].removeprefix("bytes=").split("-")
                self.send_response(200 if mode == "whole" else 206)
                if mode == "whole":
                    self.send_header("Content-Length", str(owner.SIZE))
                else:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{owner.SIZE}")
                self.end_headers()
                piece = bytes(range(256)) * 256  # 64 KiB: byte i of the file is i % 256
                try:
                    for _ in range(owner.SIZE // len(piece)):
                        self.wfile.write(piece)
                        owner.sent += len(piece)
                except OSError:
                    pass
                self.close_connection = True

        self.sent = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/f"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode", ["whole", "long206"])
def test_a_huge_range_answer_is_read_only_up_to_the_range_end(mode):
    """Issue 22: a body of 1 GiB (declared or streamed) costs the reader only up to the end of
    the range it asked for, in bytes received and in memory."""
    import tracemalloc

    from dwscan.io.hub import STREAM_CHUNK, HubCheckpoint, HubError, HubOptions, RangeReader

    server = _EndlessFile(mode)
    opened = HubCheckpoint("x/y", "0" * 40, None)
    reader = RangeReader(lambda file: server.url, HubOptions(backoff=0.01), opened)
    tracemalloc.start()
    try:
        if mode == "whole":
            far = 5 << 20
            assert reader("f", 0, 8) == bytes(range(8))
            assert reader("f", 100, 200) == bytes(range(100, 200))
            assert reader("f", far, far + 300) == bytes(i % 256 for i in range(300))
            assert opened.bytes_fetched <= far + 2 * STREAM_CHUNK
            assert opened.range_support == "no"
        else:
            with pytest.raises(HubError, match="range response does not match the request "
                                               r"\(the body is longer than the 100 bytes asked"):
                reader("f", 0, 100)
            assert opened.bytes_fetched <= 2 * (100 + STREAM_CHUNK)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        reader.close()
        server.close()
    assert peak < 16 << 20, peak


@pytest.mark.parametrize(("status", "code", "reason"), [
    (401, "RepoNotFound", "not found"), (404, "RepoNotFound", "not found"),
    (401, "RevisionNotFound", "not found"), (404, "EntryNotFound", "not found"),
    (404, None, "not found"), (401, "GatedRepo", "gated or private"),
    (403, "GatedRepo", "gated or private"), (401, None, "gated or private"),
    (403, None, "gated or private")])
def test_not_found_codes_are_not_found_and_only_real_gating_is_gated(status, code, reason):
    """Issue 23: huggingface.co and mirrors answer 401 RepoNotFound for a missing repo."""
    from dwscan.io.hub import HubError, HubOptions, _HttpStatus, with_retries

    def call():
        raise _HttpStatus(status, None, code)

    with pytest.raises(HubError) as raised:
        with_retries(call, HubOptions(max_attempts=1), "model info of a/b")
    assert str(raised.value) == f"{reason} (model info of a/b)"


@pytest.mark.parametrize("listing", ["empty", "malformed", "none"])
def test_an_endpoint_without_a_model_listing_says_so_in_one_line(hub, listing):
    from dwscan.io.hub import list_hub_models, list_hub_revisions
    from dwscan.io.zoo import HubListingError

    hub.listing = listing
    for lister in (list_hub_models, list_hub_revisions):
        with pytest.raises(HubListingError) as raised:
            lister(author="timm")
        message = str(raised.value)
        assert message.startswith(f"the hub endpoint HF_ENDPOINT={hub.endpoint} cannot list "
                                  "models (") and message.endswith(
            "; name the repos with --model REPO_ID instead"), message
        assert "\n" not in message


def test_scan_and_rescan_hub_over_an_endpoint_without_listing_exit_2_in_one_line(tmp_path):
    """The command line: `dwscan scan --hub` and `dwscan rescan --hub` end with that line and
    exit code 2, before Ray starts (a stand-in of its own whose listing is empty, as olah's)."""
    with HubStandIn() as mirror:
        mirror.listing = "empty"
        env = {**os.environ, "RAY_ADDRESS": "", "HF_ENDPOINT": mirror.endpoint}
        for command in ("scan", "rescan"):
            result = subprocess.run(["dwscan", command, "--hub", "--author", "timm", "--out",
                                     str(tmp_path / "out")], env=env, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 2, result.stderr[-3000:]
            error = result.stderr.strip()
            assert error == (f"dwscan {command}: error: the hub endpoint HF_ENDPOINT="
                             f"{mirror.endpoint} cannot list models (its answer is not a model "
                             f"listing: JSONDecodeError: Expecting value: line 1 column 1 (char "
                             f"0)); name the repos with --model REPO_ID instead"), error


def test_a_deadline_ends_a_body_that_never_ends():
    """Issue 24: a model read in a thread beside others cannot have its worker killed; its
    deadline is checked between chunks, so a server that streams forever ends it on time."""
    from dwscan.io.hub import Deadline, HubCheckpoint, HubOptions, ModelTimeout, RangeReader

    server = _EndlessFile("whole")
    opened = HubCheckpoint("x/y", "0" * 40, None)
    reader = RangeReader(lambda file: server.url, HubOptions(deadline=Deadline(0.5)), opened)
    start = time.monotonic()
    try:
        with pytest.raises(ModelTimeout, match=r"^timed out after 0.5 s$"):
            reader("f", _EndlessFile.SIZE - 100, _EndlessFile.SIZE)  # 1 GiB on: seconds here
    finally:
        reader.close()
        server.close()
    assert time.monotonic() - start < 2.0
    assert opened.bytes_fetched < _EndlessFile.SIZE - 100


def test_a_models_ranges_go_out_side_by_side(hub, zoo):
    """Issue 24: convnext_atto's depthwise tensors lie between large ones, 12 ranges apart; from a
    server that answers Range as asked they are requested at once, not one round trip each."""
    from dwscan.testing.hub_server import peak_overlap

    _, local = zoo
    hub.latency = 0.05
    try:
        extraction, opened = _hub_kernels("timm/convnext_atto.d2_in1k")
    finally:
        hub.latency = 0.0
    assert extraction.kernels.equals(extract_depthwise_kernels(local / "convnext_atto", "m").kernels)
    ranges = [(start, end) for _, path, wanted, start, end in hub.timeline
              if path.endswith("model.safetensors") and not wanted.startswith("bytes=0-")]
    assert len(ranges) >= 10 and peak_overlap(ranges) >= 4  # one after another: 1
    assert opened.range_support == "yes"
