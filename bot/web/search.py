"""The search box's syntax: words, `-word`, `"a phrase"` and `key:value` filters (documented on the page)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime

# What a member can type, shown under the search box.
SYNTAX_HELP: tuple[tuple[str, str], ...] = (
    ("castle", "seed text, prompts, negative or seed contain the word"),
    ('"red castle"', "the phrase"),
    ("-night", "none of them contains the word"),
    ("aspect:16:9", "width:height (also square, portrait, landscape)"),
    ("action:upscale", "grid, upscale, vary, zoom, pan, remix, image (image prompt)"),
    ("status:failed", "done, failed, cancelled, queued, running"),
    ("liked", "only tiles you starred"),
    ("before:2026-12-01 after:2026-11-01", "made before / on or after a day (UTC)"),
    ("server:123456789", "one server, by id"),
)

ACTION_FILTERS = ("grid", "upscale", "vary", "zoom", "pan", "remix", "image")
STATUS_FILTERS = ("done", "failed", "cancelled", "queued", "running")
NAMED_ASPECTS = {"square": (1, 1), "portrait": (2, 3), "landscape": (3, 2)}
_WORD = re.compile(r"\w+", re.UNICODE)


class SearchSyntaxError(ValueError):
    """The query cannot be read; the message is shown above the results."""


@dataclass(frozen=True)
class SearchQuery:
    """A parsed search: full-text terms and filters (empty = everything)."""

    words: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    aspect: tuple[int, int] | None = None
    action: str | None = None
    status: str | None = None
    liked: bool = False
    before: float | None = None
    after: float | None = None
    server: int | None = None

    @property
    def has_text(self) -> bool:
        return bool(self.words or self.excluded)

    def match_expression(self, terms: tuple[str, ...]) -> str:
        """An FTS5 MATCH expression: every term quoted (so no FTS operator can be injected), all required."""
        return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _day(value: str, key: str) -> float:
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise SearchSyntaxError(f"`{key}:` needs a day like 2026-12-01, got {value!r}") from None
    return day.timestamp()


def parse_search(text: str) -> SearchQuery:
    """Read a query like `castle aspect:16:9 liked before:2026-12-01 -night`; SearchSyntaxError on a bad filter."""
    text = text.strip()[:300]
    try:
        parts = shlex.split(text)
    except ValueError:
        parts = text.replace('"', " ").split()
    words: list[str] = []
    excluded: list[str] = []
    values: dict[str, object] = {}
    for part in parts:
        key, sep, value = part.partition(":")
        key = key.lower()
        if part.lower() == "liked":
            values["liked"] = True
        elif sep and key == "aspect":
            if value.lower() in NAMED_ASPECTS:
                values["aspect"] = NAMED_ASPECTS[value.lower()]
            else:
                w, _, h = value.partition(":")
                if not (w.isdigit() and h.isdigit() and 0 < int(w) <= 100 and 0 < int(h) <= 100):
                    raise SearchSyntaxError(f"`aspect:` needs W:H like 16:9, got {value!r}")
                values["aspect"] = (int(w), int(h))
        elif sep and key == "action":
            if value.lower() not in ACTION_FILTERS:
                raise SearchSyntaxError(f"`action:` is one of {', '.join(ACTION_FILTERS)}, got {value!r}")
            values["action"] = value.lower()
        elif sep and key == "status":
            if value.lower() not in STATUS_FILTERS:
                raise SearchSyntaxError(f"`status:` is one of {', '.join(STATUS_FILTERS)}, got {value!r}")
            values["status"] = value.lower()
        elif sep and key == "before":
            values["before"] = _day(value, key)
        elif sep and key == "after":
            values["after"] = _day(value, key)
        elif sep and key == "server":
            if not value.isdigit():
                raise SearchSyntaxError(f"`server:` needs a server id (digits), got {value!r}")
            values["server"] = int(value)
        elif part.startswith("-") and len(part) > 1:
            excluded.extend(_WORD.findall(part[1:]))
        else:
            # A phrase stays one term; FTS5 tokenizes it into a phrase match.
            if _WORD.search(part):
                words.append(part)
    return SearchQuery(words=tuple(words), excluded=tuple(excluded), **values)  # type: ignore[arg-type]
