"""The served emulator refuses what only an attacker sends (real HTTP on a loopback port).

Export paths stay under the exports folder (``..``, URL-encoded ``..``, absolute names),
POSTs must be JSON, the Host must be the loopback address and port served, and a browser
``Origin`` is refused; duplicate export request ids behave as configured.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from urllib.parse import urlsplit

import pytest

from aether.testing.emulator import Emulator, running

EXPR = {"result": "0", "values": {"0": {"functionInvocationValue": {
    "functionName": "Collection", "arguments": {"features": {"arrayValue": {"values": [
        {"functionInvocationValue": {"functionName": "Feature", "arguments": {
            "metadata": {"constantValue": {"poi_id": "007", "a": 1, "b": 2}}}}}]}}}}}}}


@pytest.fixture
def served(tmp_path):
    emu = Emulator(exports=tmp_path / "exports")
    with running(emu) as url:
        yield emu, urlsplit(url).port, tmp_path


def _post(port: int, path: str, body: dict | bytes, headers: dict | None = None,
          host: str | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if host is not None:
        conn.putrequest("POST", path, skip_host=True)
        conn.putheader("Host", host)
    else:
        conn.putrequest("POST", path)
    for k, v in {**hdrs, "Content-Length": str(len(data))}.items():
        conn.putheader(k, v)
    conn.endheaders(data)
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"{}")
    conn.close()
    return out


def _export(port: int, dest: dict, rid: str | None = None, **extra) -> tuple[int, dict]:
    body = {"expression": EXPR, "description": "t", "requestId": rid or uuid.uuid4().hex,
            "fileExportOptions": {"fileFormat": "CSV", **dest}, **extra}
    return _post(port, "/v1/projects/p/table:export", body)


def _wait(emu: Emulator, name: str) -> dict:
    op_id = name.rsplit("/", 1)[1]
    for _ in range(300):
        op = emu.operations[op_id]
        if op["done"]:
            return op
        time.sleep(0.02)
    raise AssertionError("export did not finish")


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("dest", [
    {"cloudStorageDestination": {"bucket": "..", "filenamePrefix": "escaped"}},
    {"cloudStorageDestination": {"bucket": "b", "filenamePrefix": "../../escaped"}},
    {"cloudStorageDestination": {"bucket": "b", "filenamePrefix": "%2e%2e/%2e%2e/escaped"}},
    {"cloudStorageDestination": {"bucket": "b", "filenamePrefix": "/tmp/escaped"}},
    {"driveDestination": {"folder": "../..", "filenamePrefix": "escaped"}},
    {"driveDestination": {"folder": "%2E%2E", "filenamePrefix": "escaped"}},
])
def test_export_paths_that_escape_are_refused_and_write_nothing(served, dest) -> None:
    emu, port, tmp = served
    before = _files(tmp)
    status, body = _export(port, dest)
    assert status == 400 and body["error"]["message"].startswith("Invalid")
    assert emu.operations == {} and _files(tmp) == before


def test_symlinked_export_folder_is_not_followed(served) -> None:
    emu, port, tmp = served
    outside = tmp / "outside"
    outside.mkdir()
    (tmp / "exports" / "gcs").mkdir(parents=True)
    (tmp / "exports" / "gcs" / "b").symlink_to(outside)
    status, op = _export(port, {"cloudStorageDestination": {"bucket": "b",
                                                            "filenamePrefix": "x"}})
    assert status == 200 and _wait(emu, op["name"])["metadata"]["state"] == "FAILED"
    assert list(outside.iterdir()) == []


def test_selectors_and_drive_literal_names(served) -> None:
    emu, port, tmp = served
    _, op = _export(port, {"driveDestination": {"folder": "my/folder", "filenamePrefix": "a/b"}},
                    selectors=["poi_id", "b"])
    done = _wait(emu, op["name"])
    assert done["metadata"]["state"] == "SUCCEEDED", done
    path = tmp / "exports" / "drive" / "my%2Ffolder" / "a%2Fb.csv"
    assert path.read_text().splitlines() == ["poi_id,b", "007,2"]
    assert done["metadata"]["destinationUris"] == [path.as_uri()]


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_posts_must_be_json(served, ctype) -> None:
    emu, port, _ = served
    headers = {"Content-Type": ctype} if ctype else {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"expression": EXPR}).encode()
    conn.request("POST", "/v1/projects/p/value:compute", body, headers)
    resp = conn.getresponse()
    assert resp.status == 415 and b"application/json" in resp.read()
    assert not any(e["route"] == "value:compute" for e in emu.log)
    assert _post(port, "/v1/projects/p/value:compute", {"expression": EXPR},
                 {"Content-Type": "application/json; charset=utf-8"})[0] == 200


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1:1", "127.0.0.1", "",
                                  "localhost.evil.example:{port}"])
def test_foreign_host_is_refused(served, host) -> None:
    _emu, port, _ = served
    status, body = _post(port, "/v1/projects/p/value:compute", {"expression": EXPR},
                         host=host.format(port=port))
    assert status == 403 and "Host" in body["error"]["message"]
    assert _post(port, "/v1/projects/p/value:compute", {"expression": EXPR},
                 host=f"localhost:{port}")[0] == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1"])
def test_browser_origin_is_refused(served, origin) -> None:
    _emu, port, _ = served
    status, body = _post(port, "/v1/projects/p/value:compute", {"expression": EXPR},
                         {"Origin": origin})
    assert status == 403 and "Origin" in body["error"]["message"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/_emulator/log", headers={"Origin": origin})
    assert conn.getresponse().status == 403


def test_duplicate_request_id_modes(tmp_path) -> None:
    dest = {"cloudStorageDestination": {"bucket": "b", "filenamePrefix": "x"}}
    for mode in ("operation", "error"):
        emu = Emulator(exports=tmp_path / mode, duplicate_request_id=mode)
        with running(emu) as url:
            port = urlsplit(url).port
            first = _export(port, dest, rid="same-id")
            again = _export(port, dest, rid="same-id")
        assert first[0] == 200
        if mode == "operation":
            assert again == (200, again[1]) and again[1]["name"] == first[1]["name"]
        else:
            assert again[0] == 409 and again[1]["error"]["status"] == "ALREADY_EXISTS"
            assert first[1]["name"] in again[1]["error"]["message"]
        assert len(emu.operations) == 1


@pytest.mark.parametrize("prefix", ["/".join(["a"] * 2000), "x" * 1100, "/".join(["a"] * 33)])
def test_export_prefix_too_deep_or_too_long_is_refused_and_writes_nothing(served,
                                                                          prefix) -> None:
    """A 2,000-level prefix would be 2,000 folders on the emulator's disk: refused, as Cloud
    Storage refuses an object name over 1024 bytes, with one short message."""
    emu, port, tmp = served
    before = sorted(tmp.rglob("*"))
    for dest in ({"cloudStorageDestination": {"bucket": "b", "filenamePrefix": prefix}},
                 {"driveDestination": {"folder": prefix, "filenamePrefix": "x"}}):
        status, body = _export(port, dest)
        message = body["error"]["message"]
        assert status == 400 and message.startswith("Invalid") and len(message) < 300, message
    assert emu.operations == {} and sorted(tmp.rglob("*")) == before  # no file, no folder


def test_a_body_above_the_payload_limit_is_refused_unread(served) -> None:
    """The declared length decides: 413 before the body is read (a client claiming 1 GiB and
    sending nothing gets its answer at once), and a length that is no number is a 400."""
    from aether.testing.emulator.server import MAX_BODY_BYTES

    emu, port, _ = served
    for length, status in ((str(1 << 30), 413), (str(MAX_BODY_BYTES + 1), 413),
                           ("-5", 400), ("lots", 400)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.putrequest("POST", "/v1/projects/p/table:computeFeatures")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", length)
        conn.endheaders()  # no body follows
        t0 = time.monotonic()
        resp = conn.getresponse()
        got = json.loads(resp.read())
        conn.close()
        assert resp.status == status and time.monotonic() - t0 < 5, (length, got)
        assert "\n" not in got["error"]["message"]
    assert emu.operations == {}
    ok, _ = _post(port, "/v1/projects/p/table:computeFeatures", {"expression": EXPR})
    assert ok == 200  # the server still answers
