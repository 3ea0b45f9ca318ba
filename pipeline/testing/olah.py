"""The third-party Hugging Face mirror olah (PyPI olah==0.5.4), run offline over local git repos,
for tests that check dwscan against a real mirror rather than its own stand-in.

olah lives in a venv of its own (it pins its own huggingface_hub, fastapi, ...), never the
project's. What olah 0.5.4 does offline, as these helpers rely on it: it serves
`<mirrors>/models/<org>/<name>` (a git work tree, branch main; git-lfs objects under
`.git/lfs/objects/`), ignores Range (200, the whole file, chunked), has no model listing (200,
empty body), answers 401 RepoNotFound for a missing repo, and answers `model_info(repo)` without
a revision only for repos seeded with `seed_model_info`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OLAH_VERSION = "0.5.4"
LFS_SPEC = "https://git-lfs.github.com/spec/v1"


def default_venv() -> Path:
    """Where the tests keep olah's venv: $DWSCAN_OLAH_VENV, else the user's cache folder (so
    it is built once per machine, not once per run)."""
    if os.environ.get("DWSCAN_OLAH_VENV"):
        return Path(os.environ["DWSCAN_OLAH_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dwscan" / f"olah-{OLAH_VERSION}"


def olah_cli(venv: Path) -> Path | None:
    """olah's command in `venv`, or None when that venv has none."""
    cli = Path(venv) / "bin" / "olah-cli"
    return cli if cli.is_file() else None


def install_olah(venv: Path, timeout: float = 600) -> Path:
    """Create `venv` with olah in it (about 35 s and 110 MB, network to PyPI); its command."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=timeout)
    subprocess.run([str(Path(venv) / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    f"olah=={OLAH_VERSION}"], check=True, timeout=timeout,
                   capture_output=True, text=True)
    cli = olah_cli(venv)
    if cli is None:
        raise RuntimeError(f"pip installed olah=={OLAH_VERSION} into {venv}, but no olah-cli")
    return cli


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def lfs_pointer(data: bytes) -> tuple[str, str]:
    """(oid, pointer text) of `data` as git-lfs stores it. olah takes a blob for a pointer only
    if it is 121 to 149 bytes in exactly this form, with a lowercase hex oid."""
    oid = hashlib.sha256(data).hexdigest()
    return oid, f"version {LFS_SPEC}\noid sha256:{oid}\nsize {len(data)}\n"


def make_repo(mirrors: Path, repo_id: str, files: dict[str, bytes], lfs: frozenset[str] = frozenset()
              ) -> str:
    """Commit `files` to <mirrors>/models/<repo_id> on branch main, those named in `lfs` as
    git-lfs pointers with their bytes in .git/lfs/objects (git-lfs itself is not needed);
    the commit sha."""
    repo = Path(mirrors) / "models" / repo_id
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
        for key, value in [("user.name", "dwscan-test"), ("user.email", "test@example.invalid"),
                           ("commit.gpgsign", "false")]:
            _git(repo, "config", key, value)
    for name, data in files.items():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name in lfs:
            oid, pointer = lfs_pointer(data)
            stored = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_bytes(data)
            target.write_text(pointer)
        else:
            target.write_bytes(data)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "dwscan test repo")
    return _git(repo, "rev-parse", "HEAD")


def seed_model_info(repos: Path, mirrors: Path, repo_id: str) -> None:
    """Let olah answer `model_info(repo_id)` without a revision, as dwscan asks it: offline, it
    takes the sha of the newest <repos>/api/models/<repo>/revision/*/meta_head.json. The seed
    pins that sha: re-seed after a new commit."""
    work_tree = Path(mirrors) / "models" / repo_id
    sha = _git(work_tree, "rev-parse", "HEAD")
    epoch = int(_git(work_tree, "log", "-1", "--format=%ct"))
    seed = Path(repos) / "api" / "models" / repo_id / "revision" / sha / "meta_head.json"
    seed.parent.mkdir(parents=True, exist_ok=True)
    seed.write_text(json.dumps({"sha": sha, "lastModified": time.strftime(
        "%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(epoch))}))


def _config(mirrors: Path, repos: Path, port: int) -> str:
    # mirrors-path must be a TOML list (a string is iterated per character: every repo 401s);
    # the upstream is a dead local port, so nothing can reach huggingface.co
    return f"""[basic]
host = "127.0.0.1"
port = {port}
repos-path = {json.dumps(str(repos))}
mirrors-path = [{json.dumps(str(mirrors))}]
hf-scheme = "http"
hf-netloc = "127.0.0.1:9"
hf-lfs-netloc = "127.0.0.1:9"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"

[accessibility]
offline = true
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1.0).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@contextmanager
def running_olah(cli: Path, mirrors: Path, repos: Path, timeout: float = 30.0) -> Iterator[str]:
    """olah serving `mirrors` offline on a free loopback port; yields its endpoint (for
    HF_ENDPOINT). Its output goes to <repos>/../olah.out, never a pipe: olah logs every request,
    and a pipe nobody reads would block it."""
    mirrors, repos = Path(mirrors).resolve(), Path(repos).resolve()
    repos.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = repos.parent / "olah.toml"
    config.write_text(_config(mirrors, repos, port))
    log = repos.parent / "olah.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(cli), "-c", str(config), "--log-path",
                                 str(repos.parent / "olah-logs")], cwd=repos.parent,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        # ready once anything answers; not "/", which olah 0.5.4 answers with a 500
        deadline = time.monotonic() + timeout
        while not _answers(f"{endpoint}/api/models/__ready__/__ready__/revision/main"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"olah did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield endpoint
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (uvicorn stops in about 2 s), SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
