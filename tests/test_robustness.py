"""Issue 15: one bad model never costs the zoo. Each test runs `dwscan` as a user does, with a
good model beside the bad ones in the same command, and checks the good model's result, each bad
model's one-line reason, and that nothing stored earlier is lost."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import save

from dwscan.io.storage import OutputLayout, read_table
from dwscan.testing.hub_server import Repo, shared_hub
from tests.helpers import many_tiny_tensors, shared_ray_env, tiny_state_dict

pytestmark = pytest.mark.slow
TINY_FILTERS = 8 + 16  # depthwise kernels of tiny_state_dict (its 1x7 layer is skipped)


def dwscan(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["dwscan", *args], env=shared_ray_env(), capture_output=True,
                          text=True, timeout=timeout)


def good_folder(root: Path, name: str = "good", config: object | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    save_file(tiny_state_dict(), str(folder / "model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str)
                                            else json.dumps(config))
    return folder


def models_of(out: Path) -> dict[str, dict]:
    return {r["model_id"]: r for r in read_table(OutputLayout(out).models_path).to_pylist()}


def assert_plain_line(text: str) -> None:
    """A recorded reason or printed error: one line, no colour codes, no traceback."""
    assert text and "\n" not in text and "\x1b" not in text and "Traceback" not in text, text


def assert_good(out: Path, model_id: str = "good") -> None:
    row = models_of(out)[model_id]
    assert (row["status"], row["n_layers"], row["n_filters"]) == ("ok", 2, TINY_FILTERS), row
    assert read_table(OutputLayout(out).kernels_path(model_id)).num_rows == TINY_FILTERS


def test_files_outside_a_checkpoint_folder_are_never_read(tmp_path):
    """Point 1: shard names with '..' or an absolute path, and a symlink out of the folder."""
    outside = tmp_path / "elsewhere" / "other.safetensors"
    outside.parent.mkdir()
    save_file(tiny_state_dict(), str(outside))
    index = {"weight_map": {"blocks.2.conv_dw.weight": None}}
    bad = {}
    for name, shard in [("dotdot", "../elsewhere/other.safetensors"), ("absolute", str(outside))]:
        bad[name] = tmp_path / name
        bad[name].mkdir()
        index["weight_map"]["blocks.2.conv_dw.weight"] = shard
        (bad[name] / "model.safetensors.index.json").write_text(json.dumps(index))
    bad["symlink"] = tmp_path / "symlink"
    bad["symlink"].mkdir()
    (bad["symlink"] / "model.safetensors").symlink_to(outside)
    # a Hugging Face cache snapshot links into its repo's blobs/: that stays readable
    snapshot = tmp_path / "models--org--m" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    blob = tmp_path / "models--org--m" / "blobs" / "0123abcd"
    blob.parent.mkdir()
    save_file(tiny_state_dict(), str(blob))
    (snapshot / "model.safetensors").symlink_to(Path("../../blobs/0123abcd"))
    out = tmp_path / "out"
    args = ["scan", "--out", str(out), "--checkpoint", str(good_folder(tmp_path))]
    for folder in bad.values():
        args += ["--checkpoint", str(folder)]
    result = dwscan(*args, "--checkpoint", str(snapshot), "--model-id", "cached")
    assert result.returncode == 1, result.stderr[-3000:]
    assert_good(out)
    assert_good(out, "cached")
    models = models_of(out)
    assert "not a file name inside the checkpoint" in models["dotdot"]["error"]
    assert "not a file name inside the checkpoint" in models["absolute"]["error"]
    assert "resolves outside the checkpoint folder" in models["symlink"]["error"]
    for name in bad:
        assert models[name]["status"] == "failed" and models[name]["n_filters"] == 0
        assert_plain_line(models[name]["error"])
        assert not OutputLayout(out).kernels_path(name).exists()


def test_config_fields_of_the_wrong_type_are_ignored_with_a_warning(tmp_path):
    """Point 2: numbers for strings, a string for pretrained_cfg, deeply nested JSON, in local
    folders and in a hub repo's config.json: each model is scanned, with a warning."""
    good_config = {"architecture": "convnext_atto", "pretrained_cfg": {
        "tag": "d2_in1k", "input_size": [3, 224, 224]}}
    folders = {
        "good": good_folder(tmp_path, "good", good_config),
        "numbers": good_folder(tmp_path, "numbers", {"architecture": 123, "pretrained_cfg": {
            "tag": 5, "input_size": "224"}}),
        "stringcfg": good_folder(tmp_path, "stringcfg", {"architecture": "convnext_atto",
                                                         "pretrained_cfg": "d2_in1k"}),
        "nested": good_folder(tmp_path, "nested", "[" * 100_000 + "]" * 100_000),
        "fifo": good_folder(tmp_path, "fifo"),  # issue 22: config.json a FIFO nobody writes
        "devzero": good_folder(tmp_path, "devzero"),  # and a link to an endless device
        "escapes": good_folder(tmp_path, "escapes", {"architecture": "\x1b]0;pwned\x07conv"
                                                     "\x1b[2J\x1bcnext", "pretrained_cfg": 7}),
    }
    os.mkfifo(folders["fifo"] / "config.json")
    (folders["devzero"] / "config.json").symlink_to("/dev/zero")
    hub = shared_hub()
    state = {k: torch.from_numpy(v) for k, v in tiny_state_dict().items()}
    hub.add_repo("robust/bad-config", Repo({"model.safetensors": save(state), "config.json":
                                            json.dumps({"architecture": ["x"], "pretrained_cfg":
                                                        {"tag": {"a": 1}}}).encode()}))
    hub.add_repo("robust/nested-config", Repo({"model.safetensors": save(state),
                                               "config.json": b"{\"a\":" * 50_000 + b"1" +
                                               b"}" * 50_000}))
    out = tmp_path / "out"
    args = ["scan", "--out", str(out)]
    for folder in folders.values():
        args += ["--checkpoint", str(folder)]
    result = dwscan(*args, "--model", "robust/bad-config", "--model", "robust/nested-config")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    models = models_of(out)
    good = models["good"]
    assert (good["architecture"], good["pretrained_tag"], good["input_size"],
            good["accuracy_key"], good["warnings"]) == (
        "convnext_atto", "d2_in1k", "3x224x224", "convnext_atto.d2_in1k", None)
    expected = {
        "numbers": ["architecture is a int, not a str", "pretrained_cfg.tag is a int",
                    "pretrained_cfg.input_size is a str"],
        "stringcfg": ["pretrained_cfg is a str, not a dict"],
        "nested": ["config.json nested too deeply"],
        "robust/bad-config": ["architecture is a list, not a str", "tag is a dict"],
        "robust/nested-config": ["config.json nested too deeply"],
        "fifo": ["config.json is a FIFO, not a regular file: ignored"],
        "devzero": ["config.json is a character device, not a regular file: ignored"],
        "escapes": ["pretrained_cfg is a int, not a dict"],
    }
    for model_id, warnings in expected.items():
        row = models[model_id]
        assert (row["status"], row["n_filters"]) == ("ok", TINY_FILTERS), row
        assert_plain_line(row["warnings"])
        for warning in warnings:
            assert warning in row["warnings"], (model_id, row["warnings"])
    assert models["numbers"]["architecture"] is None
    assert models["numbers"]["accuracy_key"] == "numbers"  # no usable key: the model id
    assert models["stringcfg"]["accuracy_key"] == "convnext_atto"
    assert models["escapes"]["architecture"] == "convnext"  # stored (and printed) plain


def _torch_zip(path: Path, state: dict, recompress: set[str] = frozenset(),
               replace: dict[str, bytes] | None = None) -> None:
    """A torch zip file, with some entries deflate-compressed or replaced (as a hostile writer
    could make it; torch itself stores every entry uncompressed)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = (replace or {}).get(info.filename.split("/", 1)[1], src.read(info))
            compress = any(info.filename.endswith(s) for s in recompress)
            dst.writestr(info.filename, data,
                         compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)


# What a bomb may cost a worker beyond a good model's peak (allocator and import noise between
# workers). Each bomb below would take far more than its bound if it were loaded.
MEMORY_NOISE = 64 << 20


def test_tiny_files_cannot_claim_huge_memory(tmp_path):
    """Point 3 (and issue 22): stride-0 and overlapping views, a kernel count over the cap, a
    pickle and a storage that inflate, a legacy file over the cap, a safetensors header of a
    million tensors, a pickle of millions of one-byte containers, a huge shard index: each fails
    with its reason (naming its cap) before it is allocated, in one command beside good models,
    and each one's peak memory (VmHWM, reported by the task) stays within the good models' peak
    plus what its cap lets it cost (README, "Safety") plus MEMORY_NOISE."""
    bad = tmp_path / "bad"
    bad.mkdir()
    # 999,999 7x7 kernels, all one 49-float storage: 196 MB as float32 if read
    torch.save({"blocks.0.conv_dw.weight": torch.zeros(1, 1, 7, 7).expand(999_999, 1, 7, 7)},
               bad / "stride0.pth")
    # the file: 8,388,608 kernels declared in 1.6 KB
    torch.save({"blocks.0.conv_dw.weight": torch.zeros(1, 1, 3, 3).expand(8_388_608, 1, 3, 3)},
               bad / "overcap.pth")
    # overlapping views: 999,999 7x7 kernels sharing their elements in a 4 MB storage (196 MB read)
    overlap = torch.zeros(999_999 + 48).as_strided((999_999, 1, 7, 7), (1, 1, 7, 1))
    torch.save({"blocks.0.conv_dw.weight": overlap}, bad / "overlap.pth")
    # a pickle that inflates to 100 MB (a bytes object) from a ~100 KB file
    bomb = pickle.dumps({"blocks.0.conv_dw.weight": b"\0" * (100 << 20)}, protocol=4)
    _torch_zip(bad / "picklebomb.pth", {"x": torch.zeros(1)}, recompress={"data.pkl"},
               replace={"data.pkl": bomb})
    # a deflated 128 MB storage: over --max-torch-mb 64
    _torch_zip(bad / "storagebomb.pth", {"blocks.0.conv_dw.weight": torch.zeros(
        (128 << 20) // 36, 1, 3, 3)}, recompress={"data/0"})
    # a legacy (non-zip) torch file of 180 MB, over --max-torch-mb 64
    torch.save({"blocks.0.conv_dw.weight": torch.zeros(5_000_000, 1, 3, 3)},
               bad / "legacy.pth", _use_new_zipfile_serialization=False)
    # issue 22: a 107 MB safetensors file of 1,000,000 tiny depthwise tensors (3.4 GB to open)
    many_tiny_tensors(bad / "headerbomb.safetensors", 1_000_000)
    # issue 22: an 8 MB pickle of 8M one-byte empty dicts (~630 MB unpickled)
    _torch_zip(bad / "opsbomb.pth", {"x": torch.zeros(1)},
               replace={"data.pkl": b"\x80\x02](" + b"}" * (8 << 20) + b"e."})
    # issue 22: a 100 MB shard index (~0.5 GB parsed)
    indexbomb = bad / "indexbomb"
    indexbomb.mkdir()
    save_file(tiny_state_dict(), str(indexbomb / "shard.safetensors"))
    with open(indexbomb / "model.safetensors.index.json", "w") as handle:
        handle.write('{"weight_map": {')
        handle.write(",".join(f'"t{i}": "shard.safetensors"' for i in range(3_500_000)))
        handle.write("}}")
    # a compressed storage under the cap is read right (torch would map the compressed bytes)
    values = torch.arange(8 * 9, dtype=torch.float32).reshape(8, 1, 3, 3)
    _torch_zip(tmp_path / "deflated.pth", {"blocks.0.conv_dw.weight": values},
               recompress={"data/0"})
    out = tmp_path / "out"
    args = ["scan", "--out", str(out), "--max-torch-mb", "64",
            "--checkpoint", str(good_folder(tmp_path)),
            "--checkpoint", str(tmp_path / "deflated.pth")]
    for path in sorted(bad.iterdir()):
        args += ["--checkpoint", str(path)]
    result = dwscan(*args)
    assert result.returncode == 1, result.stderr[-3000:]
    assert_good(out)
    models = models_of(out)
    deflated = read_table(OutputLayout(out).kernels_path("deflated"))
    np.testing.assert_array_equal(np.array(deflated.column("weights").to_pylist()),
                                  values.reshape(8, 9).numpy())
    torch_cap = 64 << 20  # --max-torch-mb 64
    # model id -> (reason, what its cap lets it cost: 0 when refused from declared sizes)
    expected = {
        "stride0": ("declares shape (999999, 1, 7, 7) (195999804 bytes) over 196 bytes", 0),
        "overcap": ("8388608 depthwise kernels, over the cap of 1000000 per model", 0),
        "overlap": ("over 4000188 bytes of storage with strides (1, 1, 7, 1): refused", 0),
        "picklebomb": (f"its pickle inflates to {len(bomb)} bytes, over the cap of 67108864",
                       torch_cap),
        "storagebomb": ("over the cap of 67108864 (--max-torch-mb)", torch_cap),
        "legacy": ("is a legacy (non-zip) torch file of", torch_cap),
        "headerbomb": ("bytes of safetensors header, over the cap of 16777216 per model "
                       "(ReadLimits.max_header_bytes)", 0),
        "opsbomb": ("its pickles hold more opcodes than the cap of 2000000 per model "
                    "(ReadLimits.max_pickle_ops)", 0),
        "indexbomb": ("over the cap of 33554432 bytes (ReadLimits.max_index_bytes)", 0),
    }
    good_peak = max(models[m]["peak_memory_bytes"] for m in ("good", "deflated"))
    for model_id, (reason, allowance) in expected.items():
        row = models[model_id]
        assert row["status"] == "failed" and reason in row["error"], (model_id, row["error"])
        assert_plain_line(row["error"])
        # measured on the worker: a Ray worker with torch and pyarrow loaded is ~0.4 GB here;
        # the stride-0 file alone took 5.8 GB before the caps, the header bomb 3.4 GB
        bound = good_peak + allowance + MEMORY_NOISE
        assert row["peak_memory_bytes"] <= bound, (model_id, row["peak_memory_bytes"], bound)


def test_model_ids_that_share_or_cannot_name_a_file_are_refused_before_any_work(tmp_path):
    """Point 4 (and 7, ids): two ids, one file; an id of OUT clashing with a new one; '..' and a
    300-character id. Refused with every offender named, nothing scanned or changed."""
    good = good_folder(tmp_path)
    other = good_folder(tmp_path, "other")
    out = tmp_path / "out"
    clash = dwscan("scan", "--out", str(out), "--checkpoint", str(good), "--model-id", "org/name",
                   "--checkpoint", str(other), "--model-id", "org--name")
    assert clash.returncode == 2, clash.stderr[-3000:]
    assert_plain_line(clash.stderr.strip())
    assert "'org/name' and 'org--name' map to the same file org--name.parquet" in clash.stderr
    assert not (out / "models.parquet").exists()

    cut_short = out / "kernels" / ".org--name.parquet.1a2b3c4d.tmp"  # a killed write's temp
    cut_short.parent.mkdir(parents=True)
    cut_short.write_bytes(b"PAR1")
    first = dwscan("scan", "--out", str(out), "--checkpoint", str(good), "--model-id", "org/name")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not cut_short.exists()  # `dwscan scan` drops it, as `dwscan run` does
    kept = (out / "kernels" / "org--name.parquet").read_bytes()
    long_id = "x" * 300
    later = dwscan("scan", "--out", str(out), "--checkpoint", str(good), "--model-id", "fine",
                   "--checkpoint", str(other), "--model-id", "Org--Name")
    assert later.returncode == 2 and "'org/name' and 'Org--Name' map to the same file" in \
        later.stderr, later.stderr[-3000:]
    bad_names = dwscan("scan", "--out", str(out), "--checkpoint", str(good), "--model-id", "ok2",
                       "--checkpoint", str(other), "--model-id", "..",
                       "--checkpoint", str(other), "--model-id", long_id)
    assert bad_names.returncode == 2, bad_names.stderr[-3000:]
    assert_plain_line(bad_names.stderr.strip())
    assert "model id '..' cannot name a file" in bad_names.stderr
    assert "(300 characters)' cannot name a file (longer than 200 bytes)" in bad_names.stderr
    assert set(models_of(out)) == {"org/name"}
    assert (out / "kernels" / "org--name.parquet").read_bytes() == kept


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs: a disk that really fills (ENOSPC). Needs the right to mount."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_a_rescan_loses_nothing_stored(tmp_path, small_disk):
    """Point 5: the re-scan of a model whose new kernels do not fit fails as a whole, says so,
    and leaves OUT byte for byte as it was; the good model's kernels stay queryable."""
    out = small_disk / "out"
    grows = tmp_path / "grows.safetensors"
    save_file(tiny_state_dict(), str(grows))
    good = good_folder(tmp_path)
    first = dwscan("scan", "--out", str(out), "--checkpoint", str(good), "--checkpoint", str(grows))
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()
              and p.name != ".dwscan.lock"}
    # the new version of `grows` (about 12 MB of kernels) cannot fit in what is left
    rng = np.random.default_rng(0)
    save_file({"blocks.0.conv_dw.weight": rng.normal(size=(300_000, 1, 3, 3)).astype(np.float32)},
              str(grows))
    stat = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - (4 << 20)))
    second = dwscan("scan", "--out", str(out), "--checkpoint", str(good),
                    "--checkpoint", str(grows))
    assert second.returncode == 2, (second.stdout[-2000:], second.stderr[-3000:])
    error = second.stderr.strip().splitlines()[-1]
    assert_plain_line(error)
    assert "No space left on device" in error and "nothing of this scan was committed" in error
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()
             and p.name != ".dwscan.lock"}
    assert after == before  # no pending file left behind, nothing replaced or removed
    assert_good(out)
    query = dwscan("query", "--out", str(out), "--format", "csv",
                   "SELECT model_id, count(*) AS n FROM kernels GROUP BY model_id ORDER BY 1")
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines()[1:] == [f'"good",{TINY_FILTERS}', f'"grows",{TINY_FILTERS}']


def test_a_model_that_never_finishes_reading_is_cancelled(tmp_path):
    """Point 6: a FIFO that nobody writes blocks its reader forever; --model-timeout cancels
    that model alone."""
    stuck = tmp_path / "stuck.safetensors"
    os.mkfifo(stuck)
    out = tmp_path / "out"
    result = dwscan("scan", "--out", str(out), "--model-timeout", "20",
                    "--checkpoint", str(good_folder(tmp_path)), "--checkpoint", str(stuck),
                    timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert_good(out)
    row = models_of(out)["stuck"]
    assert (row["status"], row["error"]) == ("failed", "timed out after 20 s")
    assert "FAILED stuck: timed out after 20 s" in result.stderr


def test_a_read_only_out_is_one_line_and_no_traceback(tmp_path):
    """Point 7: --out on a read-only filesystem (a tmpfs mounted read-only; without the right to
    mount, a folder without write permission, which only stops a non-root user). Where neither
    can be made, the test says so in the summary instead of passing."""
    good = good_folder(tmp_path)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                              str(read_only)], capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("cannot make a read-only folder: root without the right to mount")
        read_only.chmod(0o555)
    try:
        result = dwscan("run", "--out", str(read_only / "out"), "--checkpoint", str(good))
        assert result.returncode == 2, result.stderr[-3000:]
        assert "cannot write to --out" in result.stderr and "not writable" in result.stderr
        assert_plain_line(result.stderr.strip())
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(read_only)], check=False)


def test_unusable_outputs_and_queries_give_one_line_and_no_traceback(tmp_path):
    """Point 7: --out a file; `dwscan query` with an empty query or over a corrupt table (the
    readable tables stay queryable beside it)."""
    good = good_folder(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out, message in [(a_file, "is a file, not a folder"),
                         (a_file / "sub", "its parent")]:
        result = dwscan("scan", "--out", str(out), "--checkpoint", str(good))
        assert result.returncode == 2 and message in result.stderr, result.stderr[-3000:]
        assert_plain_line(result.stderr.strip())

    out = tmp_path / "out"
    other = good_folder(tmp_path, "other")
    scanned = dwscan("scan", "--out", str(out), "--checkpoint", str(good),
                     "--checkpoint", str(other))
    assert scanned.returncode == 0, scanned.stderr[-3000:]
    for sql in ("", "  ;  "):
        empty = dwscan("query", "--out", str(out), sql)
        assert empty.returncode == 2 and "empty query" in empty.stderr, empty.stderr
        assert_plain_line(empty.stderr.strip())
    OutputLayout(out).kernels_path("other").write_bytes(b"PAR1 this is not parquet PAR1")
    still = dwscan("query", "--out", str(out), "--format", "csv",
                   "SELECT model_id, n_filters FROM models ORDER BY 1")
    assert still.returncode == 0, still.stderr
    assert still.stdout.splitlines()[1:] == [f'"good",{TINY_FILTERS}', f'"other",{TINY_FILTERS}']
    corrupt = dwscan("query", "--out", str(out), "SELECT count(*) FROM kernels")
    assert corrupt.returncode == 2, corrupt.stderr
    assert_plain_line(corrupt.stderr.strip())
    assert "table kernels cannot be read" in corrupt.stderr
    assert pq.read_table(OutputLayout(out).kernels_path("good")).num_rows == TINY_FILTERS
