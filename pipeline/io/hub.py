"""The one door to the Hugging Face Hub: listing, commit pinning, range reads, retries.

Only this module imports huggingface_hub, so HF_ENDPOINT, HF_TOKEN and the cache settings
(HF_HOME, HF_HUB_CACHE) apply exactly as huggingface_hub applies them. Every file is read at the
commit sha that `model_info` reports, so a scan is reproducible. Safetensors are read header
first, then only the byte ranges of the depthwise tensors; `pytorch_model.bin` is downloaded only
where a repo has no safetensors, into a temporary folder that is deleted afterwards.

A scan is bound by round trips, not bytes: a model's model info, config.json and the head of its
model.safetensors (header length and, mostly, the header) go out at once, and its depthwise
ranges are coalesced into as few requests as the byte floor allows (checkpoints.COALESCE_SHARE):
four requests in two round trips for most models. Many models are read side by side in one
worker (stages.extract.extract_hub_models_to_parquet): each has a `Deadline` that every request,
retry wait and body chunk checks, and a `ByteBudget` bounds what they hold together.

Range reads trust nothing the server says beyond what they check: a body is streamed and read
only up to the range's end; a 206 must name exactly the range asked (Content-Range, length, no
Content-Encoding) or its bytes are never used; a server that ignores Range (answers 200 with the
whole file, as mirrors such as olah do) is read in one forward pass per file, each wanted range
taken as it goes by. A model read like that records `range_support` 'no'.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.utils import HfHubHTTPError, build_hf_headers, get_session

from dwscan.io.checkpoints import (
    DEFAULT_LIMITS,
    FOLDER_WEIGHT_FILES,
    CheckpointError,
    ReadLimits,
    SafetensorsReader,
    TorchCheckpoint,
    choose_weight_file,
    read_shard_index,
    shard_names,
)
from dwscan.io.zoo import MAX_CONFIG_BYTES, HubListingError, read_config
from dwscan.text import one_line

RETRY_STATUSES = {429, 500, 502, 503, 504}
# x-error-code values that mean the repo, revision or file does not exist (huggingface.co answers
# 401 RepoNotFound for a missing repo, so the status alone cannot tell it from a gated one)
NOT_FOUND_CODES = {"RepoNotFound", "EntryNotFound", "RevisionNotFound"}
STREAM_CHUNK = 1 << 20  # bytes taken from a response body at a time
MAX_OPEN_PASSES = 4  # whole-file answers kept open per model, for the next ranges of their files
WEIGHTS = "model.safetensors"  # the weights file read ahead, before the file list is known
CONFIG_PARSE_FACTOR = 4  # what parsing a config.json holds per byte of it (its budget share)
T = TypeVar("T")


@dataclass
class HubOptions:
    timeout: float = 30.0  # seconds a request may wait for bytes before it counts as stalled
    max_attempts: int = 6  # tries per request, the first included
    backoff: float = 0.5  # first wait between tries, doubled each time, with +-50% jitter
    max_backoff: float = 30.0  # longest wait between tries (a Retry-After header wins)
    max_range_bytes: int = 64 << 20  # one range request at most; a longer range takes several
    mismatch_attempts: int = 2  # tries of a range whose answer is not the range asked (a lying
    # server rarely stops lying: these are not worth max_attempts)
    head_bytes: int = 8 << 10  # the first read of a safetensors file, with the model info: its
    # header length and, for small headers, all of it (a longer one takes a second round trip);
    # bytes past the header serve the first tensors. timm headers are 10-60 KB: a longer first
    # read would cost small models more than the floor allows (resnet18: an 11 KB header alone)
    deadline: Deadline | None = None  # when this model's time is up (`--model-timeout`)


class Deadline:
    """When one model's time is up: every request, retry wait and body chunk checks it, so a
    model read in a thread beside others ends on time without killing its worker."""

    def __init__(self, seconds: float):
        self.seconds, self.at = seconds, time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        if self.remaining() <= 0:
            raise ModelTimeout(f"timed out after {self.seconds:g} s")


class HubError(CheckpointError):
    """A hub request that failed for good; the message is the one-line reason recorded."""


class ModelTimeout(HubError):
    """The model's `--model-timeout` ran out while it was being read."""


def _request_timeout(options: HubOptions) -> float:
    """Seconds the next request may wait for bytes: the stall timeout, or less near the deadline."""
    if options.deadline is None:
        return options.timeout
    options.deadline.check()
    return max(0.05, min(options.timeout, options.deadline.remaining()))


def _check_deadline(options: HubOptions) -> None:
    if options.deadline is not None:
        options.deadline.check()


class ByteBudget:
    """The bytes the models read side by side in one worker may hold at once: a model waits
    until its share fits. A model larger than the whole budget waits until it is alone. A
    thread holds at most one share at a time, so no two wait on each other."""

    def __init__(self, total: int):
        self.total, self.held = max(1, total), 0
        self._free = threading.Condition()

    @contextmanager
    def hold(self, n: int, deadline: Deadline | None = None) -> Iterator[None]:
        n = min(max(0, n), self.total)
        with self._free:
            while self.held + n > self.total:
                if deadline is not None:
                    deadline.check()
                self._free.wait(timeout=0.5)
            self.held += n
        try:
            yield
        finally:
            with self._free:
                self.held -= n
                self._free.notify_all()


@dataclass
class HubCheckpoint:
    repo_id: str
    revision: str  # the commit sha every file was read at
    reader: Any  # SafetensorsReader or TorchCheckpoint
    config: dict = field(default_factory=dict)  # config.json, {} when absent or unusable
    config_warnings: list[str] = field(default_factory=list)  # why config.json was unusable
    bytes_fetched: int = 0  # payload bytes received from the hub for this model
    range_support: str | None = None  # 'yes': every range read answered 206 with the range;
    # 'no': some answered with the whole file (read in one pass); None: no range read
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, n: int) -> None:
        """Add n received bytes (reads of one model run in several threads)."""
        with self._lock:
            self.bytes_fetched += n


def list_hub_models(author: str | None = None, filter: str | None = None,
                    search: str | None = None, limit: int | None = None,
                    options: HubOptions | None = None) -> list[str]:
    """Repo ids of the hub models that match, in the hub's order."""
    options = options or HubOptions()
    return _listing(lambda: [m.id for m in HfApi().list_models(
        author=author, filter=filter, search=search, limit=limit)], options)


def list_hub_revisions(author: str | None = None, filter: str | None = None,
                       search: str | None = None, limit: int | None = None,
                       options: HubOptions | None = None) -> dict[str, str | None]:
    """Repo id -> current commit sha of the matching models, from one listing call: what a
    re-scan compares with models.parquet without touching any repo."""
    options = options or HubOptions()
    return _listing(lambda: {m.id: m.sha for m in HfApi().list_models(
        author=author, filter=filter, search=search, limit=limit, expand=["sha"])}, options)


def _listing(call: Callable[[], T], options: HubOptions) -> T:
    """A listing call, or HubListingError in one line: mirrors often serve repos but no listing
    (olah answers an empty 200, others 404), and huggingface_hub then raises whatever its JSON
    parsing meets; none of that is worth a traceback, the user can name the repos instead."""
    try:
        return with_retries(call, options, "list models")
    except HubError as exc:
        reason = str(exc)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # empty or not a listing
        reason = f"its answer is not a model listing: {type(exc).__name__}: {exc}"
    raise HubListingError(
        f"the hub endpoint HF_ENDPOINT={constants.ENDPOINT} cannot list models "
        f"({one_line(reason, 200)}); name the repos with --model REPO_ID instead")


def hub_revision(repo_id: str, options: HubOptions | None = None) -> str | None:
    """The current commit sha of one repo (a metadata call, no file is read)."""
    options = options or HubOptions()
    return with_retries(lambda: HfApi().model_info(repo_id, timeout=_request_timeout(options)).sha,
                        options, f"model info of {repo_id}")


_AHEAD: ThreadPoolExecutor | None = None
_AHEAD_LOCK = threading.Lock()


def _ahead(call: Callable[[], T]) -> Future[T]:
    """Run `call` (one request, with its retries) in this process's pool of request threads.
    Such a call never waits on another future, so the pool cannot deadlock."""
    global _AHEAD
    with _AHEAD_LOCK:
        if _AHEAD is None:
            _AHEAD = ThreadPoolExecutor(max_workers=64, thread_name_prefix="dwscan-hub")
    return _AHEAD.submit(call)


@contextmanager
def open_hub_checkpoint(repo_id: str, revision: str | None = None,
                        options: HubOptions | None = None,
                        limits: ReadLimits = DEFAULT_LIMITS,
                        budget: ByteBudget | None = None) -> Iterator[HubCheckpoint]:
    """The repo's weights at one commit, read with as few bytes and round trips as the format
    allows. Its config.json is returned as parsed; `dwscan.io.zoo.timm_metadata` type-checks
    the fields.

    The model info, config.json and the head of model.safetensors are asked for at once (one
    round trip, not three after each other), at `revision` (or main). What came back is used
    only if the server says it is of the commit the model info names (X-Repo-Commit);
    otherwise it is read again at that commit. `budget` bounds what parsing headers and
    loading a torch file hold, with the other models this worker reads."""
    options = options or HubOptions()
    budget = budget or ByteBudget(1 << 62)
    asked = revision or "main"
    pinned = {"revision": asked}
    opened = HubCheckpoint(repo_id=repo_id, revision=revision, reader=None)
    scratch = scratch_folder()
    fetch = RangeReader(lambda file: hf_hub_url(repo_id, file, revision=pinned["revision"]),
                        options, opened, f" of {repo_id}")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        stack.callback(fetch.close)
        config_ahead = _ahead(lambda: _small_file(repo_id, "config.json", asked, options, opened))
        head_ahead = _ahead(lambda: fetch.head(WEIGHTS, options.head_bytes))
        try:
            info = with_retries(lambda: HfApi().model_info(repo_id, revision=revision,
                                                           timeout=_request_timeout(options)),
                                options, f"model info of {repo_id}")
        finally:
            wait_all([config_ahead, head_ahead])  # nothing may touch `opened` after we leave
        sha = info.sha or revision
        opened.revision = sha
        files = {s.rfilename for s in (info.siblings or [])}
        if "config.json" in files:
            body, commit = config_ahead.result()
            if not _of_commit(commit, asked, sha):
                body, commit = _small_file(repo_id, "config.json", sha, options, opened)
            with budget.hold(CONFIG_PARSE_FACTOR * len(body or b""), options.deadline):
                opened.config, opened.config_warnings = _parse_config(body, scratch)
        name = choose_weight_file(files)
        if name is None:
            raise HubError(f"no weights file ({', '.join(FOLDER_WEIGHT_FILES)})")
        heads = {}
        if name == WEIGHTS:
            head, commit = head_ahead.result()  # its failure is this model's
            if _of_commit(commit, asked, sha):
                heads[WEIGHTS] = head
            else:
                fetch.forget()
        if sha:
            pinned["revision"] = sha
        if name.endswith(".safetensors.index.json"):
            index = read_shard_index(_download(repo_id, name, sha, None, options, opened), limits)
            opened.reader = SafetensorsReader(fetch, shard_names(index, name), limits,
                                              heads, budget.hold)
        elif name.endswith(".safetensors"):
            opened.reader = SafetensorsReader(fetch, [name], limits, heads, budget.hold)
        else:  # held while the model is: what the file takes loaded is capped by max_torch_bytes
            stack.enter_context(budget.hold(limits.max_torch_bytes, options.deadline))
            opened.reader = TorchCheckpoint(
                _download(repo_id, name, sha, scratch, options, opened), limits)
        yield opened


SCRATCH_PREFIX = "dwscan-hub-"
_swept = False


def scratch_folder() -> Path:
    """A new folder for one model's downloads, named by this machine and process. The first
    call in a process first removes the folders of this machine's processes gone: a SIGKILLed
    Ray worker never ran its cleanup, and its folder can hold a half-downloaded torch file of up
    to --max-torch-mb."""
    global _swept
    if not _swept:
        _swept = True
        remove_orphaned_scratch(Path(tempfile.gettempdir()))
    return Path(tempfile.mkdtemp(prefix=f"{_scratch_owner(os.getpid())}-"))


def _scratch_owner(pid: int) -> str:
    """Prefix of a scratch folder: the process id and a tag of the host name (a /tmp shared by
    containers holds other hosts' pids, which this machine cannot check)."""
    host = zlib.crc32(socket.gethostname().encode()) & 0xFFFF
    return f"{SCRATCH_PREFIX}{pid}-{host:04x}"


def remove_orphaned_scratch(root: Path) -> list[Path]:
    """Remove the scratch folders in `root` of this machine's processes that no longer run;
    those of live processes, of other hosts and of other users stay."""
    removed = []
    for path in root.glob(f"{SCRATCH_PREFIX}*-*-*"):
        pid = path.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if (pid.isdigit() and path.name.startswith(_scratch_owner(int(pid)) + "-")
                and not _process_alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OverflowError:  # no process has such a number: not a folder this code named
        return True
    return True


def _of_commit(commit: str | None, asked: str, sha: str | None) -> bool:
    """Whether an answer read at `asked` is of commit `sha`: asked at that sha, or the server
    says so (X-Repo-Commit). A server that does not say is asked again at the sha."""
    return sha is None or asked == sha or commit == sha


def _small_file(repo_id: str, filename: str, revision: str, options: HubOptions,
                opened: HubCheckpoint) -> tuple[bytes | None, str | None]:
    """A small file (config.json) at `revision`: its bytes, at most MAX_CONFIG_BYTES + 1 of
    them (more is over the cap), or None where it does not exist; and the commit the server
    names for it. One GET, no HEAD first."""
    url = hf_hub_url(repo_id, filename, revision=revision)

    def get() -> tuple[bytes | None, str | None]:
        with get_session().stream("GET", url, timeout=_request_timeout(options),
                                  follow_redirects=True,
                                  headers={**build_hf_headers(), "Accept-Encoding": "identity"}
                                  ) as response:
            if response.status_code == 404:
                return None, _commit_of(response)
            if response.status_code != 200:
                raise _HttpStatus(response.status_code, _retry_after(response),
                                  _error_code(response))
            body = bytearray()
            for chunk in response.iter_bytes(STREAM_CHUNK):
                _check_deadline(options)
                opened.count(len(chunk))
                body += chunk[:MAX_CONFIG_BYTES + 1 - len(body)]
                if len(body) > MAX_CONFIG_BYTES:
                    break
            return bytes(body), _commit_of(response)

    return with_retries(get, options, f"{filename} of {repo_id}")


def _parse_config(body: bytes | None, scratch: Path) -> tuple[dict, list[str]]:
    """config.json's bytes through `read_config`, the one parser (and cap) for local and hub."""
    if body is None:
        return {}, []
    path = scratch / "config.json"
    path.write_bytes(body)
    try:
        return read_config(path)
    finally:
        path.unlink(missing_ok=True)


def _commit_of(response) -> str | None:
    """The commit the hub says an answer is of (X-Repo-Commit), on it or on a redirect before it."""
    for answer in [response, *getattr(response, "history", [])]:
        commit = answer.headers.get("X-Repo-Commit")
        if commit:
            return commit.strip()
    return None


def with_retries(call: Callable[[], T], options: HubOptions, what: str) -> T:
    """Run `call`, retrying 5xx, 429 (honouring Retry-After), timeouts and broken connections
    with exponential backoff and jitter; a range answer that does not match the request is tried
    `options.mismatch_attempts` times. 404 and the not-found error codes end as 'not found',
    other 401/403 as 'gated or private'."""
    last = ""
    mismatches = 0
    for attempt in range(options.max_attempts):
        wait = None
        _check_deadline(options)
        try:
            return call()
        except HfHubHTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else None
            _raise_final(status, _error_code(response), what)
            last = f"HTTP {status}"
            wait = _retry_after(response)
        except _HttpStatus as exc:
            _raise_final(exc.status, exc.error_code, what)
            last, wait = f"HTTP {exc.status}", exc.retry_after
        except _ShortFile as exc:
            raise HubError(f"{what}: {exc}") from None
        except _RangeMismatch as exc:
            mismatches += 1
            if mismatches >= options.mismatch_attempts:
                raise HubError(f"{what}: range response does not match the request ({exc}); "
                               f"tried {mismatches} times") from None
            last = f"range response does not match the request ({exc})"
        except (httpx2.TransportError, _ShortRead) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt + 1 < options.max_attempts:
            pause = (wait if wait is not None else
                     min(options.max_backoff, options.backoff * 2**attempt)
                     * random.uniform(0.5, 1.5))
            if options.deadline is not None:
                pause = min(pause, max(0.0, options.deadline.remaining()))
            time.sleep(pause)
            _check_deadline(options)
    raise HubError(f"{what}: gave up after {options.max_attempts} attempts ({last})")


class _HttpStatus(Exception):
    def __init__(self, status: int, retry_after: float | None, error_code: str | None = None):
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after, self.error_code = status, retry_after, error_code


class _ShortRead(Exception):
    """The body ended before the bytes the range asked for."""


class _ShortFile(Exception):
    """The server says the file ends before the range does: a truncated or lying checkpoint,
    which no retry can mend."""


class _RangeMismatch(Exception):
    """A range answer that is not the bytes asked for (another range, another length, an encoded
    body): its bytes are never used."""


def _raise_final(status: int | None, error_code: str | None, what: str) -> None:
    """HubError for a status that retrying cannot change. The hub's x-error-code decides between
    'not found' and 'gated or private': huggingface.co and mirrors answer 401 for a missing repo."""
    if error_code in NOT_FOUND_CODES or status == 404:
        raise HubError(f"not found ({what})")
    if status in (401, 403) or error_code == "GatedRepo":
        raise HubError(f"gated or private ({what})")
    if status is not None and status not in RETRY_STATUSES:
        raise HubError(f"{what}: HTTP {status}")


def _error_code(response) -> str | None:
    return response.headers.get("X-Error-Code") if response is not None else None


def _retry_after(response) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class RangeReader:
    """`fetch(file, start, stop) -> bytes` for SafetensorsReader, over HTTP Range.

    A range longer than `options.max_range_bytes` is read in several requests. A 206 is used
    only if it is exactly the range asked. A 200 (the server ignored Range) is kept open as the
    file's one pass: this range and every later one of that file at or after it are taken from
    it as they go by, bytes in between dropped, so such a file costs one read up to its last
    wanted byte (SafetensorsReader asks in file order: header, then tensors by offset).
    Bytes received count into `opened.bytes_fetched`; close() ends the open passes."""

    def __init__(self, url_of: Callable[[str], str], options: HubOptions, opened: HubCheckpoint,
                 what: str = ""):
        self._url_of, self._options, self._opened = url_of, options, opened
        self._what = what
        self._passes: OrderedDict[str, _WholeFilePass] = OrderedDict()
        self._sizes: dict[str, int] = {}  # file sizes the answers gave (Content-Range, -Length)

    def __call__(self, file: str, start: int, stop: int, keep: bool = True) -> bytearray:
        size = self._sizes.get(file)
        if size is not None and stop > size:  # known from an earlier answer: no request
            raise HubError(f"{file}{self._what}: the file ends at byte {size}, before byte "
                           f"{stop} asked")
        out = bytearray(stop - start)  # the one copy of the range held: returned as it is
        at = start
        while at < stop:
            at = with_retries(lambda at=at: self._read_some(file, at, start, stop,
                                                            memoryview(out), keep=keep),
                              self._options, f"{file}{self._what}")
        return out

    def many(self, ranges: list[tuple[str, int, int]]) -> list[bytearray]:
        """Several ranges (file, start, stop), in order: side by side, one request each, from
        a server that answered Range as asked so far; else one after another, so that a
        whole-file answer is read forward once. Side by side, a whole-file answer is read up to
        its range and closed: never kept by two threads."""
        if len(ranges) < 2 or self._opened.range_support != "yes" or self._passes:
            return [self(*r) for r in ranges]
        futures = [_ahead(lambda r=r: self(*r, keep=False)) for r in ranges]
        wait_all(futures)
        return [future.result() for future in futures]

    def head(self, file: str, n: int) -> tuple[bytearray, str | None]:
        """The first `n` bytes of `file`, or all of it where it is shorter (its size is then
        known, and a later range past it fails at once); and the commit the server names for
        them (X-Repo-Commit), None where it names none."""
        out = bytearray(n)
        commit: list[str | None] = [None]
        got = with_retries(lambda: self._read_some(file, 0, 0, n, memoryview(out), commit),
                           self._options, f"{file}{self._what}")
        del out[got:]
        return out, commit[0]

    def forget(self) -> None:
        """Drop what earlier answers told (another commit's): open passes and file sizes."""
        self.close()
        self._sizes.clear()

    def close(self) -> None:
        while self._passes:
            self._passes.popitem()[1].close()

    def _read_some(self, file: str, at: int, start: int, stop: int, out: memoryview,
                   commit: list | None = None, keep: bool = True) -> int:
        """Fill out[at - start:] as far as one answer goes; the file offset reached. With
        `commit` (a head read), a file that ends before `stop` ends the read there. Without
        `keep`, a whole-file answer is not kept open for the next ranges."""
        open_pass = self._passes.get(file) if keep else None
        if open_pass is not None and open_pass.position <= at and commit is None:
            return self._from_pass(file, open_pass, at, start, stop, out)
        if open_pass is not None:  # asked to go back: that pass is of no further use
            self._passes.pop(file).close()
        end = min(stop, at + self._options.max_range_bytes)
        stack = ExitStack()
        try:
            response = stack.enter_context(get_session().stream(
                "GET", self._url_of(file), timeout=_request_timeout(self._options),
                follow_redirects=True,
                headers={**build_hf_headers(), "Range": f"bytes={at}-{end - 1}",
                         "Accept-Encoding": "identity"}))
            size = _check_answer(response, at, end, cut_ok=commit is not None)
            if commit is not None:
                commit[0] = _commit_of(response)
            if size is not None:
                self._sizes[file] = size
                end = min(end, size)
            if response.status_code == 200 and not keep:
                self._opened.range_support = "no"
                return _WholeFilePass(response, stack, self._count).read_into(
                    at, out[at - start:end - start])
            if response.status_code == 200:
                self._keep_pass(file, _WholeFilePass(response, stack, self._count))
                stack = ExitStack()  # the pass owns the response now
                return self._from_pass(file, self._passes[file], at, start, end, out,
                                       eof_ok=commit is not None)
            _read_exactly(response.iter_raw(STREAM_CHUNK), out[at - start:end - start],
                          self._count)
            self._opened.range_support = self._opened.range_support or "yes"
            return end
        finally:
            stack.close()

    def _from_pass(self, file: str, open_pass: _WholeFilePass, at: int, start: int, stop: int,
                   out: memoryview, eof_ok: bool = False) -> int:
        self._passes.move_to_end(file)
        try:
            reached = open_pass.read_into(at, out[at - start:stop - start], eof_ok)
        except BaseException:
            self._passes.pop(file).close()  # a broken pass is retried from a fresh request
            raise
        if reached < stop:  # the file ended there (a head read)
            self._sizes[file] = reached
        return reached

    def _keep_pass(self, file: str, open_pass: _WholeFilePass) -> None:
        self._opened.range_support = "no"
        self._passes[file] = open_pass
        while len(self._passes) > MAX_OPEN_PASSES:
            self._passes.popitem(last=False)[1].close()

    def _count(self, n: int) -> None:
        """n bytes received; between chunks, the model's deadline is checked."""
        self._opened.count(n)
        _check_deadline(self._options)


class _WholeFilePass:
    """A whole-file answer read forward once: `read_into` copies the bytes of a range at or
    after the current position and drops those before it; at most one chunk is held."""

    def __init__(self, response, stack: ExitStack, count: Callable[[int], None]):
        self.position = 0  # file offset of the first byte of self._pending
        self._pending = memoryview(b"")
        self._chunks = response.iter_raw(STREAM_CHUNK)
        self._stack, self._count = stack, count

    def read_into(self, start: int, out: memoryview, eof_ok: bool = False) -> int:
        """Copy bytes start.. into `out`; the file offset reached (short only with `eof_ok`,
        where the file ends first)."""
        want, stop = start, start + len(out)
        while want < stop:
            if not self._pending:
                chunk = next(self._chunks, b"")
                if not chunk and eof_ok:
                    return want
                if not chunk:
                    raise _ShortRead(f"the whole-file answer ended at byte {self.position}, "
                                     f"before byte {stop}")
                self._count(len(chunk))
                self._pending = memoryview(chunk)
            end = self.position + len(self._pending)
            if end > want:
                upto = min(stop, end)
                out[want - start:upto - start] = self._pending[want - self.position:
                                                               upto - self.position]
                want = upto
            used = min(end, want) - self.position
            self._pending, self.position = self._pending[used:], self.position + used
        return stop

    def close(self) -> None:
        self._stack.close()


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _check_answer(response, start: int, stop: int, cut_ok: bool = False) -> int | None:
    """Raise unless `response` can hold bytes start..stop-1 as asked: a 206 naming exactly
    that range with as many bytes, or a 200 (the whole file); never an encoded body. With
    `cut_ok`, a range cut at the end of the file is an answer too. Returns the file's size
    where the answer gives it."""
    if response.status_code not in (200, 206):
        raise _HttpStatus(response.status_code, _retry_after(response), _error_code(response))
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _RangeMismatch(f"Content-Encoding {encoding[:40]}")
    length = response.headers.get("Content-Length")
    if response.status_code == 200:
        size = int(length) if length is not None and length.strip().isdigit() else None
        if size is not None and size < stop and not cut_ok:
            raise _ShortFile(f"the file ends at byte {size}, before byte {stop} asked")
        return size
    content_range = response.headers.get("Content-Range", "")
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    size = int(match[3]) if match is not None and match[3].isdigit() else None
    if match is not None and int(match[1]) == start and match[3] == str(int(match[2]) + 1) \
            and int(match[2]) + 1 < stop:  # a server cuts a range at the end of the file
        if not cut_ok:
            raise _ShortFile(f"the file ends at byte {match[3]}, before byte {stop} asked")
        stop = int(match[3])
    if match is None or (int(match[1]), int(match[2]) + 1) != (start, stop):
        raise _RangeMismatch(f"asked bytes {start}-{stop - 1}, "
                             f"got Content-Range {content_range[:80]!r}")
    if length is not None and length.strip() != str(stop - start):
        raise _RangeMismatch(f"asked {stop - start} bytes, got Content-Length {length[:40]}")
    return size


def _read_exactly(chunks: Iterator[bytes], out: memoryview, count: Callable[[int], None]) -> None:
    """Fill `out` from a 206 body that must hold exactly len(out) bytes: shorter is a short
    read (retried), longer a mismatch; at most one chunk past the end is ever taken."""
    filled = 0
    for chunk in chunks:
        count(len(chunk))
        if filled + len(chunk) > len(out):
            raise _RangeMismatch(f"the body is longer than the {len(out)} bytes asked")
        out[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
        if filled == len(out):
            if next(chunks, b""):
                raise _RangeMismatch(f"the body is longer than the {len(out)} bytes asked")
            return
    raise _ShortRead(f"got {filled} of {len(out)} bytes")


def _download(repo_id: str, filename: str, sha: str, folder: Path | None, options: HubOptions,
              opened: HubCheckpoint) -> Path:
    """A whole file: into the hub cache (folder None) or into `folder`, which the caller deletes."""
    cached = folder is None and isinstance(
        try_to_load_from_cache(repo_id, filename, revision=sha), str)
    path = Path(with_retries(lambda: hf_hub_download(
        repo_id, filename, revision=sha, local_dir=folder,
        etag_timeout=_request_timeout(options)),
        options, f"{filename} of {repo_id}"))
    if not cached:
        opened.count(path.stat().st_size)
    return path
