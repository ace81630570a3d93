"""Every way a real user logs in to Earth Engine reaches the server as a Bearer token.

The genuine earthengine-api and google-auth code run each login against the loopback
emulator; Google's token endpoint and the GCE metadata server are the loopback
``GooglePeer`` (their hosts are the only thing redirected). Any connection to a host that is
not this machine fails the test: nothing is refreshed over the network.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from google_peer import GooglePeer

from aether.embeddings.earthengine.session import EESettings
from aether.errors import EarthEngineError
from aether.execution.jobs import RetryPolicy


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Refuse (and record) every connection to a host that is not loopback."""
    attempts: list[Any] = []
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in (
                "127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test: no network ({address})")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


@pytest.fixture
def clean_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No login of the developer leaks in: a fresh HOME and gcloud config, no key file env,
    and a metadata address that says at once that this machine is no cloud VM."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with GooglePeer(vm=False) as not_a_vm:
        monkeypatch.setenv("GCE_METADATA_IP", not_a_vm.metadata_host)
        monkeypatch.setattr("google.auth.compute_engine._metadata._GCE_METADATA_HOST",
                            not_a_vm.metadata_host)
        yield home


@pytest.fixture
def peer():
    with GooglePeer() as p:
        yield p


@pytest.fixture
def recorded(emulator):
    """The emulator on loopback, recording each request's (path, Authorization header)."""
    from threading import Thread

    from aether.testing.emulator import serve

    server = serve(emulator)
    seen: list[tuple[str, str | None]] = []
    base = server.RequestHandlerClass

    class Recording(base):  # type: ignore[misc, valid-type]
        def parse_request(self) -> bool:
            ok = super().parse_request()
            if ok:
                seen.append((self.path, self.headers.get("Authorization")))
            return ok

    server.RequestHandlerClass = Recording
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
    import ee

    ee.Reset()


def _algorithms_calls(seen: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    return [(p, a) for p, a in seen if "/algorithms" in p]


def test_earthengine_credentials_file(clean_home, peer, recorded, no_network, monkeypatch):
    """`earthengine authenticate` (notebook/localhost modes): ~/.config/earthengine/credentials."""
    url, seen = recorded
    creds = clean_home / ".config" / "earthengine" / "credentials"
    creds.parent.mkdir(parents=True)
    creds.write_text(json.dumps({"refresh_token": "ee-file-rt", "project": "file-project"}))
    monkeypatch.setattr("ee.oauth.TOKEN_URI", peer.token_uri)
    EESettings(url).initialize()
    ((path, auth),) = _algorithms_calls(seen)
    assert "/projects/file-project/" in path  # the project stored with the login
    assert auth == "Bearer user-token-for-ee-file-rt"
    assert [g["grant_type"] for g in peer.grants] == ["refresh_token"]
    assert no_network == []


def test_gcloud_application_default_credentials(clean_home, peer, recorded, no_network,
                                                monkeypatch, tmp_path):
    """`earthengine authenticate` in gcloud mode, `gcloud auth application-default login`,
    Colab: only an ADC file (authorized_user) in the gcloud config, no EE credentials file."""
    url, seen = recorded
    adc = tmp_path / "gcloud" / "application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "cid.apps.example",
                               "client_secret": "cs", "refresh_token": "adc-rt",
                               "quota_project_id": "adc-project"}))
    assert not (clean_home / ".config" / "earthengine" / "credentials").exists()
    # google-auth always sends an authorized_user refresh to Google's token endpoint
    monkeypatch.setattr("google.oauth2.credentials._GOOGLE_OAUTH2_TOKEN_ENDPOINT",
                        peer.token_uri)
    EESettings(url).initialize()
    ((path, auth),) = _algorithms_calls(seen)
    assert "/projects/adc-project/" in path  # the ADC quota project
    assert auth == "Bearer user-token-for-adc-rt"
    assert [(g["grant_type"], g.get("refresh_token")) for g in peer.grants] == [
        ("refresh_token", "adc-rt")]
    assert no_network == []


def _key(path: Path, token_uri: str) -> Path:
    """A service-account JSON key (a fresh RSA key) whose token endpoint is the peer's."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "sa-project", "private_key_id": "k1",
        "private_key": pem, "client_email": "runner@sa-project.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": token_uri}))
    return path


def test_service_account_key_in_the_environment(clean_home, peer, recorded, no_network,
                                                monkeypatch, tmp_path):
    """GOOGLE_APPLICATION_CREDENTIALS naming a key, no --ee-project: the key's project_id."""
    url, seen = recorded
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS",
                       str(_key(tmp_path / "key.json", peer.token_uri)))
    EESettings(url).initialize()
    ((path, auth),) = _algorithms_calls(seen)
    assert "/projects/sa-project/" in path
    assert auth == "Bearer service-account-token"
    assert no_network == []


def test_service_account_key(clean_home, peer, recorded, no_network, tmp_path):
    """`--ee-credentials key.json`: the JWT-bearer grant at the key's token_uri."""
    url, seen = recorded
    key = _key(tmp_path / "key.json", peer.token_uri)
    EESettings(url, credentials=str(key)).initialize()
    ((path, auth),) = _algorithms_calls(seen)
    assert "/projects/sa-project/" in path
    assert auth == "Bearer service-account-token"
    assert [g["grant_type"] for g in peer.grants] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert no_network == []


def test_cloud_vm_metadata_server(clean_home, peer, recorded, no_network, monkeypatch):
    """Compute Engine, Cloud Run, Vertex: no file at all, the metadata server's token."""
    url, seen = recorded
    monkeypatch.setenv("GCE_METADATA_IP", peer.metadata_host)
    monkeypatch.setattr("google.auth.compute_engine._metadata._GCE_METADATA_HOST",
                        peer.metadata_host)
    EESettings(url, project="vm-ee-project").initialize()
    ((path, auth),) = _algorithms_calls(seen)
    assert "/projects/vm-ee-project/" in path
    assert auth == "Bearer vm-token"
    assert any(g["grant_type"] == "metadata" for g in peer.grants)
    assert no_network == []


def test_no_login_is_one_line_and_never_anonymous_off_loopback(clean_home, no_network):
    with pytest.raises(EarthEngineError) as err:
        EESettings("http://ee-mirror.example.org", project="p").initialize()
    msg = str(err.value)
    assert "no Earth Engine credentials found" in msg and "\n" not in msg
    assert "earthengine authenticate" in msg
    # refused before any request to the endpoint
    assert not any("ee-mirror" in str(a) for a in no_network)


def test_no_login_on_loopback_emulator_is_anonymous(clean_home, recorded, no_network):
    url, seen = recorded
    EESettings(url, project="demo").initialize()
    assert _algorithms_calls(seen) and all(a is None for _, a in seen)
    assert no_network == []


def test_a_login_whose_token_cannot_be_refreshed_says_what_was_found_and_what_failed(
        clean_home, no_network, monkeypatch):
    """A credentials file is there, but Google's token endpoint cannot be reached (offline):
    the one line names the login found and the refresh that failed, not "no credentials"."""
    creds = clean_home / ".config" / "earthengine" / "credentials"
    creds.parent.mkdir(parents=True)
    creds.write_text(json.dumps({"refresh_token": "ee-file-rt", "project": "file-project"}))
    monkeypatch.setattr("ee.oauth.TOKEN_URI", "https://oauth2.example.org/token")
    with pytest.raises(EarthEngineError) as err:
        EESettings("http://ee-mirror.example.org").initialize(RetryPolicy(attempts=1))
    msg = str(err.value)
    assert "\n" not in msg and "no Earth Engine credentials found" not in msg
    assert f"earthengine authenticate` login ({creds})" in msg
    assert "could not be refreshed" in msg and "oauth2.example.org" in msg
    assert not any("ee-mirror" in str(a) for a in no_network)  # and nothing else
