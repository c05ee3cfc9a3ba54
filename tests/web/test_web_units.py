"""The gallery's pure parts: `next=` checking, the search syntax."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.web.auth import safe_next
from bot.web.search import SearchSyntaxError, parse_search


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/job/abc?x=1", "/job/abc?x=1"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/\tevil", "/"),
        ("", "/"),
    ],
)
def test_safe_next(given: str, expected: str) -> None:
    assert safe_next(given) == expected


def test_search_syntax() -> None:
    query = parse_search(
        'castle aspect:16:9 liked before:2026-12-01 -night "red roof" action:upscale status:done'
    )
    assert query.words == ("castle", "red roof")
    assert query.excluded == ("night",)
    assert query.aspect == (16, 9) and query.liked and query.action == "upscale" and query.status == "done"
    assert query.before == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert parse_search("aspect:portrait server:42").aspect == (2, 3)
    assert parse_search("server:42").server == 42
    # FTS5 operators typed by a member are quoted terms, not syntax.
    assert parse_search('castle OR "x" NEAR(a b)').match_expression(("NEAR(a",)) == '"NEAR(a"'


@pytest.mark.parametrize(
    "bad", ["aspect:wide", "before:tomorrow", "action:dance", "status:lost", "server:me"]
)
def test_search_syntax_errors(bad: str) -> None:
    with pytest.raises(SearchSyntaxError):
        parse_search(bad)
