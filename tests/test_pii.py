from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyfresh.index.chunking import Chunker
from policyfresh.index.embedding import Embedder
from policyfresh.ingest import pii
from policyfresh.ingest.parsing import parse_document
from policyfresh.ingest.pii import (
    PiiDetectorError,
    PiiSpan,
    detect,
    detect_pii,
    detector_id,
    merge_spans,
    redact,
    to_original_offset,
)
from policyfresh.ingest.pii_allow import parse_allow_list
from policyfresh.quality.pipeline import refresh
from tests.conftest import BUNDLED, keep_only

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
    pii._models.cache_clear()  # the session's analyzer was built with the real model
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


PEOPLE_AND_POLICY_WORDS = """| Name | Role |
|---|---|
| Siobhán Ní Bhriain | Complaints Lead |
| Jean-Luc Moreau-Lefèvre | Branch manager |

Escalations go to Dr. Oluwaseun Adeyemi, or to Ms. Nguyen Thi Lan in her absence.

Example: "Customer Ludwig van der Berg asked to close the account."

Signed,
Priya Raghunathan
Chief Compliance Officer

Grace period: 15 days. Press release dates are set by Marketing.
"""


def test_names_from_many_cultures_are_redacted_and_the_same_words_in_policy_text_are_not():
    """A table, prose with honorifics, an example and a signature; hyphens, particles, accents."""
    redacted = redact(PEOPLE_AND_POLICY_WORDS, detect_pii(PEOPLE_AND_POLICY_WORDS))[0]
    for name in ["Siobhán", "Bhriain", "Jean-Luc", "Lefèvre", "Oluwaseun", "Adeyemi", "Nguyen",
                 "Ludwig", "Berg", "Priya", "Raghunathan"]:  # fmt: skip
        assert name not in redacted
    assert "| <PERSON> | Complaints Lead |" in redacted and "Dr. <PERSON>," in redacted
    assert "Customer <PERSON> asked" in redacted and "Signed,\n<PERSON>\n" in redacted
    assert "Grace period: 15 days. Press release dates are set by Marketing." in redacted


def test_placeholders_never_land_inside_links_urls_or_code():
    text = (
        'Use [Slack](https://slack.com/help) or [Zoom]({% page "/zoom/" %}); write to '
        "[Maria Okafor](mailto:maria.okafor@bank.com) or see [José García](https://ex.com/jose) "
        "and `Jane Doe` in the template."
    )
    redacted = redact(text, detect_pii(text))[0]
    assert redacted == (
        'Use [Slack](https://slack.com/help) or [Zoom]({% page "/zoom/" %}); write to '
        "<PERSON> or see [<PERSON>](https://ex.com/jose) and `Jane Doe` in the template."
    )


def test_a_role_address_is_served_and_a_persons_address_in_the_same_text_is_not():
    text = (
        "Notices go to legal-support@github.com or privacy-office@bank.com. The Privacy Lead, "
        "Maria Okafor (maria.okafor@bank.com), answers within 5 days; jdoe@bank.com is hers too."
    )
    assert {v for t, v in found(text) if t == "EMAIL_ADDRESS"} == {
        "maria.okafor@bank.com",
        "jdoe@bank.com",
    }


def test_the_bundled_policies_lose_no_policy_word_to_a_person_placeholder():
    names = set()
    for path in sorted(p for p in BUNDLED.rglob("*") if p.is_file() and not p.name.isupper()):
        doc = parse_document(path.relative_to(BUNDLED).as_posix(), path.read_bytes())
        names |= {
            doc.text[s.start : s.end] for s in detect_pii(doc.text) if s.entity_type == "PERSON"
        }
    assert names == {"Maria Okafor", "J. Alvarez", "James Whitfield", "Daniel Reyes"}
    fees = parse_document(
        "retail/overdraft-fees.md", (BUNDLED / "retail/overdraft-fees.md").read_bytes()
    )
    assert (
        "| Extended overdraft fee | $0 | Discontinued; no daily"
        in redact(fees.text, detect_pii(fees.text))[0]
    )


def test_the_allow_list_keeps_its_terms_counts_them_and_names_the_detector():
    allow, errors = parse_allow_list(
        "# trademarks\nOctocat  # GitHub's mascot\n/Mona ?Lisa/\n/bad(/\n\n"
    )
    assert [e.written for e in allow.entries] == ["Octocat", "/Mona ?Lisa/"]
    assert errors == ["line 4: invalid pattern (missing ), unterminated subpattern)"]
    text = "Ask the Octocat, Mona Lisa and Dr. Octavia Okonkwo."
    detection = detect(text, allow)
    assert redact(text, detection.spans)[0] == "Ask the Octocat, Mona Lisa and Dr. <PERSON>."
    assert detector_id(allow) != detector_id() and detector_id(allow).startswith(detector_id())


STAFF_LIST_AND_PLACES = """Guild leads:

          Ines Halvorsen - 18F<br />
          Ysmerai Quodlin - 18F
        <td>Greg Holt & Priya Natarajan</td>

This video class is led by Will Fraser. In 1970, President Nixon's plan began.
Take the Blue line from the Ronald Reagan Washington
National Airport, read the Buddy Handbook, or walk to the Van Buren stops.
"""


def test_names_alone_in_cells_are_redacted_and_places_named_after_people_are_not():
    """A staff list (a rare name on a line shaped like a listed name's), a table cell, a role
    word and a title before a surname; an airport, a handbook and a stop keep their names."""
    redacted = redact(STAFF_LIST_AND_PLACES, detect_pii(STAFF_LIST_AND_PLACES))[0]
    assert redacted == (
        "Guild leads:\n\n          <PERSON> - 18F<br />\n          <PERSON> - 18F\n"
        "        <td><PERSON> & <PERSON></td>\n\n"
        "This video class is led by <PERSON>. In 1970, President <PERSON>'s plan began.\n"
        "Take the Blue line from the Ronald Reagan Washington\nNational Airport, read the Buddy "
        "Handbook, or walk to the Van Buren stops.\n"
    )


def test_a_title_before_a_surname_common_as_a_word_names_it_there_and_after():
    """A census surname that is also a common word ("Clinton") is a name after "President",
    and the same name is redacted where it stands alone."""
    text = (
        "President Clinton announced the gift of a search engine from entrepreneur\n"
        "Eric Brewer. Clinton called for us to use it.\n"
    )
    assert redact(text, detect_pii(text))[0] == (
        "President <PERSON> announced the gift of a search engine from entrepreneur\n"
        "<PERSON>. <PERSON> called for us to use it.\n"
    )


def test_a_rare_run_on_a_line_shaped_like_no_listed_name_is_not_taken_for_one():
    """No word of "Ysmerai Quodlin" is in a name list: only a staff list vouches for it."""
    text = "Ask at the desk.\n\n          Ysmerai Quodlin - 18F\n"
    assert not detect_pii(text)


def test_an_allow_list_edit_re_embeds_only_the_chunks_it_changes_and_the_run_counts_them(
    settings, corpus, embedder
):
    keep_only(corpus, ["hr/annual-leave.md"])
    (corpus / "gifts.md").write_text("# Gifts\n\nStaff may give a fee refund to Marie Curie.\n")
    refresh(settings, embedder, "r1")
    (corpus / "PII_ALLOW").write_text("Marie Curie\n")
    result = refresh(settings, embedder, "r2")
    assert result["documents"]["changed"] == 2  # both rescanned: the detector's id moved
    assert result["chunks"]["rescan_changed"] == 1 and result["vectors"]["embedded"] == 1
