"""Split a document into structure-aware chunks that fit the model, with offsets and headings."""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from dataclasses import dataclass

from semantic_text_splitter import MarkdownSplitter
from tokenizers import Tokenizer

from ragfresh.embedding import Embedder
from ragfresh.parsing import HEADING
from ragfresh.pii import PiiSpan, redact, to_original_offset

CHUNKER_VERSION = "1"
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
    token_count: int
    pii_types: list[str]
    pii_action: str


def chunk_id(doc_id: str, text: str, occurrence: int) -> str:
    """Text-addressed: the same text at the same repeat in the same document keeps its id."""
    return hashlib.sha256(f"{doc_id}\x00{occurrence}\x00{text}".encode()).hexdigest()[:32]


def _heading_paths(text: str) -> tuple[list[int], list[str]]:
    """For each markdown heading, its position and the ' > ' path of headings above it."""
    positions, paths, stack = [], [], []
    for match in HEADING.finditer(text):
        level = len(match.group(1))
        stack = [(lvl, title) for lvl, title in stack if lvl < level] + [(level, match.group(2))]
        positions.append(match.start())
        paths.append(" > ".join(title for _, title in stack))
    return positions, paths


class Chunker:
    """Markdown-aware splitting measured in the model's own tokens, special tokens included."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, model_id: str) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.capacity = max_tokens - len(tokenizer.encode("").ids)
        self._splitters: dict[int, MarkdownSplitter] = {}
        self.chunker_id = f"md-{CHUNKER_VERSION}/{model_id}/{max_tokens}"

    @classmethod
    def for_model(cls, embedder: Embedder) -> Chunker:
        """A chunker sized and counted by the embedding model's own tokenizer."""
        return cls(embedder.tokenizer(), embedder.max_tokens, embedder.model_id)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def pieces(self, text: str, capacity: int) -> list[tuple[int, str, int]]:
        """(offset, text, tokens) pieces; one over the limit is split again with less capacity."""
        if capacity < 16:
            raise ValueError(f"cannot fit text into {self.max_tokens} tokens: {text[:60]!r}")
        if capacity not in self._splitters:  # building one copies the tokenizer: slow
            self._splitters[capacity] = MarkdownSplitter.from_huggingface_tokenizer(
                self.tokenizer, capacity
            )
        splitter = self._splitters[capacity]
        pieces: list[tuple[int, str, int]] = []
        for start, piece in splitter.chunk_indices(text):
            tokens = self.count_tokens(piece)
            if tokens <= self.max_tokens:
                pieces.append((start, piece, tokens))
            else:
                pieces += [(start + o, p, n) for o, p, n in self.pieces(piece, capacity - 8)]
        return pieces

    def chunk(self, doc_id: str, text: str, spans: list[PiiSpan], pii_action: str) -> list[Chunk]:
        """Chunks of one document; PII redacted (or the chunk blocked, or allowed) by rule."""
        working, replacements = (text, []) if pii_action == "allow" else redact(text, spans)
        positions, paths = _heading_paths(working)
        seen: Counter[str] = Counter()
        chunks = []
        for index, (start, piece, tokens) in enumerate(self.pieces(working, self.capacity)):
            end = start + len(piece)
            char_start = to_original_offset(start, replacements)
            char_end = to_original_offset(end, replacements)
            inside = [s for s in spans if s.start < char_end and s.end > char_start]
            action = _OUTCOME[pii_action] if inside else "none"
            heading_index = bisect.bisect_right(positions, start) - 1
            occurrence = seen[piece]
            seen[piece] += 1
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(doc_id, piece, occurrence),
                    chunk_index=index,
                    heading=paths[heading_index] if heading_index >= 0 else "",
                    char_start=char_start,
                    char_end=char_end,
                    text=None if action == "blocked" else piece,
                    token_count=tokens,
                    pii_types=sorted({s.entity_type for s in inside}),
                    pii_action=action,
                )
            )
        return chunks
