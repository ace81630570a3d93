"""City slugs (issue #25): one folder per exact name. A printable name keeps its plain slug
(what data directories already hold); a name the plain slug would lose information from gets
a short hash of its exact text."""

from __future__ import annotations

import pytest

from aether.errors import InputError
from aether.places.place import SLUG_MAX, slugify
from aether.settings import check_slug


@pytest.mark.parametrize(("name", "slug"), [
    ("Helsinki", "helsinki"), ("New York", "new-york"), ("Malmö", "malmo"),
    ("São Paulo", "sao-paulo"), ("helsinki-centre", "helsinki-centre"),
])
def test_clean_names_keep_their_plain_slug(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_lossy_names_never_share_a_folder() -> None:
    names = ["a b c 31m", "a\x01b\nc\x1b[31m", "a\x02b\nc\x1b[31m", "x" * 81, "x" * 80 + "y",
             "x" * 200, "東京", "大阪", "a\u200bb", "ab"]
    slugs = [slugify(n) for n in names]
    assert len(set(slugs)) == len(names), slugs
    assert slugs[0] == "a-b-c-31m"  # printable: unchanged
    for s in slugs:
        assert check_slug(s) == s and len(s) <= SLUG_MAX
    assert slugify("x" * 81).startswith("x" * 70)
    assert slugify("a\x01b\nc\x1b[31m") == slugify("a\x01b\nc\x1b[31m")  # stable


def test_path_like_names_are_still_refused() -> None:
    for bad in ("../etc", "a/b", "..", "a\x00b"):
        with pytest.raises(InputError, match="looks like a path"):
            slugify(bad)
