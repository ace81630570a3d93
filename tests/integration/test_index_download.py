"""A remote AEF index downloaded through faults (issue #25 item 1): a transfer cut short is
never cached, so the next run downloads it whole; a damaged copy already in the cache is
deleted and fetched again. The server is a real HTTP server on loopback (http.server in a
thread) that serves the sample city's index and misbehaves as told."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

ETAG = '"index-v1"'


class IndexServer:
    """Serves ``body`` at ``/aef_index.parquet`` with an ETag (304 on a match); each entry of
    ``faults`` spoils one response in turn: ``cut`` announces the full length and closes the
    connection halfway, ``short`` announces and sends half the body (a proxy that lost it)."""

    def __init__(self, body: bytes) -> None:
        self.body, self.faults, self.seen = body, [], []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append((self.path, self.headers.get("If-None-Match")))
                if self.path != "/aef_index.parquet":
                    self.send_error(404)
                    return
                fault = outer.faults.pop(0) if outer.faults else None
                if fault is None and self.headers.get("If-None-Match") == ETAG:
                    self.send_response(304)
                    self.send_header("ETag", ETAG)
                    self.end_headers()
                    return
                half = outer.body[: len(outer.body) // 2]
                self.send_response(200)
                self.send_header("ETag", ETAG)
                self.send_header("Content-Length",
                                 str(len(half) if fault == "short" else len(outer.body)))
                self.end_headers()
                self.wfile.write(half if fault else outer.body)
                if fault:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/aef_index.parquet"

    def __enter__(self) -> IndexServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(sample_city, tmp_path: Path) -> Iterator[tuple[IndexServer, Path]]:
    """The sample index (tile paths made absolute, so only the index travels over HTTP)
    behind an IndexServer, and a CSV of a few sample POIs."""
    import geopandas as gpd
    import pyarrow.parquet as pq

    tiles = Path(sample_city.tiles)
    index = gpd.read_parquet(tiles / "aef_index.parquet")
    index["path"] = [str((tiles / p).resolve()) for p in index["path"]]
    index.to_parquet(tmp_path / "index.parquet")
    body = (tmp_path / "index.parquet").read_bytes()
    assert pq.read_metadata(tmp_path / "index.parquet").num_rows == len(index)
    x0, y0, x1, y1 = sample_city.place.boundary.bounds
    pd.DataFrame({"name": ["a", "b"], "category": ["cafe", "bar"],
                  "lon": [x0 + (x1 - x0) * 0.4, x0 + (x1 - x0) * 0.6],
                  "lat": [y0 + (y1 - y0) * 0.4, y0 + (y1 - y0) * 0.6]}
                 ).to_csv(tmp_path / "pois.csv", index=False)
    with IndexServer(body) as server:
        yield server, tmp_path


def _extract(cli, server: IndexServer, root: Path, data: str = "data"):
    return cli("extract", "--pois", str(root / "pois.csv"), "--no-geocode", "--source", "cog",
               "--tiles", server.url, "--radius", "100", "--data-dir", str(root / data),
               env={"AETHER_CACHE_DIR": str(root / "cache")}, timeout=300)


def _one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("aether: error: "), r.stderr
    return lines[0]


def _cached(root: Path) -> list[str]:
    cache = root / "cache"
    return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


@pytest.mark.parametrize(("fault", "says"), [
    ("cut", "nothing was cached"),
    ("short", "is incomplete (no Parquet magic bytes at its start and end); nothing was cached"),
])
def test_a_cut_download_is_never_cached_and_the_next_run_succeeds(served, cli, fault,
                                                                   says) -> None:
    server, root = served
    server.faults = [fault]
    line = _one_line(_extract(cli, server, root))
    assert server.url in line and says in line, line
    assert _cached(root) == []  # no body, no ETag, no temp file
    assert not (root / "data").exists() or not any((root / "data").rglob("*.parquet"))
    r = _extract(cli, server, root)  # the server is healthy again
    assert r.returncode == 0, r.stderr
    assert [h for _, h in server.seen] == [None, None]  # no ETag was kept to revalidate
    assert len(_cached(root)) == 2
    assert len(pd.read_parquet(next((root / "data").rglob("poi_embeddings.parquet")))) == 2


def test_a_damaged_cached_copy_is_deleted_and_fetched_again(served, cli) -> None:
    """What an older aether left: half the index cached with the server's ETag (so the
    server answers 304 to it)."""
    server, root = served
    assert _extract(cli, server, root).returncode == 0
    (body,) = (root / "cache").rglob("*.parquet")
    body.write_bytes(server.body[: len(server.body) // 2])
    server.seen.clear()
    r = _extract(cli, server, root, "data2")
    assert r.returncode == 0, r.stderr
    assert "is damaged" in r.stderr and str(body) in r.stderr
    assert server.seen == [("/aef_index.parquet", None)]  # fetched whole, not revalidated
    assert body.read_bytes() == server.body
