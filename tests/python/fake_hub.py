"""A fake Hugging Face Hub on 127.0.0.1 for the download tests and bench/download.py.

It answers as the Hub answers the requests huggingface_hub and sdcoreml make (checked against
the real huggingface_hub client in test_hub_download.py::test_fake_hub_fills_cache_like_huggingface_hub):

- GET  /api/models/{org}/{name}/revision/{rev} → {"id", "sha", "siblings": [{"rfilename"}]}
- HEAD|GET /{org}/{name}/resolve/{rev}/{path} → regular files: 200 with ETag (the git blob
  sha1), Content-Length and X-Repo-Commit; LFS files (*.safetensors, *.bin, *.ckpt): 302 to the
  CDN with X-Linked-Etag (the sha256), X-Linked-Size, X-Repo-Commit
- GET  /cdn/{sha256} on a second port (another "host", as the Hub's CDN): the bytes, Range → 206
- errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo)

Faults for the tests: `token` (every Hub request must carry it; the CDN never asks), `drop` (the
CDN closes the connection after N bytes of a file, `times` times), `corrupt` (a file's bytes
flipped), `statuses` (answers such as 500 or 404 queued before the real ones), `no_range`. Every
request is logged in `requests` (server, method, path, Range, Authorization). The servers bind
to 127.0.0.1 only and stop after `lifetime` seconds even if a test forgets to.
"""

import hashlib
import http.server
import json
import os
import threading
import urllib.parse
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


class Repo:
    def __init__(self, files, gated=False):
        self.files = dict(sorted(files.items()))
        self.gated = gated
        h = hashlib.sha1()
        for p, data in self.files.items():
            h.update(p.encode() + b"\0" + hashlib.sha256(data).digest())
        self.sha = h.hexdigest()

    @staticmethod
    def from_folder(folder):
        folder = Path(folder)
        files = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
                files[p.relative_to(folder).as_posix()] = p.read_bytes()
        return files


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, lifetime=600):
        self.repos = {}
        self.token = None
        self.drop = {}  # path -> (after_bytes, times)
        self.corrupt = set()
        self.statuses = {}  # ("api", repo) | ("resolve", path) | ("cdn", path) -> [status, ...]
        self.no_range = False
        self.requests = []
        self.lock = threading.Lock()
        self.lifetime = lifetime
        self.by_sha256 = {}

    # ---- content
    def add_repo(self, repo_id, folder=None, files=None, gated=False):
        files = dict(files or {})
        if folder is not None:
            files.update(Repo.from_folder(folder))
        repo = Repo(files, gated=gated)
        self.repos[repo_id] = repo
        for p, data in repo.files.items():
            self.by_sha256[hashlib.sha256(data).hexdigest()] = (p, data)
        return repo

    # ---- life
    def start(self):
        hub = self

        class Hub(Handler):
            role = "hub"
            fake = hub

        class Cdn(Handler):
            role = "cdn"
            fake = hub

        self.hub_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
        self.cdn_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cdn)
        for s in (self.hub_server, self.cdn_server):
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.hub_server.server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self.cdn_server.server_address[1]}"
        self.watchdog = threading.Timer(self.lifetime, self.stop)
        self.watchdog.daemon = True
        self.watchdog.start()
        return self

    def stop(self):
        for s in (getattr(self, "hub_server", None), getattr(self, "cdn_server", None)):
            if s is not None:
                s.shutdown()
                s.server_close()
        self.hub_server = self.cdn_server = None
        if getattr(self, "watchdog", None):
            self.watchdog.cancel()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- queries for the tests
    def fetched(self, server="cdn", method="GET"):
        return [r for r in self.requests if r["server"] == server and r["method"] == method]

    def take_status(self, key):
        with self.lock:
            queue = self.statuses.get(key)
            return queue.pop(0) if queue else None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    role = "hub"
    fake: FakeHub = None

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self.route(head=True)

    def do_GET(self):
        self.route(head=False)

    def record(self):
        with self.fake.lock:
            self.fake.requests.append({"server": self.role, "method": self.command, "path": self.path,
                                       "range": self.headers.get("Range"),
                                       "authorization": self.headers.get("Authorization")})

    def answer(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def error(self, status, code, message, head):
        body = json.dumps({"error": message}).encode()
        self.answer(status, body, {"X-Error-Code": code, "X-Error-Message": message,
                                   "Content-Type": "application/json"}, head)

    def route(self, head):
        self.record()
        path = urllib.parse.urlsplit(self.path).path
        if self.role == "cdn":
            return self.cdn_file(path, head)
        parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
            return self.api(parts[2] + "/" + parts[3], parts[5], head)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self.resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), head)
        self.error(404, "EntryNotFound", "no such route", head)

    def authorised(self, repo_id, repo, head):
        """The token check of a gated or private repo (or every repo when hub.token is set)."""
        want = self.fake.token
        if want is None:
            return True
        got = self.headers.get("Authorization")
        if got == f"Bearer {want}":
            return True
        if repo is not None and repo.gated:
            self.error(401 if got is None else 403, "GatedRepo",
                       f"Access to model {repo_id} is restricted. You must be authenticated to access it.", head)
        else:
            self.error(401, "RepoNotFound", "Repository not found", head)
        return False

    def queued(self, key, head):
        status = self.fake.take_status(key)
        if status is None:
            return False
        code = {404: "EntryNotFound"}.get(status, "")
        self.answer(status, b"{}", {"X-Error-Code": code} if code else {}, head)
        return True

    def api(self, repo_id, rev, head):
        repo = self.fake.repos.get(repo_id)
        if self.queued(("api", repo_id), head) or not self.authorised(repo_id, repo, head):
            return
        if repo is None:
            return self.error(404, "RepoNotFound", "Repository not found", head)
        if rev not in ("main", repo.sha):
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        body = json.dumps({"_id": "0" * 24, "id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                           "gated": "manual" if repo.gated else False, "disabled": False, "tags": [],
                           "siblings": [{"rfilename": p} for p in repo.files]}).encode()
        self.answer(200, body, {"Content-Type": "application/json", "X-Repo-Commit": repo.sha}, head)

    def resolve(self, repo_id, rev, file, head):
        repo = self.fake.repos.get(repo_id)
        if self.queued(("resolve", file), head) or not self.authorised(repo_id, repo, head):
            return
        if repo is None:
            return self.error(404, "RepoNotFound", "Repository not found", head)
        if rev not in ("main", repo.sha):
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        data = repo.files.get(file)
        if data is None:
            return self.error(404, "EntryNotFound", f"{file} does not exist", head)
        common = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if file.endswith(LFS_SUFFIXES):
            digest = hashlib.sha256(data).hexdigest()
            location = f"{self.fake.cdn}/cdn/{digest}?file={urllib.parse.quote(file)}"
            headers = dict(common, **{"Location": location, "X-Linked-Etag": f'"{digest}"',
                                      "X-Linked-Size": len(data), "ETag": f'"{git_blob_sha1(data)}"'})
            return self.answer(302, b"", headers, head)
        self.answer(200, data, dict(common, ETag=f'"{git_blob_sha1(data)}"'), head)

    def cdn_file(self, path, head):
        digest = path.rsplit("/", 1)[-1]
        hit = self.fake.by_sha256.get(digest)
        if hit is None:
            return self.answer(404, b"", {}, head)
        file, data = hit
        if self.queued(("cdn", file), head):
            return
        if file in self.fake.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, status, headers = 0, 200, {"ETag": f'"{digest}"', "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if rng and not self.fake.no_range and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(data):
                return self.answer(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        drop = None
        with self.fake.lock:
            if file in self.fake.drop and not head:
                after, times = self.fake.drop[file]
                if times > 0:
                    self.fake.drop[file] = (after, times - 1)
                    drop = after
        if drop is None:
            return self.answer(status, body, headers, head)
        # promise the whole body, send `drop` bytes of it, and hang up
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:drop])
        self.wfile.flush()
        self.close_connection = True
        try:
            import socket
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
