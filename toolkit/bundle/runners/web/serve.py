#!/usr/bin/env python3
"""Serve this bundle to a browser on this machine: http://127.0.0.1:8000/web/ (standard library only).

It sends the two cross-origin isolation headers (COOP/COEP): without them a browser gives the page
no SharedArrayBuffer, and onnxruntime-web's WASM backend runs on one thread.

    python web/serve.py [--port 8000] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012 (the base class's own attribute)
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".jinja": "text/plain",
    }

    def end_headers(self) -> None:
        for key, value in ISOLATION.items():
            self.send_header(key, value)
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet: one line per file would flood a terminal
        pass


def server(host: str = "127.0.0.1", port: int = 0, root: Path = BUNDLE) -> http.server.ThreadingHTTPServer:
    """A server for `root` on host:port (port 0: a free one); call serve_forever() to run it."""
    return http.server.ThreadingHTTPServer((host, port), functools.partial(Handler, directory=str(root)))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    httpd = server(args.host, args.port)
    print(f"Serving {BUNDLE} at http://{args.host}:{httpd.server_address[1]}/web/ (Ctrl+C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        httpd.serve_forever()
