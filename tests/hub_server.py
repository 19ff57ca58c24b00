"""A loopback server speaking the Hugging Face Hub's HTTP API, for testing pushes and downloads offline.

Only what huggingface_hub and transformers use to push models, tokenizers, remote code and Trainer checkpoints and
to load them back: repository creation, pre-upload ("regular" uploads, so content arrives inline), NDJSON commits,
resolve (HEAD/GET), model info, tree listing and whoami. It listens on 127.0.0.1 only, serves only these tests, and
stops with the fixture. `fail_commits` makes commits answer 500, to test the error path.
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class HubState:
    def __init__(self):
        self.lock = threading.Lock()
        self.repos: dict[str, dict] = {}  # repo_id -> {"files": {path: bytes}, "sha": str, "private": bool}
        self.fail_commits = False
        self.requests: list[tuple[str, str]] = []

    def files(self, repo_id: str) -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[repo_id]["files"])


def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class HubHandler(BaseHTTPRequestHandler):
    state: HubState  # set on the subclass built by start_hub_server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # ------------------------------------------------------------------ helpers

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, head: bool = False):
        self._send(
            status,
            json.dumps({"error": message}).encode(),
            {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
            head,
        )

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        return (self.headers.get("Authorization") or "").startswith("Bearer ")

    def _repo(self, repo_id: str):
        with self.state.lock:
            return self.state.repos.get(repo_id)

    # ------------------------------------------------------------------ routes

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head: bool):
        path = unquote(urlparse(self.path).path)
        self.state.requests.append(("HEAD" if head else "GET", path))
        if path == "/api/whoami-v2":
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            return self._json(
                200,
                {
                    "type": "user",
                    "name": "user",
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}},
                },
            )
        match = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        if match:
            return self._resolve(match["repo"], match["file"], head)
        match = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", path)
        if match:
            repo = self._repo(match["repo"])
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {match['repo']} not found")
            return self._json(
                200,
                {
                    "id": match["repo"],
                    "modelId": match["repo"],
                    "sha": repo["sha"],
                    "private": repo["private"],
                    "tags": [],
                    "downloads": 0,
                    "likes": 0,
                    "siblings": [{"rfilename": name} for name in sorted(repo["files"])],
                },
            )
        match = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<folder>.*))?", path)
        if match:
            repo = self._repo(match["repo"])
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {match['repo']} not found")
            prefix = (match["folder"] or "").strip("/")
            entries = [
                {"type": "file", "path": name, "size": len(data), "oid": _sha(data)}
                for name, data in sorted(repo["files"].items())
                if not prefix or name.startswith(prefix + "/")
            ]
            if prefix and not entries:
                return self._error(404, "EntryNotFound", f"{prefix} does not exist")
            return self._json(200, entries)
        self._error(404, "NotFound", f"no route for GET {path}")

    def _resolve(self, repo_id: str, filename: str, head: bool):
        repo = self._repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head)
        data = repo["files"].get(filename)
        if data is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist", head)
        self._send(
            200,
            data,
            {"ETag": f'"{_sha(data)}"', "X-Repo-Commit": repo["sha"], "Content-Type": "application/octet-stream"},
            head,
        )

    def do_POST(self):
        path = unquote(urlparse(self.path).path)
        self.state.requests.append(("POST", path))
        body = self._body()
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if path == "/api/repos/create":
            payload = json.loads(body or b"{}")
            repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
            with self.state.lock:
                self.state.repos.setdefault(
                    repo_id, {"files": {}, "sha": "0" * 40, "private": bool(payload.get("private"))}
                )
            return self._json(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id, "id": repo_id})
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", path)
        if match:
            files = json.loads(body)["files"]
            return self._json(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        match = re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", path)
        if match:
            return self._commit(match["repo"], body)
        self._error(404, "NotFound", f"no route for POST {path}")

    def _commit(self, repo_id: str, body: bytes):
        if self.state.fail_commits:
            return self._error(500, "InternalError", "the test server was told to fail commits")
        repo = self._repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        with self.state.lock:
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                operation = json.loads(line)
                value = operation["value"]
                if operation["key"] == "file":
                    repo["files"][value["path"]] = base64.b64decode(value["content"])
                elif operation["key"] == "deletedFile":
                    repo["files"].pop(value["path"], None)
                elif operation["key"] == "deletedFolder":
                    for name in [n for n in repo["files"] if n.startswith(value["path"].rstrip("/") + "/")]:
                        del repo["files"][name]
                elif operation["key"] != "header":
                    return self._error(400, "BadRequest", f"unsupported commit operation {operation['key']}")
            repo["sha"] = _sha(repr(sorted((k, _sha(v)) for k, v in repo["files"].items())).encode())
            sha = repo["sha"]
        self._json(
            200,
            {
                "commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{sha}",
                "commitOid": sha,
                "success": True,
                "pullRequestUrl": None,
            },
        )


def start_hub_server() -> tuple[ThreadingHTTPServer, HubState, str]:
    """Serve on 127.0.0.1 with a free port; returns the server, its state and its base URL."""
    state = HubState()
    handler = type("BoundHubHandler", (HubHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state, f"http://127.0.0.1:{server.server_address[1]}"
