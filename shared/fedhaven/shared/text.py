"""Text a site controls (its name, its refusal reasons) made safe wherever fedhaven shows it, and free of paths."""

from __future__ import annotations

import re

#: Control characters (C0, DEL, C1), line and paragraph separators, and the bidirectional overrides that make
#: a terminal or an editor show something other than what is there.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+!|~-])")
#: An absolute path, or a home-relative one, in a sentence.
_PATH = re.compile(r"(?<![\w.:/-])~?/(?:[\w.@%+=,-]+/)*([\w.@%+=,-]+)/?")


def printable(text: str, *, limit: int = 400) -> str:
    """`text` on one line with every control character written as an escape (`\\x1b`, `\\u202e`), at most `limit`
    characters: what a terminal shows is what the site sent, and nothing it sent moves the cursor or recolours."""
    out = _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    return out if len(out) <= limit else out[: limit - 3] + "..."


def markdown(text: str, *, limit: int = 400) -> str:
    """`printable(text)` with Markdown's special characters escaped: a table cell or list item shows it as text."""
    return _MARKDOWN.sub(r"\\\1", printable(text, limit=limit))


def without_paths(text: str) -> str:
    """`text` with every absolute path reduced to its last part (`…/privacy-ledger.jsonl`): what a site sends to the
    coordinator says what is wrong without describing the site's file system."""
    return _PATH.sub(lambda m: f"…/{m.group(1)}", text)
