"""A local stand-in for the Hugging Face Hub: the subset of its HTTP API that `huggingface_hub` 2.4 uses to create a
repo and commit files to it (stdlib only, one thread per request).

| request | reply |
| --- | --- |
| `POST /api/repos/create` | `{"url": "<endpoint>/<namespace>/<name>"}` |
| `GET /api/whoami-v2` | a user named `fake-user` (asked when a repo id has no namespace) |
| `POST /api/validate-yaml` | no errors (the card metadata check during an upload) |
| `POST /api/models/<repo>/preupload/<rev>` | every file `"uploadMode": "regular"` (inline base64, no LFS/xet) |
| `POST /api/models/<repo>/commit/<rev>` | NDJSON: a header line, then `{"key": "file", "value": {"path", "content", |
|  | "encoding": "base64"}}` per file; the files are stored, and a commit URL under the endpoint is returned |
| anything else | 404 (e.g. `HEAD /<repo>/resolve/main/README.md`, `GET /api/agent-harnesses`) |

```python
with FakeHub() as hub:
    env = {"HF_ENDPOINT": hub.url, ...}  # in a subprocess: the endpoint is read when huggingface_hub is imported
    hub.repos["fake-user/model"]  # {path: bytes}
```
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

USER = "fake-user"


class FakeHub:
    """Serves on 127.0.0.1 (a free port) while in a `with` block; `repos` holds what was committed, `requests`
    every `(method, path)` received, `commits` each commit's header (summary)."""

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reply(self, status: int, payload: dict | None = None) -> None:
                data = json.dumps(payload if payload is not None else {"error": "not found"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 404:
                    self.send_header("X-Error-Code", "EntryNotFound")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _route(self) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                body = self._body()
                parts = path.strip("/").split("/")
                if self.command == "POST" and path == "/api/repos/create":
                    info = json.loads(body)
                    repo_id = f"{info.get('organization') or USER}/{info['name']}"
                    hub.repos.setdefault(repo_id, {})
                    return self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if self.command == "GET" and path == "/api/whoami-v2":
                    return self._reply(200, {"name": USER, "type": "user", "orgs": [], "auth": {}})
                if self.command == "POST" and path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if self.command == "POST" and len(parts) == 6 and parts[:2] == ["api", "models"]:
                    repo_id, action = f"{parts[2]}/{parts[3]}", parts[4]
                    if repo_id not in hub.repos:
                        return self._reply(404, {"error": f"Repository {repo_id} not found"})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._reply(
                            200,
                            {
                                "files": [
                                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                                ]
                            },
                        )
                    if action == "commit":
                        return self._commit(repo_id, body)
                return self._reply(404)

            def _commit(self, repo_id: str, body: bytes) -> None:
                files = {}
                for line in body.decode().splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if item["key"] == "header":
                        hub.commits.append({"repo": repo_id, **item["value"]})
                    elif item["key"] == "file":
                        value = item["value"]
                        if value.get("encoding", "base64") != "base64":
                            return self._reply(400, {"error": f"unsupported encoding {value.get('encoding')!r}"})
                        files[value["path"]] = base64.b64decode(value["content"])
                    else:  # deletions, LFS pointers, copies: not needed by our pushes
                        return self._reply(400, {"error": f"unsupported commit operation {item['key']!r}"})
                hub.repos[repo_id].update(files)
                oid = hashlib.sha1(body).hexdigest()
                return self._reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid})

            do_GET = do_POST = do_HEAD = do_PUT = _route

        return Handler
