import pytest

from ragfresh.pii import PiiSpan, detect_pii, merge_spans, redact, to_original_offset

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
