"""A loopback stand-in for Google's OAuth token endpoint and the GCE metadata server.

Google's login endpoints are unreachable offline, so the credential tests point google-auth at
this server instead (token URI / metadata host), and the genuine google-auth code refreshes
against it: the refresh-token grant of a user login (EE credentials file, gcloud ADC), the
JWT-bearer grant of a service-account key, the metadata server's token of a cloud VM. Every
grant it serves is recorded in ``grants``; every token it hands out says where it came from.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
VM_EMAIL = "vm-runner@vm-project.iam.gserviceaccount.com"


class GooglePeer:
    """``with GooglePeer() as peer``: ``peer.token_uri``, ``peer.metadata_host``.

    ``vm=False``: the metadata address answers like a machine that is no cloud VM (a 404
    without ``Metadata-Flavor``), so google-auth's probe says "not GCE" at once.
    """

    def __init__(self, vm: bool = True) -> None:
        self.grants: list[dict[str, Any]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any, headers: dict[str, str]) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()}
                peer.grants.append({"path": self.path, **form})
                if form.get("grant_type") == "refresh_token":
                    token = f"user-token-for-{form.get('refresh_token')}"
                elif form.get("grant_type") == JWT_GRANT:
                    token = "service-account-token"
                else:
                    self._answer(400, {"error": "unsupported_grant_type"},
                                 {"Content-Type": "application/json"})
                    return
                self._answer(200, {"access_token": token, "expires_in": 3600,
                                   "token_type": "Bearer"}, {"Content-Type": "application/json"})

            def do_GET(self) -> None:  # the metadata server
                flavor = {"Metadata-Flavor": "Google", "Content-Type": "application/text"}
                if not vm:
                    self._answer(404, "no metadata server here", {})
                    return
                if self.headers.get("Metadata-Flavor") != "Google":
                    self._answer(403, "missing Metadata-Flavor", {})
                    return
                path = urlsplit(self.path).path.rstrip("/")
                sa = "/computeMetadata/v1/instance/service-accounts/default"
                if path in ("", "/computeMetadata/v1"):
                    self._answer(200, "", flavor)
                elif path == sa:
                    self._answer(200, {"email": VM_EMAIL, "aliases": ["default"],
                                       "scopes": ["https://www.googleapis.com/auth/cloud-platform"]},
                                 {**flavor, "Content-Type": "application/json"})
                elif path == f"{sa}/token":
                    peer.grants.append({"path": path, "grant_type": "metadata"})
                    self._answer(200, {"access_token": "vm-token", "expires_in": 3600,
                                       "token_type": "Bearer"},
                                 {**flavor, "Content-Type": "application/json"})
                elif path == "/computeMetadata/v1/project/project-id":
                    self._answer(200, "vm-project", flavor)
                elif path == "/computeMetadata/v1/universe/universe-domain":
                    self._answer(200, "googleapis.com", flavor)
                else:
                    self._answer(404, "not found", flavor)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.metadata_host = f"127.0.0.1:{port}"
        self.token_uri = f"http://127.0.0.1:{port}/token"

    def __enter__(self) -> GooglePeer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
