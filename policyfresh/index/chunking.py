"""Split a document into structure-aware chunks that fit the model, with offsets and headings."""

from __future__ import annotations

import bisect
import functools
import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from semantic_text_splitter import MarkdownSplitter
from tokenizers import Tokenizer

from policyfresh.index.embedding import Embedder
from policyfresh.ingest.parsing import headings
from policyfresh.ingest.pii import (
    PiiSpan,
    Replacement,
    detect_pii,
    redact,
    to_original_offset,
)
from policyfresh.ingest.pii_allow import NO_ALLOW, AllowList

CHUNKER_VERSION = "4"
PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)>")  # what `policyfresh.ingest.pii.redact` writes
HEADER_TOKENS = 48  # the most a chunk's context header (title, headings) may take of the limit
# Splitters kept, the most recently used: each holds a copy of the tokenizer (6 MB, 20 ms to
# build), and the 18F handbook needs 42 capacities (257 MB when all were kept).
SPLITTERS_KEPT = 4
_OUTCOME = {"redact": "redacted", "block": "blocked", "allow": "allowed"}


@dataclass(frozen=True)
class Chunk:
    """A piece of one document version: its text as stored for retrieval and where it came from."""

    chunk_id: str
    chunk_index: int
    heading: str
    char_start: int
    char_end: int
    text: str | None
    embed_text: str | None
    token_count: int
    pii_types: list[str]
    pii_action: str


@dataclass(frozen=True)
class Layout:
    """A document ready to split: its working (redacted) text and how to map offsets back,
    where each heading starts, its path and context header, and the capacity left by the
    longest header. Splitting documents in order of capacity keeps few splitters alive."""

    doc_id: str
    spans: list[PiiSpan]
    pii_action: str
    working: str
    replacements: list[Replacement]
    positions: list[int]
    paths: list[str]
    headers: list[str]
    base: str
    capacity: int


def chunk_id(doc_id: str, text: str, occurrence: int) -> str:
    """Text-addressed: the same text at the same repeat in the same document keeps its id."""
    return hashlib.sha256(f"{doc_id}\x00{occurrence}\x00{text}".encode()).hexdigest()[:32]


def context_header(title: str, heading: str) -> str:
    """The document title and the heading path, which a chunk's own text often leaves out
    ("the fee is $29" says nothing of overdrafts); a heading path that starts with the title
    does not repeat it."""
    if not heading or not title:
        return heading or title
    return heading if heading.startswith(title) else f"{title} > {heading}"


def _heading_paths(text: str) -> tuple[list[int], list[str]]:
    """For each markdown heading, its position and the ' > ' path of headings above it."""
    positions, paths, stack = [], [], []
    for heading in headings(text):
        stack = [(lvl, title) for lvl, title in stack if lvl < heading.level]
        stack.append((heading.level, heading.title))
        positions.append(heading.start)
        paths.append(" > ".join(title for _, title in stack))
    return positions, paths


class Chunker:
    """Markdown-aware splitting measured in the model's own tokens, special tokens included."""

    def __init__(
        self, tokenizer: Tokenizer, max_tokens: int, model_id: str, context: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.capacity = max_tokens - len(tokenizer.encode("").ids)
        self.context = context
        self._splitters: dict[int, MarkdownSplitter] = {}  # least recently used first
        headers = "" if context else "/bare"
        self.chunker_id = f"md-{CHUNKER_VERSION}{headers}/{model_id}/{max_tokens}"

    @classmethod
    def for_model(cls, embedder: Embedder) -> Chunker:
        """A chunker sized and counted by the embedding model's own tokenizer."""
        return cls(embedder.tokenizer(), embedder.max_tokens, embedder.model_id)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def pieces(
        self, text: str, capacity: int, measure: Callable[[int, str], int] | None = None
    ) -> list[tuple[int, str, int]]:
        """(offset, text, tokens) pieces, tokens as `measure(offset, piece)` counts what will be
        embedded; a piece over the limit is split again with less capacity."""
        if capacity < 16:
            raise ValueError(f"cannot fit text into {self.max_tokens} tokens: {text[:60]!r}")
        measure = measure or (lambda _, piece: self.count_tokens(piece))
        pieces: list[tuple[int, str, int]] = []
        for start, end in _cut_outside_placeholders(self._splitter(capacity), text):
            piece = text[start:end]
            tokens = measure(start, piece)
            if tokens <= self.max_tokens:
                pieces.append((start, piece, tokens))
            else:
                inner = functools.partial(_shifted, measure, start)
                pieces += [(start + o, p, n) for o, p, n in self.pieces(piece, capacity - 8, inner)]
        return pieces

    def _splitter(self, capacity: int) -> MarkdownSplitter:
        splitter = self._splitters.pop(capacity, None)
        if splitter is None:
            splitter = MarkdownSplitter.from_huggingface_tokenizer(self.tokenizer, capacity)
        self._splitters[capacity] = splitter
        while len(self._splitters) > SPLITTERS_KEPT:
            del self._splitters[next(iter(self._splitters))]
        return splitter

    def _clip(self, header: str) -> str:
        """A header cut to HEADER_TOKENS tokens (special tokens included)."""
        encoding = self.tokenizer.encode(header, add_special_tokens=False)
        if len(encoding.ids) <= HEADER_TOKENS - 2:
            return header
        return header[: encoding.offsets[HEADER_TOKENS - 3][1]]

    def chunk(
        self,
        doc_id: str,
        text: str,
        spans: list[PiiSpan],
        pii_action: str,
        title: str = "",
        allow: AllowList = NO_ALLOW,
    ) -> list[Chunk]:
        """Chunks of one document; PII redacted (or the chunk blocked, or allowed) by rule. What
        is embedded is the chunk's context header, then its text, within the model's limit.
        `spans` were detected in the text with the allow list `allow`; the title (often front
        matter, not in the text) is detected with the same list, so both keep the same terms."""
        return self.split(self.layout(doc_id, text, spans, pii_action, title, allow))

    def layout(
        self,
        doc_id: str,
        text: str,
        spans: list[PiiSpan],
        pii_action: str,
        title: str = "",
        allow: AllowList = NO_ALLOW,
    ) -> Layout:
        """The first half of `chunk`: the document redacted, its headers and its capacity."""
        working, replacements = (text, []) if pii_action == "allow" else redact(text, spans)
        if title and pii_action != "allow":
            title = redact(title, detect_pii(title, allow))[0]
        positions, paths = _heading_paths(working)
        headers = [self._clip(context_header(title, p)) if self.context else "" for p in paths]
        base = self._clip(title) if self.context else ""
        budget = max((self.count_tokens(h) for h in [*headers, base] if h), default=0)
        return Layout(
            doc_id, spans, pii_action, working, replacements, positions, paths, headers, base,
            self.capacity - budget,
        )  # fmt: skip

    def split(self, layout: Layout) -> list[Chunk]:
        """The second half of `chunk`: the laid-out document cut into chunks."""
        positions, paths = layout.positions, layout.paths

        def embedded(start: int, piece: str) -> str:
            index = bisect.bisect_right(positions, start) - 1
            header = layout.headers[index] if index >= 0 else layout.base
            return f"{header}\n\n{piece}" if header else piece

        def measure(start: int, piece: str) -> int:
            return self.count_tokens(embedded(start, piece))

        seen: Counter[str] = Counter()
        chunks = []
        pieces = self.pieces(layout.working, layout.capacity, measure)
        for index, (start, piece, tokens) in enumerate(pieces):
            end = start + len(piece)
            char_start = to_original_offset(start, layout.replacements)
            char_end = to_original_offset(end, layout.replacements)
            inside = [s for s in layout.spans if s.start < char_end and s.end > char_start]
            action = _OUTCOME[layout.pii_action] if inside else "none"
            heading_index = bisect.bisect_right(positions, start) - 1
            occurrence = seen[piece]
            seen[piece] += 1
            blocked = action == "blocked"
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(layout.doc_id, piece, occurrence),
                    chunk_index=index,
                    heading=paths[heading_index] if heading_index >= 0 else "",
                    char_start=char_start,
                    char_end=char_end,
                    text=None if blocked else piece,
                    embed_text=None if blocked else embedded(start, piece),
                    token_count=tokens,
                    pii_types=sorted({s.entity_type for s in inside}),
                    pii_action=action,
                )
            )
        return chunks


def _placeholders_whole(text: str) -> str:
    """The text as the splitter sees it: each `<TYPE>` placeholder turned into one word of
    the same length (`_TYPE_`), since `<` is a word of its own and a boundary could fall after
    it; offsets are unchanged, so pieces are cut from the real text."""
    return PLACEHOLDER.sub(lambda m: f"_{m.group(1)}_", text)


def _cut_outside_placeholders(splitter: MarkdownSplitter, text: str) -> list[tuple[int, int]]:
    """(start, end) of the splitter's pieces. A word over the limit is cut between any two
    characters, so a boundary that falls inside a placeholder is moved past its end."""
    past = {i: m.end() for m in PLACEHOLDER.finditer(text) for i in range(m.start() + 1, m.end())}
    bounds = []
    for start, piece in splitter.chunk_indices(_placeholders_whole(text)):
        end = past.get(start + len(piece), start + len(piece))
        if start in past:  # a space may follow the placeholder: the splitter would trim it
            start = end - len(text[past[start] : end].lstrip())
        if start < end:
            bounds.append((start, end))
    return bounds


def _shifted(measure: Callable[[int, str], int], offset: int, start: int, piece: str) -> int:
    """`measure` for a piece of a piece: offsets relative to the outer one."""
    return measure(offset + start, piece)
