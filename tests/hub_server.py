"""A stand-in for the Hugging Face Hub on 127.0.0.1, for tests that download through a real
connection (huggingface_hub with HF_ENDPOINT pointing here). It serves one folder as a model
repository, or fails the way the real Hub and networks fail.

Modes: "ok"; "401" (not logged in), "404" (no such repository), "gated" (403, license not
accepted), "cut" (a weight file's body stops halfway and the connection closes), "hang" (requests
are read and never answered), "500".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "5a1b2c3d4e5f60718293a4b5c6d7e8f901234567"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # quiet test output
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, head: bool) -> bool:
        mode = self.server.mode
        if mode == "hang":
            time.sleep(self.server.hang_s)
            return True
        codes = {
            "401": (401, "RepoNotFound"),
            "404": (404, "RepoNotFound"),
            "gated": (403, "GatedRepo"),
            "500": (500, ""),
        }
        if mode in codes:
            code, error = codes[mode]
            body = json.dumps({"error": "refused by the test Hub"}).encode()
            self._send(code, body, {"X-Error-Code": error, "Content-Type": "application/json"} if error else {}, head)
            return True
        return False

    def _route(self, head: bool) -> None:
        self.server.requests.append(self.path)
        if self._error(head):
            return
        repo, folder = self.server.repo, self.server.folder
        path = self.path.split("?")[0]
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if path.startswith(f"/api/models/{repo}/revision/"):
            info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": p.name} for p in files]}
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        elif path.startswith(f"/api/models/{repo}/tree/"):
            tree = [
                {
                    "type": "file",
                    "path": p.name,
                    "size": p.stat().st_size,
                    "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                }
                for p in files
            ]
            self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
        elif path.startswith(f"/{repo}/resolve/"):
            name = path.rsplit("/", 1)[1]
            if not (folder / name).is_file():
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            body = (folder / name).read_bytes()
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(body).hexdigest()}"'}
            if self.server.mode == "cut" and name.endswith(".safetensors") and not head:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(200, body, headers, head)
        else:
            self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path, repo: str, mode: str, hang_s: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folder, self.repo, self.mode, self.hang_s = folder, repo, mode, hang_s
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def hub(folder: Path, repo: str, mode: str = "ok", hang_s: float = 5.0) -> Iterator[_Server]:
    server = _Server(folder, repo, mode, hang_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
