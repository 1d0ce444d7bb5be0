import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyfresh.index.chunking import SPLITTERS_KEPT, Chunker
from policyfresh.ingest.documents import read_documents
from policyfresh.ingest.parsing import parse_document
from policyfresh.ingest.pii import PiiSpan, detect_pii, merge_spans, redact
from policyfresh.ingest.pii_allow import parse_allow_list
from tests.conftest import BUNDLED, HANDBOOK


@pytest.fixture(scope="module")
def chunker():
    from policyfresh.index.embedding import Embedder

    return Chunker.for_model(Embedder())


def test_no_chunk_exceeds_the_model_limit_on_the_whole_18f_handbook(
    chunker, embedder, handbook_ingested
):
    model_tokenizer = embedder.load().tokenizer  # what sentence-transformers itself feeds BERT
    documents = read_documents(handbook_ingested[0])
    assert documents.height == 246
    texts = []
    for doc in documents.iter_rows(named=True):
        spans = [PiiSpan(**s) for s in doc["pii_spans"]]
        chunks = chunker.chunk(doc["doc_id"], doc["text"], spans, "redact", doc["title"])
        texts += [c.embed_text for c in chunks]  # what the model reads: headers included
        assert all(c.token_count <= chunker.max_tokens == 256 for c in chunks)
    counted = model_tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    assert len(texts) > 2000
    assert max(len(ids) for ids in counted) <= embedder.load().max_seq_length == 256
    assert len(chunker._splitters) <= SPLITTERS_KEPT  # each holds a copy of the tokenizer


def test_offsets_point_into_the_document_text(chunker):
    for page in sorted((HANDBOOK / "pages").rglob("*.md"))[:60]:
        doc = parse_document(page.name, page.read_bytes())
        for c in chunker.chunk(page.name, doc.text, [], "redact"):
            assert doc.text[c.char_start : c.char_end] == c.text


def test_a_piece_over_the_limit_is_split_again(chunker):
    text = " ".join(f"word{i} policy clause" for i in range(400))
    pieces = chunker.pieces(text, capacity=chunker.max_tokens)  # ignores [CLS]/[SEP]: too big
    assert len(pieces) > 2
    assert all(chunker.count_tokens(p) == n <= chunker.max_tokens for _, p, n in pieces)
    assert all(text[s : s + len(p)] == p for s, p, _ in pieces)


def test_chunks_carry_heading_paths_and_keep_tables_whole():
    from policyfresh.index.embedding import Embedder

    small = Chunker(Embedder().tokenizer(), 64, "test")
    text = (
        "# Fees\n\nIntro paragraph about fees.\n\n## Overdraft\n\n"
        + "Overdraft rules apply to checking accounts. " * 6
        + "\n\n## Schedule\n\n| Fee | Amount |\n| --- | --- |\n| Item | $29 |\n| Daily | $0 |\n"
    )
    chunks = small.chunk("fees.md", text, [], "redact")
    headings = {c.heading for c in chunks}
    assert {"Fees > Overdraft", "Fees > Schedule"} <= headings
    table = next(c for c in chunks if "| Item | $29 |" in c.text)
    assert "| Daily | $0 |" in table.text and table.heading == "Fees > Schedule"


def test_unchanged_text_keeps_its_chunk_id_when_the_document_changes_elsewhere(chunker):
    doc = parse_document("x.md", (BUNDLED / "retail" / "overdraft-fees.md").read_bytes())
    before = chunker.chunk("retail/overdraft-fees.md", doc.text, [], "redact")
    edited = doc.text.replace("$29 per item", "$32 per item")
    after = chunker.chunk("retail/overdraft-fees.md", edited, [], "redact")
    changed = {c.chunk_id for c in after} - {c.chunk_id for c in before}
    assert len(changed) == 1
    assert len(after) == len(before)
    assert "$32 per item" in next(c.text for c in after if c.chunk_id in changed)


@pytest.mark.parametrize(
    ("action", "expected_text", "outcome"),
    [
        ("redact", "<EMAIL_ADDRESS>", "redacted"),
        ("allow", "maria.okafor@northwind-bank.com", "allowed"),
        ("block", None, "blocked"),
    ],
)
def test_pii_gate_redacts_blocks_or_allows_by_rule(chunker, action, expected_text, outcome):
    text = "# Contacts\n\nEscalate to maria.okafor@northwind-bank.com within two days.\n"
    spans = detect_pii(text)
    [chunk] = chunker.chunk("c.md", text, spans, action)
    assert chunk.pii_action == outcome and chunk.pii_types == ["EMAIL_ADDRESS"]
    if expected_text is None:
        assert chunk.text is None
    else:
        assert expected_text in chunk.text
    assert (chunk.char_start, chunk.char_end) == (0, len(text.strip()))


def test_the_embedded_text_carries_title_and_headings_the_served_text_does_not(chunker):
    text = "## Fee Schedule\n\nThe item fee is $29.\n"
    [chunk] = chunker.chunk("fees.md", text, [], "redact", "Overdraft Fees")
    assert chunk.text == "## Fee Schedule\n\nThe item fee is $29."
    assert chunk.embed_text == "Overdraft Fees > Fee Schedule\n\n" + chunk.text
    assert chunk.token_count == chunker.count_tokens(chunk.embed_text)
    [same] = chunker.chunk("fees.md", "# Overdraft Fees\n\nText.", [], "redact", "Overdraft Fees")
    assert same.embed_text.startswith("Overdraft Fees\n\n# Overdraft Fees")  # not repeated


def test_pii_in_a_title_is_redacted_in_the_embedded_text(chunker):
    title = "Escalations to maria.okafor@northwind-bank.com"
    [chunk] = chunker.chunk("x.md", "Call the lead.", [], "redact", title)
    assert "maria.okafor" not in chunk.embed_text and "<EMAIL_ADDRESS>" in chunk.embed_text


def test_a_title_is_redacted_with_the_allow_list_its_text_was_scanned_with(chunker):
    """One path for text and title: a term the allow list keeps in the text stays in the
    title; without the list, the same title loses it."""
    allow = parse_allow_list("Marie Curie\n")[0]
    text, title = "Refunds may go to Marie Curie.", "Gifts to Marie Curie"
    spans = detect_pii(text, allow)
    [kept] = chunker.chunk("gifts.md", text, spans, "redact", title, allow)
    assert kept.embed_text == f"{title}\n\n{text}"
    [redacted] = chunker.chunk("gifts.md", text, spans, "redact", title)
    assert redacted.embed_text.startswith("Gifts to <PERSON>\n\n")


def test_a_long_heading_path_is_clipped_and_chunks_still_fit(chunker):
    heading = " ".join(f"word{i}" for i in range(120))
    text = f"# {heading}\n\n" + "Policy clause text. " * 400
    chunks = chunker.chunk("long.md", text, [], "redact", "Title")
    assert all(c.token_count <= chunker.max_tokens for c in chunks)
    assert all(chunker.count_tokens(c.embed_text) == c.token_count for c in chunks)


def test_a_placeholder_is_never_cut_in_two(embedder):
    """Splitting falls back to words, and `<` is a word of its own: a boundary used to land
    between `Mail <` and `EMAIL_ADDRESS> now`."""
    bare = Chunker(embedder.tokenizer(), embedder.max_tokens, embedder.model_id, context=False)
    for words in range(195, 215):  # moves the email across where a chunk must end
        text = "alpha " * words + "Mail a.b@example.com now please " + "beta " * 300
        start = text.index("a.b@")
        spans = [PiiSpan("EMAIL_ADDRESS", start, start + len("a.b@example.com"))]
        chunks = bare.chunk("d.md", text, spans, "redact")
        pieces = [c.text for c in chunks]
        assert sum(p.count("<EMAIL_ADDRESS>") for p in pieces) == 1, (words, pieces)
        assert all(p.count("EMAIL_ADDRESS") == p.count("<EMAIL_ADDRESS>") for p in pieces)
        assert all(c.token_count <= embedder.max_tokens for c in chunks)


FRAGMENTS = st.one_of(
    st.sampled_from(
        [
            "\r\n",
            "\n\n",
            " ",
            "\t",
            "\u00a0",
            "# Fees\n",
            "## Overdraft ##\r\n",
            "- item\n",
            "| a | b |\n|---|---|\n",
            "e\u0301",
            "\u0301\u0302",
            "👩\u200d👩\u200d👧",
            "🇫🇷",
            "中文",
            "<",
            ">",
            "<EMAIL_ADDRESS>",
            "a.b@example.com",
            "```\ncode\n```\n",
        ]
    ),
    st.text(max_size=10),
    st.text(alphabet="abcdefghij", min_size=30, max_size=300),  # words longer than the limit
)


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, list[PiiSpan]]:
    """Random text and PII spans drawn over it, merged as `detect_pii` merges them."""
    text = "".join(draw(st.lists(FRAGMENTS, max_size=30)))
    kinds = st.sampled_from(["PERSON", "EMAIL_ADDRESS", "US_SSN"])
    drawn = draw(st.lists(st.tuples(st.integers(0, len(text)), st.integers(1, 40), kinds)))
    spans = [PiiSpan(kind, s, min(s + n, len(text))) for s, n, kind in drawn if s < len(text)]
    return text, merge_spans(spans)


@pytest.fixture(scope="module")
def small_chunker():
    """Headers on and a small limit: short texts make many chunks, and long words must be cut."""
    from policyfresh.index.embedding import Embedder

    return Chunker(Embedder().tokenizer(), 96, "test")


@settings(max_examples=80, deadline=None)
@given(documents(), st.sampled_from(["redact", "block", "allow"]))
@example(("Ann" + "xq" * 46, [PiiSpan("PERSON", 0, 3)]), "redact")  # a word over the limit
def test_every_chunk_is_exactly_its_slice_of_the_original_text(small_chunker, document, action):
    """A chunk stands for text[char_start:char_end]: its text is that slice with each PII span
    in it replaced by its placeholder (the slice itself when allowed). Each span lies whole in
    one chunk, so no placeholder is cut and no character of a span reaches any chunk's text.
    Chunks come in order, never overlap, and only whitespace lies outside them."""
    text, spans = document
    chunks = small_chunker.chunk("d.md", text, spans, action)
    assert bool(chunks) == bool((text if action == "allow" else redact(text, spans)[0]).strip())
    end = 0
    for chunk in chunks:
        assert end <= chunk.char_start < chunk.char_end
        assert not text[end : chunk.char_start].strip()
        start, end = chunk.char_start, chunk.char_end
        inside = [s for s in spans if s.start < end and s.end > start]
        if action != "allow":
            assert all(start <= s.start and s.end <= end for s in inside)
        if action == "block" and inside:
            assert chunk.text is chunk.embed_text is None
            continue
        shifted = [PiiSpan(s.entity_type, s.start - start, s.end - start) for s in inside]
        original = text[start:end]
        assert chunk.text == (original if action == "allow" else redact(original, shifted)[0])
        assert chunk.embed_text.endswith(chunk.text)
        assert (
            chunk.token_count
            == small_chunker.count_tokens(chunk.embed_text)
            <= small_chunker.max_tokens
        )
    assert not text[end:].strip()
