from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragfresh import pii
from ragfresh.chunking import Chunker
from ragfresh.embedding import Embedder
from ragfresh.parsing import parse_document
from ragfresh.pii import (
    PiiDetectorError,
    PiiSpan,
    detect_pii,
    detector_id,
    merge_spans,
    redact,
    to_original_offset,
)
from tests.conftest import BUNDLED

TEXT = (
    "Write to maria.okafor@northwind-bank.com or call (212) 555-0187. "
    "Card 4111 1111 1111 1111 was charged; IBAN GB82 WEST 1234 5698 7654 32; SSN 536-22-8712."
)


def found(text):
    return {(s.entity_type, text[s.start : s.end]) for s in detect_pii(text)}


def test_detects_planted_pii_types():
    assert found(TEXT) >= {
        ("EMAIL_ADDRESS", "maria.okafor@northwind-bank.com"),
        ("PHONE_NUMBER", "(212) 555-0187"),
        ("CREDIT_CARD", "4111 1111 1111 1111"),
        ("IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
        ("US_SSN", "536-22-8712"),
    }


@pytest.mark.parametrize(
    "text",
    [
        "A mistyped card 4111 1111 1111 1112 fails the Luhn check.",
        "A mistyped IBAN GB83 WEST 1234 5698 7654 32 fails its checksum.",
    ],
)
def test_checksums_reject_invalid_numbers(text):
    assert not {t for t, _ in found(text)} & {"CREDIT_CARD", "IBAN_CODE"}


def test_redaction_uses_typed_placeholders_and_maps_offsets_back():
    text = "Mail a.b@example.com now, or x.y@example.org."
    spans = detect_pii(text)
    assert [s.entity_type for s in spans] == ["EMAIL_ADDRESS", "EMAIL_ADDRESS"]
    redacted, replacements = redact(text, spans)
    assert redacted == "Mail <EMAIL_ADDRESS> now, or <EMAIL_ADDRESS>."
    assert to_original_offset(redacted.index(" now"), replacements) == text.index(" now")
    assert to_original_offset(redacted.index("<"), replacements) == text.index("a.b")
    assert to_original_offset(len(redacted), replacements) == len(text)


def test_overlapping_spans_merge_so_no_tail_stays_unredacted():
    text = "Write to maria.okafor@example.com today"
    email = PiiSpan("EMAIL_ADDRESS", 9, 33)
    url = PiiSpan("URL", 22, 39)  # overlaps the email's tail and runs past it
    inside = PiiSpan("PERSON", 9, 14)
    merged = merge_spans([url, inside, email])
    assert merged == [PiiSpan("EMAIL_ADDRESS", 9, 39)]
    assert redact(text, merged)[0] == "Write to <EMAIL_ADDRESS>"
    apart = [PiiSpan("PERSON", 0, 5), PiiSpan("PERSON", 5, 9)]  # touching is not overlapping
    assert merge_spans(apart) == apart


@pytest.mark.parametrize(
    ("doc_id", "name"),
    [
        ("compliance/sanctions-screening.md", "James Whitfield"),
        ("compliance/complaints-handling.md", "Maria Okafor"),
    ],
)
def test_names_in_the_bundled_policies_never_reach_the_embedded_text(doc_id, name):
    doc = parse_document(doc_id, (BUNDLED / doc_id).read_bytes())
    spans = detect_pii(doc.text)
    assert ("PERSON", name) in {(s.entity_type, doc.text[s.start : s.end]) for s in spans}
    chunks = Chunker.for_model(Embedder()).chunk(doc_id, doc.text, spans, "redact", doc.title)
    assert not any(name in c.embed_text or name in c.text for c in chunks)
    assert any("<PERSON>" in c.embed_text for c in chunks)


def test_an_ner_model_that_cannot_load_fails_closed(monkeypatch):
    monkeypatch.setattr(pii, "NER_MODEL", "no_such_ner_model")
    pii._analyzer.cache_clear()  # the session's analyzer was built with the real model
    with pytest.raises(PiiDetectorError, match="no_such_ner_model is not installed"):
        detector_id()
    with pytest.raises(PiiDetectorError, match=r"Can't find model.*pip install no_such_ner_model"):
        detect_pii("Call James Whitfield.")


DRAWN = st.lists(
    st.tuples(st.integers(0, 60), st.integers(1, 20), st.sampled_from(["PERSON", "US_SSN"]))
)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60), DRAWN)
def test_redaction_offsets_map_every_kept_character_back_to_itself(text, drawn):
    """Spans merged as `detect_pii` merges them cover what they covered, without overlap; out of
    its placeholders, the redacted text is the original's characters outside spans, in place."""
    raw = [PiiSpan(kind, s, min(s + n, len(text))) for s, n, kind in drawn if s < len(text)]
    spans = merge_spans(raw)
    covered = {i for s in raw for i in range(s.start, s.end)}
    assert {i for s in spans for i in range(s.start, s.end)} == covered
    assert all(a.end <= b.start for a, b in pairwise(spans))
    redacted, replacements = redact(text, spans)
    back = [to_original_offset(p, replacements) for p in range(len(redacted) + 1)]
    inside = {p for r in replacements for p in range(r.redacted_start, r.redacted_end)}
    kept = [p for p in range(len(redacted)) if p not in inside]
    assert [back[p] for p in kept] == sorted(set(range(len(text))) - covered)
    assert all(text[back[p]] == redacted[p] for p in kept)
    ends = [(back[r.redacted_start], back[r.redacted_end]) for r in replacements]
    assert ends == [(s.start, s.end) for s in spans] and back[-1] == len(text)
