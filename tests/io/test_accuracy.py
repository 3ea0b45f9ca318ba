"""Reading timm's tables from a path or a URL (cached), and what a model's name tells."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from dwscan.io import accuracy
from dwscan.io.accuracy import (
    AccuracyTables,
    SourceError,
    family_of,
    pretrain_from_tag,
    pretrain_of,
    read_accuracy_tables,
    read_source_text,
)

RESULTS = ("model,img_size,top1,top1_err,top5,top5_err,param_count,crop_pct,interpolation\n"
           "convnext_tiny.fb_in22k_ft_in1k,288,84.2,0,97.0,0,28.59,1.0,bicubic\n")


class _Files(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        _Files.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (base URL, stop)."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "results-imagenet.csv").write_text(RESULTS)
    handler = lambda *a, **k: _Files(*a, directory=str(www), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Files.requests = []
    stopped = []

    def stop():
        if not stopped:
            server.shutdown()
            server.server_close()
            stopped.append(True)

    yield f"http://127.0.0.1:{server.server_address[1]}", stop
    stop()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/results-imagenet.csv"


def test_url_is_fetched_once_then_read_from_the_cache(file_server, tmp_path, monkeypatch):
    base, stop = file_server
    monkeypatch.setenv("DWSCAN_CACHE", str(tmp_path / "cache"))
    url = f"{base}/results-imagenet.csv"
    assert read_source_text(url) == RESULTS
    assert _Files.requests == ["/results-imagenet.csv"]
    stop()  # offline from here on: the cache answers
    tables = read_accuracy_tables(url, accuracy.DEMO_PRETRAIN_CSV)
    assert tables.results["convnext_tiny.fb_in22k_ft_in1k"][0]["top1"] == 84.2
    assert len(_Files.requests) == 1


def test_unreachable_url_says_how_to_pass_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("DWSCAN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SourceError, match=r"--accuracy-csv PATH"):
        read_accuracy_tables(_closed_port_url(), accuracy.DEMO_PRETRAIN_CSV)
    with pytest.raises(SourceError, match=r"cannot read .*missing.csv"):
        read_accuracy_tables(tmp_path / "missing.csv", accuracy.DEMO_PRETRAIN_CSV)


def test_default_url_offline_falls_back_to_the_packaged_excerpt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DWSCAN_CACHE", str(tmp_path / "cache"))
    dead = _closed_port_url()
    monkeypatch.setitem(accuracy._PACKAGED, dead, accuracy.DEMO_ACCURACY_CSV)
    tables = read_accuracy_tables(dead, accuracy.DEMO_PRETRAIN_CSV)
    assert tables.results["tf_efficientnet_lite0.in1k"][0]["top1"] == 74.846
    assert tables.sources[0] == str(accuracy.DEMO_ACCURACY_CSV)
    assert "packaged excerpt" in caplog.text and "--accuracy-csv PATH" in caplog.text


@pytest.mark.parametrize("architecture, family", [
    ("convnext_tiny", "convnext"), ("convnextv2_atto", "convnextv2"),
    ("tf_efficientnet_lite0", "efficientnet"), ("efficientnet_b0", "efficientnet"),
    ("mobilenetv3_small_050", "mobilenetv3"), ("resnet18", "resnet"), ("regnety_040", "regnety"),
    (None, None)])
def test_family_of(architecture, family):
    assert family_of(architecture) == family


@pytest.mark.parametrize("tag, data", [
    ("fb_in22k_ft_in1k", "in22k"), ("in21k_ft_in1k", "in22k"), ("in12k_ft_in1k", "in12k"),
    ("ra_in1k", "in1k"), ("fb_swsl_ig1b_ft_in1k", "ig1b"), ("mim_m38m_ft_in22k_in1k", "m38m"),
    ("fb_ssl_yfcc100m_ft_in1k", "yfcc100m"), ("ra2", None), (None, None)])
def test_pretrain_from_tag(tag, data):
    assert pretrain_from_tag(tag) == data


def test_pretrain_prefers_an_exact_metadata_row_then_the_tag_then_the_architecture():
    tables = AccuracyTables(results={}, pretrain={"ssl_resnet18": "yfc-semisl",
                                                  "vit_x.augreg": "in21k", "vit_x": "in1k"})
    assert pretrain_of("ssl_resnet18", tables) == ("yfc-semisl", "metadata")
    assert pretrain_of("vit_x.augreg", tables) == ("in22k", "metadata")  # in21k is in22k
    assert pretrain_of("vit_x.augreg_in12k", tables) == ("in12k", "tag")
    assert pretrain_of("vit_x.other", tables) == ("in1k", "metadata")
    assert pretrain_of("unknown_net.x", tables) == (None, None)


def test_demo_excerpt_holds_timms_published_figures():
    tables = read_accuracy_tables(accuracy.DEMO_ACCURACY_CSV, accuracy.DEMO_PRETRAIN_CSV)
    assert {key: rows[0]["top1"] for key, rows in tables.results.items()} == {
        "tf_efficientnet_lite0.in1k": 74.846, "tf_efficientnet_lite1.in1k": 76.674,
        "tf_efficientnet_lite2.in1k": 77.470}
    assert tables.pretrain == {f"tf_efficientnet_lite{i}": "in1k" for i in range(3)}


def test_two_image_sizes_kept_apart_and_quoted_counts_parsed(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("model,img_size,top1,top1_err,top5,top5_err,param_count,crop_pct,interpolation\n"
                    "big.in1k,224,86.0,14.0,97.0,3.0,\"1,014.45\",1.0,bicubic\n"
                    'big.in1k,448,88.1,11.9,98.0,2.0,"1,014.45",1.0,bicubic\n'
                    "small.in1k,224,n/a,,,,1.0,0.9,bicubic\n")
    tables = read_accuracy_tables(path, accuracy.DEMO_PRETRAIN_CSV)
    assert [(r["img_size"], r["top1"], r["param_count_m"]) for r in tables.results["big.in1k"]] == [
        (448, 88.1, 1014.45), (224, 86.0, 1014.45)]  # best top-1 first
    assert tables.results["small.in1k"][0]["top1"] is None
    bad = tmp_path / "bad.csv"
    bad.write_text("name,acc\nx,1\n")
    with pytest.raises(SourceError, match="not a timm table"):
        read_accuracy_tables(bad, accuracy.DEMO_PRETRAIN_CSV)
