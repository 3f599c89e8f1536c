"""A real HTTP server on 127.0.0.1 that serves the Hugging Face Hub's file layout for downloads.

``GET|HEAD /<owner>/<name>/resolve/<revision>/<path>`` answers like the Hub: ``X-Repo-Commit``,
``ETag``, ``Content-Length``, ``Range`` support, and ``X-Error-Code`` on 404s (RepoNotFound,
RevisionNotFound, EntryNotFound). Uploads take the Hub API's create-repo, preupload and NDJSON commit
endpoints (every file in "regular" upload mode, so its content travels base64 in the commit). ``cut_downloads[path] = n`` makes the next ``n`` GETs of that
file stop halfway through the body and drop the connection. ``gate`` (a ``threading.Event``, open by
default) holds every request until it is set: a download that takes as long as a test wants.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?:api/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class HubServer:
    def __init__(self, root: Path):
        self.root = Path(root)  # root/<owner>/<name>/<files>
        self.cut_downloads: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _error(self, code: str):
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve(self, body: bool):
                server.requests.append((self.command, self.path))
                server.gate.wait(timeout=120)
                match = _RESOLVE.match(self.path.split("?")[0])
                if not match:
                    return self._error("RepoNotFound")
                repo_dir = server.root / match["repo"]
                if not repo_dir.is_dir():
                    return self._error("RepoNotFound")
                if match["rev"] not in ("main", COMMIT):
                    return self._error("RevisionNotFound")
                file = repo_dir / match["path"]
                if not file.is_file():
                    return self._error("EntryNotFound")
                data = file.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and body:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                payload = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"%s"' % hashlib.sha256(data).hexdigest())
                self.send_header("Content-Length", str(len(payload)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                if server.cut_downloads.get(match["path"], 0) > 0:
                    server.cut_downloads[match["path"]] -= 1
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(payload)

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _json(self, payload: dict, code: int = 200):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                server.requests.append((self.command, self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}"
                    (server.root / repo).mkdir(parents=True, exist_ok=True)
                    return self._json({"url": f"{server.url}/{repo}"})
                match = re.match(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/(?P<rev>[^/]+)$", path)
                if not match or not (server.root / match["repo"]).is_dir():
                    return self._error("RepoNotFound")
                if match["op"] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        target = server.root / match["repo"] / item["value"]["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(item["value"]["content"]))
                return self._json({"commitUrl": f"{server.url}/{match['repo']}/commit/{COMMIT}", "commitOid": COMMIT})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
