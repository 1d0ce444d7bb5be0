"""The passage inside a retrieved chunk that answers, found at query time: each candidate's
sentences (or lines) are scored by the question's words they hold, weighted by how rare each
word is among the candidates. No model and no index: it lifts the chunk whose one sentence
answers over chunks that are on the topic throughout, for the cost of reading the candidates'
text."""

from __future__ import annotations

import math
import re
from functools import lru_cache

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\[*(\"“])|\n+")  # a sentence's end, or a line's
WORD = re.compile(r"[a-z0-9]+")
TERMS_KEPT = 2**15  # stored texts whose terms are kept (half of an evaluation's are repeats)
STEM = 6  # words compared by their first letters: "escalated" and "escalation" match
# Words that say nothing of what a question is about.
STOPWORDS = frozenset({
    "a", "an", "and", "any", "are", "as", "at", "be", "by", "can", "could", "do", "does", "did",
    "for", "from", "get", "got", "has", "have", "how", "i", "if", "in", "is", "it", "its", "me",
    "my", "of", "on", "or", "our", "should", "the", "their", "there", "this", "to", "was", "we",
    "what", "when", "where", "which", "who", "whom", "why", "will", "with", "would", "you",
    "your",
})  # fmt: skip


def terms(text: str) -> frozenset[str]:
    """The words of a text that say what it is about, lower-cased, a plural's "s" dropped and
    cut to STEM letters."""
    words = (w for w in WORD.findall(text.lower()) if len(w) > 1 and w not in STOPWORDS)
    return frozenset((w[:-1] if w.endswith("s") and len(w) > 3 else w)[:STEM] for w in words)


# The terms of stored texts (chunks, their sentences and headings), kept: the same candidates come
# back for many questions. A question's own terms are never kept.
stored_terms = lru_cache(maxsize=TERMS_KEPT)(terms)


def chunk_terms(row: dict) -> frozenset[str]:
    """The terms of a stored chunk's heading and text."""
    return stored_terms(row["heading"] or "") | stored_terms(row["text"] or "")


def sentences(text: str) -> list[str]:
    """The sentences (or lines, for lists and tables) of a text."""
    cuts = [0, *(i for m in SENTENCE_END.finditer(text) for i in m.span()), len(text)]
    return [text[a:b] for a, b in zip(cuts[::2], cuts[1::2], strict=True) if text[a:b].strip()]


def with_passages(question: str, rows: list[dict]) -> list[dict]:
    """The rows, each with `_passage` in [0, 1]: the weighted share of the question's words that
    its best sentence (with the chunk's heading) holds. A word's weight is its inverse document
    frequency among these rows, so the words that tell the candidates apart count most."""
    asked = terms(question)
    held = [chunk_terms(r) for r in rows]
    weight = {t: math.log((len(rows) + 1) / (0.5 + sum(t in h for h in held))) for t in asked}
    total = sum(weight.values())
    scored = []
    for row, its_terms in zip(rows, held, strict=True):
        best = 0.0
        if total and asked & its_terms:
            heading = stored_terms(row["heading"] or "")
            best = max(
                sum(weight[t] for t in asked & (stored_terms(w) | heading)) / total
                for w in sentences(row["text"] or "")
            )
        scored.append(row | {"_passage": best})
    return scored
