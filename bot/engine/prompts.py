"""Pure text rules for expanded prompts: cleanup, blocklist, fitting into CLIP's 77-token window."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

_URL = re.compile(r"(?:https?://|www\.)[^\s,]+", re.IGNORECASE)
# Words with an inner dot (domains, file names, "artstation.com"); a trailing full stop is not inner.
_DOTTED_WORD = re.compile(r"[^\s,]*\w\.\w[^\s,]*")
_MJ_FLAG = re.compile(r"(?<!\S)--?[a-zA-Z][\w-]*(?:\s+(?!--)[\w.:/]+)?")
_WEIGHT_PAREN = re.compile(r"\(([^():]*):\s*-?\d+(?:\.\d+)?\)")
_DOUBLE_COLON_WEIGHT = re.compile(r"::\s*-?\d*(?:\.\d+)?")
_BRACKETS = re.compile(r"[\[\]{}()<>|\"*_#~^`\\]")
_REPEATED_PUNCT = re.compile(r"\s*([,;:.!?-])(?:\s*\1)+")
_MIXED_PUNCT = re.compile(r"\s*[,;]\s*(?:[,;.:]\s*)+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,;:.!?])")
_WHITESPACE = re.compile(r"\s+")
_DANGLING = re.compile(
    r"(?:[\s,:;\-–—/&+]+|(?:^|\s+)(?:by|and|of|with|in|the|a|an|at|for|on|to|from|or|featuring))+$",
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_prompt(text: str) -> str:
    """Apply the cleanup rules, in order, to one generated prompt."""
    text = _CONTROL.sub(" ", text.replace("\n", ", "))
    text = _URL.sub(" ", text)
    text = _MJ_FLAG.sub(" ", text)
    # Weights before dotted words: `forest::0.5` or `(castle:1.2)` would otherwise lose the word itself.
    text = _DOUBLE_COLON_WEIGHT.sub(" ", text)
    text = _WEIGHT_PAREN.sub(r"\1", text)
    text = _DOTTED_WORD.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _WHITESPACE.sub(" ", text)
    text = _MIXED_PUNCT.sub(", ", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    # Per phrase: a removed URL or dotted word can leave "trending on" in the middle, not only at the end.
    return dedupe_phrases(",".join(_trim_dangling(phrase.strip()) for phrase in text.split(",")))


def _trim_dangling(text: str) -> str:
    previous = None
    while previous != text:
        previous = text
        text = _DANGLING.sub("", text).strip()
    return text


def dedupe_phrases(text: str) -> str:
    """Drop repeated comma-separated phrases (case-insensitive), keeping the first."""
    seen: set[str] = set()
    kept: list[str] = []
    for phrase in text.split(","):
        phrase = phrase.strip()
        key = phrase.lower()
        if not phrase or key in seen:
            continue
        seen.add(key)
        kept.append(phrase)
    return ", ".join(kept)


def with_seed_prefix(seed: str, continuation: str) -> str:
    """Join the verbatim seed and a cleaned continuation."""
    continuation = continuation.strip().lstrip(",;: ").strip()
    if not continuation:
        return seed
    return f"{seed}, {continuation}"


def compile_blocklist(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    """Compile blocklist regexes case-insensitively."""
    return [re.compile(pattern, re.IGNORECASE) for pattern in patterns]


def is_blocked(prompt: str, blocklist: Sequence[re.Pattern[str]]) -> bool:
    """True when any blocklist regex matches the prompt."""
    return any(pattern.search(prompt) for pattern in blocklist)


def fit_to_token_window(prompt: str, count_tokens: Callable[[str], int], max_tokens: int, seed: str) -> str:
    """Cut the prompt at a comma boundary so it fits `max_tokens` (the seed always stays)."""
    if count_tokens(prompt) <= max_tokens:
        return prompt
    phrases = [p.strip() for p in prompt.split(",") if p.strip()]
    kept: list[str] = []
    for phrase in phrases:
        candidate = ", ".join([*kept, phrase])
        if count_tokens(candidate) > max_tokens:
            break
        kept.append(phrase)
    fitted = ", ".join(kept)
    if not fitted.startswith(seed) or count_tokens(fitted) > max_tokens:
        # The seed alone is too long or contains commas beyond the limit: fall back to word cuts.
        words = seed.split()
        while words and count_tokens(" ".join(words)) > max_tokens:
            words.pop()
        fitted = " ".join(words)
    return fitted
