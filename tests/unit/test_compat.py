"""aether._compat: every private dependency API aether uses exists, is version-checked, and
whatever it changes is put back."""

from __future__ import annotations

import importlib
import re
import threading
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from aether import _compat
from aether._compat import PRIVATE_SYMBOLS, TESTED
from aether.errors import DependencyError

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.mark.parametrize("symbol", sorted(PRIVATE_SYMBOLS))
def test_private_symbol_exists_in_the_installed_release(symbol: str) -> None:
    """Fails naming the symbol when a new release removes it."""
    module_name, _, attr = symbol.rpartition(".")
    module = importlib.import_module(module_name)
    dist = PRIVATE_SYMBOLS[symbol]
    assert hasattr(module, attr), f"{dist} {version(dist)} no longer has {symbol}"
    assert callable(_compat.private(symbol))


def test_a_removed_symbol_is_a_one_line_error_naming_it(monkeypatch) -> None:
    monkeypatch.setitem(PRIVATE_SYMBOLS, "ee.deprecation._GoneInTheNextRelease",
                        "earthengine-api")
    with pytest.raises(DependencyError) as err:
        _compat.private("ee.deprecation._GoneInTheNextRelease")
    assert "ee.deprecation._GoneInTheNextRelease" in str(err.value)
    assert "\n" not in str(err.value)


def test_an_untested_major_is_refused(monkeypatch) -> None:
    monkeypatch.setitem(TESTED, "osmnx", str(int(version("osmnx").split(".")[0]) + 1))
    with pytest.raises(DependencyError, match=r"osmnx .* is not a tested release"):
        _compat.private("osmnx._nominatim._download_nominatim_element")


def test_upper_bounds_in_pyproject_are_the_tested_majors() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    specs = {re.split(r"[<>=\[]", s, maxsplit=1)[0]: s for s in extras["ee"] + extras["osm"]}
    expected = {"earthengine-api": "<2", "xee": "<0.2", "osmnx": "<3"}
    assert set(TESTED) == set(expected)
    for dist, series in TESTED.items():
        assert expected[dist] in specs[dist].split(","), f"{dist}: {specs[dist]}"
        assert f"<{_compat.upper_bound(series)}" == expected[dist]
        assert version(dist).startswith(f"{series}.")  # the tested release is installed
    assert any(s.startswith("gcsfs") for s in extras["ee"])  # gs:// exports read back


def test_gcs_urls_have_a_filesystem() -> None:
    import fsspec

    assert fsspec.get_filesystem_class("gs").__module__.startswith("gcsfs")


def test_catalog_fetch_is_restored() -> None:
    import ee.deprecation

    before = ee.deprecation._FetchDataCatalogStac
    with _compat.no_catalog_fetch():
        assert ee.deprecation._FetchDataCatalogStac() == {}
    assert ee.deprecation._FetchDataCatalogStac is before


def test_retries_are_switched_off_only_while_used_and_restored() -> None:
    import ee

    state = ee._state.get_state
    ee.data.setMaxRetries(3)  # the notebook user's own choice
    try:
        inside: list[int] = []
        gate = threading.Barrier(4)

        def work() -> None:
            with _compat.ee_retries_off():
                gate.wait()  # all four inside at once
                inside.append(state().max_retries)
                gate.wait()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert inside == [0, 0, 0, 0]
        assert state().max_retries == 3
        with pytest.raises(RuntimeError), _compat.ee_retries_off():
            raise RuntimeError("a failed request")
        assert state().max_retries == 3
    finally:
        ee.data.setMaxRetries(5)
