"""A Hugging Face Hub stand-in on 127.0.0.1 for tests: the endpoints huggingface_hub and dwscan
use (model listing, model info, file HEAD/GET with Range under resolve/<revision>/), repos that
the tests create, a count of the bytes it sends, and faults it can inject on request.

Like huggingface.co (and the olah mirror) it answers 401 RepoNotFound for a repo it does not
have. Hostile or limited servers are switchable: per repo, how it answers Range (`Repo.range_mode`),
and for the whole stand-in, what its listing answers (`HubStandIn.listing`)."""

from __future__ import annotations

import atexit
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    tags: list[str] = field(default_factory=lambda: ["timm", "pytorch", "safetensors"])
    gated: bool = False
    sha: str = ""
    last_modified: str = "2026-01-01T00:00:00.000Z"
    # how file GETs with a Range header are answered: 'honest' (206 with the range), 'ignore'
    # (200, the whole file, chunked and without Content-Length, as olah does), 'shift' (206 with
    # the bytes 4 further on and an honest Content-Range for them) or 'gzip' (206, the range
    # gzip-encoded, whatever Accept-Encoding says)
    range_mode: str = "honest"

    def __post_init__(self):
        if not self.sha:
            self.sha = self.compute_sha()

    def compute_sha(self) -> str:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + hashlib.sha1(self.files[name]).digest())
        return digest.hexdigest()


@dataclass
class Fault:
    """Break the next `times` requests whose path contains `path`: 'error500', 'rate429' (with
    Retry-After), 'stall' (wait `seconds` before answering), 'truncate' (half the body) or
    'reset' (close the connection at once)."""

    path: str
    kind: str
    times: int = 1
    seconds: float = 0.0


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that were open at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = open_now = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


class HubStandIn:
    def __init__(self, latency: float = 0.0):
        self.repos: dict[str, Repo] = {}
        # seconds added before every answer (each request's handler thread sleeps, so answers
        # overlap as over a real network): what a round trip to a distant hub costs
        self.latency = latency
        self.faults: list[Fault] = []
        self.bytes_sent: dict[str, int] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        # (method, path, Range header or None, start, end): when each request was in the
        # server, time.monotonic(), from its arrival to its answer's end
        self.timeline: list[tuple[str, str, str | None, float, float]] = []
        # what GET /api/models answers: 'json' (the listing), 'empty' (200 with no body, as olah
        # does), 'malformed' (200 with a JSON object, not a list) or 'none' (404, no such route)
        self.listing = "json"
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_id: str, repo: Repo) -> Repo:
        self.repos[repo_id] = repo
        return repo

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.path in path:
                    fault.times -= 1
                    return fault
        return None

    def count(self, repo_id: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[repo_id] = self.bytes_sent.get(repo_id, 0) + n


_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _handler_for(hub: HubStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # headers and body go out as separate writes: without this, Nagle's algorithm and
            # delayed ACKs add ~40 ms to every response
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_HEAD(self):
            self._timed(head=True)

        def do_GET(self):
            self._timed(head=False)

        def _timed(self, head: bool):
            start = time.monotonic()
            try:
                self._serve(head)
            finally:
                hub.timeline.append((self.command, unquote(urlparse(self.path).path),
                                     self.headers.get("Range"), start, time.monotonic()))

        def _serve(self, head: bool):
            url = urlparse(self.path)
            path = unquote(url.path)
            if hub.latency:
                time.sleep(hub.latency)
            fault = hub.take_fault(path)
            if fault and fault.kind == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            if fault and fault.kind == "stall":
                time.sleep(fault.seconds)
            if fault and fault.kind == "error500":
                return self._send(500, b'{"error": "injected"}', path=path)
            if fault and fault.kind == "rate429":
                return self._send(429, b'{"error": "slow down"}', {"Retry-After": "1"}, path=path)
            if path == "/api/models":
                return self._list(parse_qs(url.query), head)
            match = _INFO.match(path)
            if match:
                return self._info(match["repo"], match["rev"], head)
            match = _RESOLVE.match(path)
            if match:
                return self._file(match["repo"], match["rev"], match["file"], head,
                                  truncate=bool(fault and fault.kind == "truncate"))
            self._send(404, b'{"error": "no such endpoint"}', {"X-Error-Code": "EntryNotFound"},
                       path=path)

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:  # huggingface.co: 401 whether the repo is missing or private
                self._send(401, b'{"error": "Repository not found"}',
                           {"X-Error-Code": "RepoNotFound"}, path=self.path)
            elif repo.gated:
                self._send(401, b'{"error": "Access to this repo is restricted"}',
                           {"X-Error-Code": "GatedRepo"}, path=self.path)
                return None
            return repo

        def _list(self, query: dict, head: bool):
            if hub.listing != "json":
                status, body = {"empty": (200, b""), "malformed": (200, b'{"models": "none"}'),
                                "none": (404, b"Not Found")}[hub.listing]
                return self._send(status, body, head=head, path=self.path)
            author = query.get("author", [None])[0]
            search = query.get("search", [None])[0]
            filters = query.get("filter", [])
            limit = int(query.get("limit", ["0"])[0] or 0)
            items = []
            for repo_id, repo in sorted(hub.repos.items()):
                if author and not repo_id.startswith(author + "/"):
                    continue
                if search and search not in repo_id:
                    continue
                if any(f not in repo.tags for f in filters):
                    continue
                items.append({"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.sha,
                              "tags": repo.tags, "lastModified": repo.last_modified,
                              "private": False, "gated": "auto" if repo.gated else False})
            if limit:
                items = items[:limit]
            self._send(200, json.dumps(items).encode(), head=head, path=self.path)

        def _info(self, repo_id: str, revision: str | None, head: bool):
            repo = self._repo(repo_id)
            if repo is None:
                return
            if revision not in (None, "main", repo.sha):
                return self._send(404, b'{"error": "Revision not found"}',
                                  {"X-Error-Code": "RevisionNotFound"}, path=self.path)
            body = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.sha,
                    "tags": repo.tags, "private": False, "gated": False,
                    "lastModified": repo.last_modified,
                    "siblings": [{"rfilename": name, "size": len(data)}
                                 for name, data in sorted(repo.files.items())]}
            self._send(200, json.dumps(body).encode(), head=head, path=self.path)

        def _file(self, repo_id: str, revision: str, name: str, head: bool, truncate: bool):
            repo = self._repo(repo_id)
            if repo is None:
                return
            if revision not in ("main", repo.sha):
                return self._send(404, b'{"error": "Revision not found"}',
                                  {"X-Error-Code": "RevisionNotFound"}, path=self.path)
            data = repo.files.get(name)
            if data is None:
                return self._send(404, b'{"error": "Entry not found"}',
                                  {"X-Error-Code": "EntryNotFound"}, path=self.path)
            headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes",
                       "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            status, body = 200, data
            wanted = self.headers.get("Range")
            if wanted and repo.range_mode == "ignore":
                return self._send(200, data, headers, head=head, path=self.path,
                                  repo_id=repo_id, truncate=truncate, chunked=True)
            if wanted:
                match = _RANGE.match(wanted.strip())
                if not match:
                    return self._send(416, b"", path=self.path)
                start = int(match[1])
                end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
                if start > end:
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"},
                                      path=self.path)
                if repo.range_mode == "shift":
                    start, end = start + 4, min(end + 4, len(data) - 1)
                status, body = 206, data[start:end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                if repo.range_mode == "gzip":
                    body = gzip.compress(body)
                    headers["Content-Encoding"] = "gzip"
            self._send(status, body, headers, head=head, path=self.path, repo_id=repo_id,
                       truncate=truncate)

        def _send(self, status: int, body: bytes, headers: dict | None = None, head=False,
                  path: str = "", repo_id: str | None = None, truncate: bool = False,
                  chunked: bool = False):
            hub.requests.append((self.command, path, status))
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if status >= 400 or "Content-Range" not in (headers or {}):
                self.send_header("Content-Type", "application/json" if status >= 400
                                 or path.startswith("/api/") else "application/octet-stream")
            if chunked and not head:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if head:
                return
            sent = body[: len(body) // 2] if truncate else body
            if chunked:
                return self._send_chunked(sent, repo_id, last=not truncate)
            try:
                self.wfile.write(sent)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            if repo_id:
                hub.count(repo_id, len(sent))
            if truncate:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _send_chunked(self, body: bytes, repo_id: str | None, last: bool):
            """The body in 64 KiB chunks, each counted once written: a client that stops
            reading (and closes) costs only what reached it."""
            try:
                for at in range(0, len(body), 1 << 16):
                    piece = body[at:at + (1 << 16)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                    if repo_id:
                        hub.count(repo_id, len(piece))
                if last:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            if not last:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


_HUB: HubStandIn | None = None


def shared_hub() -> HubStandIn:
    """Start the hub stand-in once per process and point HF_ENDPOINT and HF_HUB_CACHE at it.

    Call it before anything imports huggingface_hub, which reads both once, at import; every
    subprocess a test starts (dwscan, Ray workers) inherits them.
    """
    global _HUB
    if _HUB is None:
        _HUB = HubStandIn().__enter__()
        cache = tempfile.mkdtemp(prefix="dwscan-test-hub-cache-")
        os.environ["HF_ENDPOINT"] = _HUB.endpoint
        os.environ["HF_HUB_CACHE"] = cache
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        atexit.register(_HUB.__exit__)
        atexit.register(shutil.rmtree, cache, True)
    return _HUB
