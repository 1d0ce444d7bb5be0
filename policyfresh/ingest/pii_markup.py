"""Where in a markdown document a placeholder may stand: not in a URL, link target, HTML tag,
code span or template tag, so that redacted text stays valid markdown with working links."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import cached_property

# Syntax whose inside is never rewritten piecemeal: a link's target (group `target`), an
# autolink, a bare URL, an HTML tag or comment, a code span, a Liquid/Jinja tag.
_PROTECTED = re.compile(
    r"""
      (?P<link>!?\[(?:[^\[\]\n]|\[[^\[\]\n]*\])*\]\((?P<target>[^()\s]*(?:\([^()\s]*\)[^()\s]*)*
                (?:\s+"[^"\n]*")?)\))
    | (?P<refdef>^[ ]{0,3}\[[^\]\n]+\]:[ \t]*\S+)
    | (?P<autolink><(?:[a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*|[^\s<>@]+@[^\s<>@]+)>)
    | (?P<url>(?:https?|ftp)://[^\s<>()\[\]"'`]+|www\.[^\s<>()\[\]"'`]+)
    | (?P<comment><!--.*?-->)
    | (?P<tag></?[a-zA-Z][a-zA-Z0-9-]*(?:\s[^<>]*)?/?>)
    | (?P<code>(?P<ticks>`+)(?:(?!(?P=ticks)).)+?(?P=ticks))
    | (?P<template>\{%.*?%\}|\{\{.*?\}\})
    """,
    re.VERBOSE | re.MULTILINE | re.DOTALL,
)
KINDS = ("refdef", "autolink", "url", "comment", "tag", "code", "template")
_TABLE_DELIMITER = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")


@dataclass(frozen=True)
class Region:
    """A piece of syntax: `start:end` is all of it, `inner_start:inner_end` the part that is
    text a reader sees (a link's text) and may hold a placeholder; empty for the rest."""

    kind: str
    start: int
    end: int
    inner_start: int
    inner_end: int


def _region(match: re.Match[str]) -> Region:
    start, end = match.span()
    if match["link"] is not None:  # its text, between `[` (or `![`) and the `]` before `(`
        text_start = start + 1 + (match[0][0] == "!")
        return Region("link", start, end, text_start, match.start("target") - 2)
    kind = next(k for k in KINDS if match[k] is not None)
    return Region(kind, start, end, start, start)


class Markup:
    """The protected regions of one text, in order, and its structural lines."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.regions = [_region(m) for m in _PROTECTED.finditer(text)]
        self._starts = [r.start for r in self.regions]

    def overlapping(self, start: int, end: int) -> list[Region]:
        """The regions a span overlaps (regions do not overlap each other: ends ascend too)."""
        index = bisect.bisect_left(self._starts, end) - 1
        found = []
        while index >= 0 and self.regions[index].end > start:
            found.append(self.regions[index])
            index -= 1
        return found[::-1]

    def in_syntax(self, start: int, end: int) -> bool:
        """True if any of `start:end` is syntax, not text a reader sees (a link's text is)."""
        return any(
            not (r.inner_start <= start and end <= r.inner_end)
            for r in self.overlapping(start, end)
        )

    @cached_property
    def _line_starts(self) -> list[int]:
        return [0, *(m.end() for m in re.finditer(r"\n", self.text))]

    def line_of(self, pos: int) -> tuple[int, int]:
        """Start and end of the line holding `pos`."""
        index = bisect.bisect_right(self._line_starts, pos) - 1
        start = self._line_starts[index]
        end = self.text.find("\n", start)
        return start, len(self.text) if end < 0 else end

    def is_structural(self, pos: int) -> bool:
        """True on a heading line or a table's header row (the row above its `|---|` line)."""
        start, end = self.line_of(pos)
        if _HEADING.match(self.text[start:end]):
            return True
        after = self.text.find("\n", end + 1)
        following = self.text[end + 1 : len(self.text) if after < 0 else after]
        return "|" in self.text[start:end] and bool(_TABLE_DELIMITER.match(following))
