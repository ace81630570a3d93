"""The test suite's own guard: an optional dependency skips locally, fails in CI."""

from __future__ import annotations

import json

import pytest
import support


def test_require_imports_skips_or_fails_where_ci_says(monkeypatch) -> None:
    assert support.require("json") is json
    monkeypatch.setattr(support, "REQUIRE_EXTRAS", False)
    with pytest.raises(pytest.skip.Exception, match="needs aether_no_such_module"):
        support.require("aether_no_such_module")
    monkeypatch.setattr(support, "REQUIRE_EXTRAS", True)
    with pytest.raises(pytest.fail.Exception, match="AETHER_REQUIRE_EXTRAS is set"):
        support.require("aether_no_such_module")
