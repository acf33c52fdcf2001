"""Store URLs: what `[dialog] store` accepts is what `open_store` reads."""

from __future__ import annotations

import pytest

from switchboard.config.values import parse_dialog_store
from switchboard.store import parse_store_url

GOOD = [("sqlite:/var/lib/d.sqlite", ("sqlite", "/var/lib/d.sqlite")),
        ("redis://127.0.0.1:6379/2", ("redis", "redis://127.0.0.1:6379/2")),
        ("redis://redis.example", ("redis", "redis://redis.example"))]
BAD = ["sqlite:", "redis://", "redis://h:port/0", "redis://h:6379/zero", "redis://h/0?x=1",
       "memcached://h", "plain"]


@pytest.mark.parametrize(("url", "parsed"), GOOD)
def test_good_urls(url: str, parsed: tuple[str, str]) -> None:
    assert parse_store_url(url) == parsed
    assert parse_dialog_store(url) == url


@pytest.mark.parametrize("url", BAD)
def test_bad_urls_are_refused_by_both(url: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_store_url(url)
    with pytest.raises(ValueError, match="expected"):
        parse_dialog_store(url)
