"""A real nginx (Debian's /usr/sbin/nginx) serving a directory on 127.0.0.1, for the COG tests.

Started as the current user on a free port with its own prefix and config; its access log
records the bytes sent per request, so tests can assert how much of a tile was fetched.
``/e404/``, ``/e416/`` and ``/e503/`` answer with that status for any path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format bytes '$request_method\t$uri\t$status\t$body_bytes_sent\t$http_range\t'
                     '$http_user_agent';
    access_log {prefix}/access.log bytes;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    default_type application/octet-stream;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /e404/ {{ return 404; }}
        location /e416/ {{ return 416; }}
        location /e503/ {{ return 503; }}
    }}
}}
"""


def _user_directive() -> str:
    """Workers run as the current user (a root master would switch them to ``nobody``, who
    cannot read the test's private files)."""
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    return f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Request:
    method: str
    uri: str
    status: int
    bytes_sent: int
    range: str  # "-" when the request had none
    agent: str


class Nginx:
    """``with Nginx(root, workdir) as server: server.url ...``"""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root, self.prefix = Path(root).resolve(), Path(workdir).resolve()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            self.port = free_port()
            conf = self.prefix / "nginx.conf"
            conf.write_text(_CONF.format(prefix=self.prefix, port=self.port, root=self.root,
                                         user=_user_directive()))
            self.proc = subprocess.Popen(
                [NGINX, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
                 "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready():
                return self
            self.stop()
            if attempt == 4:
                log = (self.prefix / "error.log").read_text()
                raise RuntimeError(f"nginx did not start: {log}")
        return self

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False  # exited: the port was taken, or the config is wrong
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests(self) -> list[Request]:
        """Every request nginx has logged so far (it writes each line when it is answered)."""
        path = self.prefix / "access.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            method, uri, status, sent, rng, agent = line.split("\t", 5)
            out.append(Request(method, uri, int(status), int(sent), rng, agent))
        return out

    def clear_log(self) -> None:
        (self.prefix / "access.log").write_text("")  # nginx appends (O_APPEND) to the same file
