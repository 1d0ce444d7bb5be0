"""Detect PII with Presidio, offline, and redact it into typed placeholders."""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from importlib.util import find_spec

log = logging.getLogger(__name__)

NER_ENTITIES = ("PERSON",)
NER_MODEL = "en_core_web_sm"
PHONE_REGIONS = ("US", "GB")
# Presidio's confidence floor: bare 9-digit SSN-like patterns score 0.05 and need context words
# ("SSN", "social security") to pass; checksum-validated cards and IBANs score 1.0.
SCORE_THRESHOLD = 0.3
RECOGNIZERS_VERSION = "2"  # bumped when recognizers or how spans combine change: all rescanned


@dataclass(frozen=True)
class PiiSpan:
    entity_type: str
    start: int
    end: int


def _has_ner_model() -> bool:
    """Whether the spaCy NER model is installed (found without importing spaCy)."""
    return find_spec(NER_MODEL) is not None


@cache
def _analyzer():  # -> presidio_analyzer.AnalyzerEngine, imported lazily: it is slow to import
    """Pattern recognizers with checksums; spaCy NER only when its model is already installed."""
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        PhoneRecognizer,
        SpacyRecognizer,
        UsSsnRecognizer,
    )

    offline_domains = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's email check, with the bundled public-suffix list instead of a download."""

        def validate_result(self, pattern_text: str) -> bool:
            return offline_domains(pattern_text).fqdn != ""

    has_ner = _has_ner_model()

    @spacy.Language.component("ragfresh_lowercase_lemmas")
    def lowercase_lemmas(doc):
        """Presidio matches context words ("SSN", "card") on lemmas; a blank pipeline has none."""
        for token in doc:
            token.lemma_ = token.lower_
        return doc

    class OfflineSpacyEngine(SpacyNlpEngine):
        """Never downloads: the installed NER model, or a blank tokenizer-only pipeline."""

        def load(self) -> None:
            if has_ner:  # NER only: the parser's memory grows with document length
                nlp = spacy.load(NER_MODEL, exclude=["parser", "senter"])
            else:
                nlp = spacy.blank("en")
                nlp.add_pipe("ragfresh_lowercase_lemmas")
            nlp.max_length = 50_000_000  # long policies are fine: no parser runs on them
            self.nlp = {"en": nlp}

    engine = OfflineSpacyEngine(models=[{"lang_code": "en", "model_name": NER_MODEL}])
    engine.load()
    recognizers = [
        OfflineEmailRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        PhoneRecognizer(supported_regions=PHONE_REGIONS),
    ]
    if has_ner:
        recognizers.append(SpacyRecognizer(supported_entities=list(NER_ENTITIES)))
    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
    log.info("PII detection: pattern recognizers%s", f" and {NER_MODEL} NER" if has_ner else "")
    registry = RecognizerRegistry(recognizers=recognizers)
    return AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])


def detector_id() -> str:
    """Names the detector configuration: when it changes, stored documents are scanned again."""
    presidio_version = version("presidio-analyzer")
    ner = f"+{NER_MODEL}" if _has_ner_model() else ""
    regions = "-".join(PHONE_REGIONS)
    return f"presidio-{presidio_version}/r{RECOGNIZERS_VERSION}/{regions}/{SCORE_THRESHOLD}{ner}"


def detect_pii(text: str) -> list[PiiSpan]:
    """PII spans in text order, overlapping ones merged (see `merge_spans`)."""
    results = _analyzer().analyze(text=text, language="en", score_threshold=SCORE_THRESHOLD)
    return merge_spans([PiiSpan(r.entity_type, r.start, r.end) for r in results])


def merge_spans(spans: list[PiiSpan]) -> list[PiiSpan]:
    """Spans in text order where overlapping ones become one covering both, typed by the one
    that starts first (then the longer): no placeholder cuts another, no tail stays raw."""
    merged: list[PiiSpan] = []
    for span in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = PiiSpan(last.entity_type, last.start, max(last.end, span.end))
        else:
            merged.append(span)
    return merged


@dataclass(frozen=True)
class Replacement:
    """Where a placeholder stands in redacted text and what it replaced in the original."""

    redacted_start: int
    redacted_end: int
    original_start: int
    original_end: int


def redact(text: str, spans: list[PiiSpan]) -> tuple[str, list[Replacement]]:
    """Replace each span by a typed placeholder such as `<EMAIL_ADDRESS>`."""
    parts: list[str] = []
    replacements: list[Replacement] = []
    cursor = length = 0
    for span in spans:
        parts.append(text[cursor : span.start])
        length += span.start - cursor
        placeholder = f"<{span.entity_type}>"
        parts.append(placeholder)
        replacements.append(Replacement(length, length + len(placeholder), span.start, span.end))
        length += len(placeholder)
        cursor = span.end
    parts.append(text[cursor:])
    return "".join(parts), replacements


def to_original_offset(pos: int, replacements: list[Replacement]) -> int:
    """Map a position in redacted text to the original; inside a placeholder, to its start."""
    index = bisect.bisect_right([r.redacted_start for r in replacements], pos) - 1
    if index < 0:
        return pos
    r = replacements[index]
    if pos < r.redacted_end:
        return r.original_start
    return r.original_end + (pos - r.redacted_end)
