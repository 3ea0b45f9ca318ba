"""What is known of each model beyond its weights: ImageNet accuracy, pre-training data, family.

Sources are timm's own tables (huggingface/pytorch-image-models): `results/results-imagenet.csv`
(top-1, top-5, parameters, one row per model and evaluation image size) and
`results/model_metadata-in1k.csv` (pre-training data). Each is read from a path or a URL; a URL
is cached under `DWSCAN_CACHE` (default `~/.cache/dwscan`) after its first read.

When the default URL cannot be read (no network) the run goes on with the excerpts packaged in
`pipeline/data/` (the demo zoo's rows, timm commit aa4b5850) and says so; a source the user named
that cannot be read is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from dwscan import schemas
from dwscan.io.storage import Location, as_location, write_bytes_atomic

_TIMM_RESULTS = "https://raw.githubusercontent.com/huggingface/pytorch-image-models/main/results"
TIMM_RESULTS_URL = f"{_TIMM_RESULTS}/results-imagenet.csv"
TIMM_PRETRAIN_URL = f"{_TIMM_RESULTS}/model_metadata-in1k.csv"
_DATA = Path(__file__).parents[1] / "data"
DEMO_ACCURACY_CSV = _DATA / "timm-results-imagenet-demo.csv"
DEMO_PRETRAIN_CSV = _DATA / "timm-model_metadata-in1k-demo.csv"
logger = logging.getLogger(__name__)
_PACKAGED = {TIMM_RESULTS_URL: DEMO_ACCURACY_CSV, TIMM_PRETRAIN_URL: DEMO_PRETRAIN_CSV}


class SourceError(RuntimeError):
    """A table the user asked for cannot be read."""


def cache_dir() -> Path:
    return Path(os.environ.get("DWSCAN_CACHE") or Path.home() / ".cache" / "dwscan")


def is_url(source: str | os.PathLike) -> bool:
    return str(source).startswith(("http://", "https://"))


def read_source_text(source: str | os.PathLike, option: str = "--accuracy-csv",
                     timeout: float = 30.0) -> str:
    """The text of a local file, or of a URL (from the cache once it has been read)."""
    if not is_url(source):
        try:
            return Path(source).read_text()
        except OSError as error:
            raise SourceError(f"cannot read {source}: {error}") from error
    url = str(source)
    cached = cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{url.rsplit('/', 1)[-1]}"
    if cached.exists():
        return cached.read_text()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except (OSError, ValueError) as error:
        raise SourceError(
            f"cannot fetch {url} ({error}). Offline? Download the file on a machine with network "
            f"and pass the local copy: {option} PATH") from error
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, cached)
    return text


def remember_sources(path: Location, sources: tuple[str, str]) -> None:
    """Record the two tables a report read (a local one by its absolute path; the packaged
    excerpt as the URL it stood in for), so that the next `dwscan report` or re-scan of the
    folder joins them again without the flags."""
    fallback_of = {str(packaged): url for url, packaged in _PACKAGED.items()}
    kept = [fallback_of.get(s) or (s if is_url(s) else str(Path(s).resolve())) for s in sources]
    write_bytes_atomic(path, json.dumps({"accuracy_csv": kept[0], "pretrain_csv": kept[1]},
                                        indent=2).encode())


def remembered_sources(path: Location, accuracy_csv: str | None = None,
                       pretrain_csv: str | None = None) -> tuple[str, str]:
    """The accuracy and pre-training tables for a folder's next report: a flag given wins, then
    what its last report read (a URL, or a local file still there), then timm's URLs. The
    record is read only when a flag was left out (`dwscan run` gives both: on an s3:// OUT the
    read would be a request at every start)."""
    if accuracy_csv is not None and pretrain_csv is not None:
        return str(accuracy_csv), str(pretrain_csv)
    try:
        recorded = json.loads(as_location(path).read_text())
    except (FileNotFoundError, ValueError):
        recorded = {}
    if not isinstance(recorded, dict):  # a file broken or written by hand: nothing remembered
        recorded = {}

    def pick(given: str | None, key: str, default: str, option: str) -> str:
        if given is not None:
            return str(given)
        source = recorded.get(key)
        source = source if isinstance(source, str) else None
        if source and (is_url(source) or Path(source).exists()):
            return source
        if source:
            logger.warning("WARNING: %s, which the last report of this folder read (%s), is "
                           "gone; using %s", source, option, default)
        return default

    return (pick(accuracy_csv, "accuracy_csv", TIMM_RESULTS_URL, "--accuracy-csv"),
            pick(pretrain_csv, "pretrain_csv", TIMM_PRETRAIN_URL, "--pretrain-csv"))


def _read_with_fallback(source: str | os.PathLike, option: str) -> tuple[str, str]:
    """(text, where it came from); the default URL falls back to its packaged excerpt."""
    try:
        return read_source_text(source, option), str(source)
    except SourceError as error:
        packaged = _PACKAGED.get(str(source))
        if packaged is None:
            raise
        logger.warning("WARNING: %s; using the packaged excerpt %s (the demo zoo's rows only)",
                       error, packaged.name)
        return packaged.read_text(), str(packaged)


def _csv_rows(text: str, source: str, required: set[str]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    missing = required - set(reader.fieldnames or [])
    if missing:
        raise SourceError(f"{source}: not a timm table, missing columns {sorted(missing)}")
    return list(reader)


def _number(value: str | None) -> float | None:
    """timm writes large counts with a thousands separator ("1,014.45")."""
    try:
        return float(str(value).replace(",", ""))
    except ValueError:
        return None


@dataclass
class AccuracyTables:
    """timm's results rows by key (every image size, best top-1 first) and pre-training by name."""

    results: dict[str, list[dict]]
    pretrain: dict[str, str]
    sources: tuple[str, str] = ("", "")


def read_accuracy_tables(results: str | os.PathLike = TIMM_RESULTS_URL,
                         pretrain: str | os.PathLike = TIMM_PRETRAIN_URL) -> AccuracyTables:
    results_text, results_from = _read_with_fallback(results, "--accuracy-csv")
    pretrain_text, pretrain_from = _read_with_fallback(pretrain, "--pretrain-csv")
    by_key: dict[str, list[dict]] = {}
    for row in _csv_rows(results_text, results_from, {"model", "top1"}):
        by_key.setdefault(row["model"], []).append({
            "img_size": int(row["img_size"]) if row.get("img_size") else None,
            "top1": _number(row["top1"]), "top5": _number(row.get("top5")),
            "param_count_m": _number(row.get("param_count")),
            "crop_pct": _number(row.get("crop_pct")), "interpolation": row.get("interpolation")})
    for rows in by_key.values():
        rows.sort(key=lambda r: -(r["top1"] if r["top1"] is not None else -1))
    pretrain_of = {row["model"]: row["pretrain"]
                   for row in _csv_rows(pretrain_text, pretrain_from, {"model", "pretrain"})}
    return AccuracyTables(by_key, pretrain_of, (results_from, pretrain_from))


# Data sets named in timm's pretrained tags, e.g. `fb_in22k_ft_in1k`, `ns_jft_in1k`.
_DATA_TOKEN = re.compile(r"^(in\d+k|jft\d*m?|ig\d+b|yfcc\d+m|laion\d+[bm]|m\d+m|openai|cc12m|"
                         r"dfn\d+b|merged\d+m|lvd\d+m|webli)$")
_ARCH_PREFIXES = ("tf_", "gluon_", "legacy_", "ssl_", "swsl_", "ig_", "adv_", "ens_adv_")


def family_of(architecture: str | None) -> str | None:
    """`tf_efficientnet_lite0` -> efficientnet, `resnet18` -> resnet, `convnextv2_atto` ->
    convnextv2: the first word of the name, less framework prefixes and a trailing size."""
    if not architecture:
        return None
    name = architecture.lower()
    for prefix in _ARCH_PREFIXES:
        name = name.removeprefix(prefix)
    word = re.split(r"[_.\-]", name)[0]
    if not re.search(r"v\d+$", word):
        word = re.sub(r"(?<=[a-z])\d+$", "", word)
    return word or None


def pretrain_from_tag(tag: str | None) -> str | None:
    """The first data set a timm tag names: `fb_in22k_ft_in1k` -> in22k, `ra_in1k` -> in1k."""
    for token in (tag or "").lower().split("_"):
        if _DATA_TOKEN.match(token):
            return _same_data(token)
    return None


def _same_data(name: str) -> str:
    """timm calls ImageNet-22k both in21k and in22k: one name, so groups compare."""
    return "in22k" if name == "in21k" else name


def pretrain_of(key: str | None, tables: AccuracyTables) -> tuple[str | None, str | None]:
    """(pre-training data, where it came from). The tag names the data of modern timm weights;
    model_metadata-in1k.csv covers the older names (e.g. `ssl_resnet18`) that carry no tag."""
    if not key:
        return None, None
    arch, _, tag = key.partition(".")
    if key in tables.pretrain:
        return _same_data(tables.pretrain[key]), "metadata"
    from_tag = pretrain_from_tag(tag)
    if from_tag:
        return from_tag, "tag"
    if arch in tables.pretrain:
        return _same_data(tables.pretrain[arch]), "metadata"
    return None, None


def model_metadata_table(models: pa.Table, tables: AccuracyTables) -> pa.Table:
    """MODEL_METADATA: one row per model of `models` (MODELS rows)."""
    rows = []
    for m in models.to_pylist():
        key = m["accuracy_key"]
        arch = m["architecture"] or (key.partition(".")[0] if key else None)
        pretrain, pretrain_source = pretrain_of(key, tables)
        results = tables.results.get(key or "", [])
        chosen = _result_at_input_size(results, m["input_size"])
        rows.append({"model_id": m["model_id"], "accuracy_key": key, "architecture": arch,
                     "family": family_of(arch), "pretrain": pretrain,
                     "pretrain_source": pretrain_source, "accuracy_rows": len(results),
                     **{c: chosen.get(c) for c in ("top1", "top5", "param_count_m", "img_size")}})
    return pa.Table.from_pylist(rows, schema=schemas.MODEL_METADATA)


def _result_at_input_size(results: list[dict], input_size: str | None) -> dict:
    """The results row at the model's own input size when timm lists it, else the best top-1."""
    size = int(input_size.rsplit("x", 1)[-1]) if input_size else None
    return next((r for r in results if r["img_size"] == size), results[0] if results else {})


def accuracy_rows_table(models: pa.Table, tables: AccuracyTables) -> pa.Table:
    """ACCURACY: every results row (each image size apart) of each scanned model."""
    rows = [{"model_id": m["model_id"], "accuracy_key": m["accuracy_key"], **r}
            for m in models.to_pylist() for r in tables.results.get(m["accuracy_key"] or "", [])]
    return pa.Table.from_pylist(rows, schema=schemas.ACCURACY)
