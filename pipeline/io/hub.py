"""The one door to the Hugging Face Hub: listing, commit pinning, range reads, retries.

Only this module imports huggingface_hub, so HF_ENDPOINT, HF_TOKEN and the cache settings
(HF_HOME, HF_HUB_CACHE) apply exactly as huggingface_hub applies them. Every file is read at the
commit sha that `model_info` reports, so a scan is reproducible. Safetensors are read header
first, then only the byte ranges of the depthwise tensors; `pytorch_model.bin` is downloaded only
where a repo has no safetensors, into a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.utils import HfHubHTTPError, build_hf_headers, get_session

from dwscan.io.checkpoints import (
    DEFAULT_LIMITS,
    FOLDER_WEIGHT_FILES,
    CheckpointError,
    ReadLimits,
    RemoteSafetensorsCheckpoint,
    TorchCheckpoint,
    choose_weight_file,
    shard_names,
)
from dwscan.io.zoo import read_config

RETRY_STATUSES = {429, 500, 502, 503, 504}
T = TypeVar("T")


@dataclass
class HubOptions:
    timeout: float = 30.0  # seconds a request may wait for bytes before it counts as stalled
    max_attempts: int = 6  # tries per request, the first included
    backoff: float = 0.5  # first wait between tries, doubled each time, with +-50% jitter
    max_backoff: float = 30.0  # longest wait between tries (a Retry-After header wins)


class HubError(CheckpointError):
    """A hub request that failed for good; the message is the one-line reason recorded."""


@dataclass
class HubCheckpoint:
    repo_id: str
    revision: str  # the commit sha every file was read at
    reader: Any  # RemoteSafetensorsCheckpoint or TorchCheckpoint
    config: dict = field(default_factory=dict)  # config.json, {} when absent or unusable
    config_warnings: list[str] = field(default_factory=list)  # why config.json was unusable
    bytes_fetched: int = 0  # payload bytes received from the hub for this model


def list_hub_models(author: str | None = None, filter: str | None = None,
                    search: str | None = None, limit: int | None = None,
                    options: HubOptions | None = None) -> list[str]:
    """Repo ids of the hub models that match, in the hub's order."""
    options = options or HubOptions()
    return with_retries(lambda: [m.id for m in HfApi().list_models(
        author=author, filter=filter, search=search, limit=limit)], options, "list models")


def list_hub_revisions(author: str | None = None, filter: str | None = None,
                       search: str | None = None, limit: int | None = None,
                       options: HubOptions | None = None) -> dict[str, str | None]:
    """Repo id -> current commit sha of the matching models, from one listing call: what a
    re-scan compares with models.parquet without touching any repo."""
    options = options or HubOptions()
    return with_retries(lambda: {m.id: m.sha for m in HfApi().list_models(
        author=author, filter=filter, search=search, limit=limit, expand=["sha"])},
        options, "list models")


def hub_revision(repo_id: str, options: HubOptions | None = None) -> str | None:
    """The current commit sha of one repo (a metadata call, no file is read)."""
    options = options or HubOptions()
    return with_retries(lambda: HfApi().model_info(repo_id, timeout=options.timeout).sha,
                        options, f"model info of {repo_id}")


@contextmanager
def open_hub_checkpoint(repo_id: str, revision: str | None = None,
                        options: HubOptions | None = None,
                        limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[HubCheckpoint]:
    """The repo's weights at one commit, read with as few bytes as the format allows. Its
    config.json is returned as parsed; `dwscan.io.zoo.timm_metadata` type-checks the fields."""
    options = options or HubOptions()
    info = with_retries(lambda: HfApi().model_info(repo_id, revision=revision,
                                                   timeout=options.timeout),
                        options, f"model info of {repo_id}")
    sha = info.sha or revision
    files = {s.rfilename for s in (info.siblings or [])}
    opened = HubCheckpoint(repo_id=repo_id, revision=sha, reader=None)
    scratch = Path(tempfile.mkdtemp(prefix="dwscan-hub-"))
    try:
        if "config.json" in files:
            config_path = _download(repo_id, "config.json", sha, None, options, opened)
            opened.config, opened.config_warnings = read_config(config_path)
        fetch = _range_fetcher(repo_id, sha, options, opened)
        name = choose_weight_file(files)
        if name is None:
            raise HubError(f"no weights file ({', '.join(FOLDER_WEIGHT_FILES)})")
        if name.endswith(".safetensors.index.json"):
            index = _read_json(_download(repo_id, name, sha, None, options, opened))
            opened.reader = RemoteSafetensorsCheckpoint(fetch, shard_names(index, name))
        elif name.endswith(".safetensors"):
            opened.reader = RemoteSafetensorsCheckpoint(fetch, [name])
        else:
            opened.reader = TorchCheckpoint(
                _download(repo_id, name, sha, scratch, options, opened), limits)
        yield opened
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def with_retries(call: Callable[[], T], options: HubOptions, what: str) -> T:
    """Run `call`, retrying 5xx, 429 (honouring Retry-After), timeouts and broken connections
    with exponential backoff and jitter; 404 ends as 'not found', 401/403 as 'gated or private'."""
    last = ""
    for attempt in range(options.max_attempts):
        wait = None
        try:
            return call()
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            _raise_final(status, what)
            last = f"HTTP {status}"
            wait = _retry_after(exc.response)
        except _HttpStatus as exc:
            _raise_final(exc.status, what)
            last, wait = f"HTTP {exc.status}", exc.retry_after
        except (httpx2.TransportError, _ShortRead) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt + 1 < options.max_attempts:
            time.sleep(wait if wait is not None else
                       min(options.max_backoff, options.backoff * 2**attempt)
                       * random.uniform(0.5, 1.5))
    raise HubError(f"{what}: gave up after {options.max_attempts} attempts ({last})")


class _HttpStatus(Exception):
    def __init__(self, status: int, retry_after: float | None):
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after = status, retry_after


class _ShortRead(Exception):
    """The body ended before the bytes the range asked for."""


def _raise_final(status: int | None, what: str) -> None:
    if status == 404:
        raise HubError(f"not found ({what})")
    if status in (401, 403):
        raise HubError(f"gated or private ({what})")
    if status is not None and status not in RETRY_STATUSES:
        raise HubError(f"{what}: HTTP {status}")


def _retry_after(response) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _range_fetcher(repo_id: str, sha: str, options: HubOptions,
                   opened: HubCheckpoint) -> Callable[[str, int, int], bytes]:
    def fetch(file: str, start: int, stop: int) -> bytes:
        url = hf_hub_url(repo_id, file, revision=sha)
        headers = {**build_hf_headers(), "Range": f"bytes={start}-{stop - 1}"}

        def once() -> bytes:
            response = get_session().get(url, headers=headers, timeout=options.timeout,
                                         follow_redirects=True)
            if response.status_code not in (200, 206):
                raise _HttpStatus(response.status_code, _retry_after(response))
            body = response.content
            opened.bytes_fetched += len(body)
            if response.status_code == 200:  # the server ignored the range: cut it ourselves
                body = body[start:stop]
            if len(body) != stop - start:
                raise _ShortRead(f"{file} bytes {start}-{stop}: got {len(body)}")
            return body

        return with_retries(once, options, f"{file} of {repo_id}")

    return fetch


def _download(repo_id: str, filename: str, sha: str, folder: Path | None, options: HubOptions,
              opened: HubCheckpoint) -> Path:
    """A whole file: into the hub cache (folder None) or into `folder`, which the caller deletes."""
    cached = folder is None and isinstance(
        try_to_load_from_cache(repo_id, filename, revision=sha), str)
    path = Path(with_retries(lambda: hf_hub_download(
        repo_id, filename, revision=sha, local_dir=folder, etag_timeout=options.timeout),
        options, f"{filename} of {repo_id}"))
    if not cached:
        opened.bytes_fetched += path.stat().st_size
    return path


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        raise HubError(f"bad JSON in {Path(path).name}: {' '.join(str(exc).split())[:200]}") \
            from exc
    return value if isinstance(value, dict) else {}
