"""How member-typed text is shown: markdown and mentions inert, within Discord's limits."""

from __future__ import annotations

import re

import pytest

from bot.ui import shown

# An unescaped `[`…`](` is a live masked link in Discord.
LIVE_LINK = re.compile(r"(?<!\\)\[[^\]]*(?<!\\)\]\(")


def test_every_masked_link_is_escaped() -> None:
    # discord.utils.escape_markdown escapes only the first of two links on one line.
    text = "[a](https://x.example) and [b](https://y.example)"
    assert not LIVE_LINK.search(shown(text, 200))
    assert shown(text, 200) == r"\[a\](https://x.example) and \[b\](https://y.example)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**bold** _it_ `code` ~~s~~ ||spoiler||", r"\*\*bold\*\* \_it\_ \`code\` \~\~s\~\~ \|\|spoiler\|\|"),
        ("# heading", r"\# heading"),
        ("> quote", r"\> quote"),
        ("- item", r"\- item"),
        ("1. item", r"1\. item"),
        ("<@123> <#456>", r"\<@123\> \<\#456\>"),
        ("line one\nline two", "line one line two"),
        ("high-quality, 8k: castle", "high-quality, 8k: castle"),
    ],
)
def test_markdown_is_escaped(text: str, expected: str) -> None:
    assert shown(text, 200) == expected


def test_everyone_cannot_be_rendered_as_a_mention() -> None:
    assert "@everyone" not in shown("hi @everyone", 50)


def test_limit_holds_and_never_ends_on_half_an_escape() -> None:
    for limit in range(2, 40):
        out = shown("*" * 100, limit)
        assert len(out) <= limit and out.endswith("…")
        assert re.fullmatch(r"(\\\*)*", out.removesuffix("…")), out


@pytest.mark.parametrize("count", [1, 4, 5, 6, 9])
def test_result_view_fits_every_allowed_count_in_discords_rows(count: int) -> None:
    # IMAGINE_MAX_COUNT allows up to 9 images: U and V buttons wrap at Discord's 5 per row, 5 rows in all.
    from collections import Counter
    from dataclasses import replace

    from bot.store import Tile
    from bot.ui import result_view
    from tests.helpers import queued_record

    tiles = tuple(Tile(index, f"prompt {index}", index, None) for index in range(1, count + 1))
    job = replace(queued_record("abcdef0123", 1, 0.0), status="done", count=count, tiles=tiles)
    view = result_view(job)
    rows = Counter(item.row for item in view.children)
    assert max(rows.values()) <= 5 and max(rows) <= 4
    labels = [item.item.label for item in view.children]  # type: ignore[attr-defined]  # DynamicItem
    assert [f"U{i}" for i in range(1, count + 1)] == [label for label in labels if label and label[0] == "U"]
    assert [f"V{i}" for i in range(1, count + 1)] == [label for label in labels if label and label[0] == "V"]
