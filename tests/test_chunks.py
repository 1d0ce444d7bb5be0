"""`policy_chunks` follows the current documents, even when two refreshes are started at once."""

import threading
from contextlib import contextmanager

from policyfresh.index import chunking, chunks
from policyfresh.index.chunking import SPLITTERS_KEPT, Chunker
from policyfresh.index.chunks import read_chunks, refresh_chunks
from policyfresh.index.embedding import Embedder
from policyfresh.ingest.documents import ingest_documents
from tests.conftest import SMALL, HashEmbedder

FEES = "retail/overdraft-fees.md"


def test_a_refresh_started_while_another_writes_waits_and_never_replaces_newer_chunks(
    small_settings, monkeypatch
):
    """The two cannot overlap: the second refresh, started while the first holds version 1
    chunked but unwritten, reads the documents only once the first has written and let go of
    the writer lock; had it read them before, one of the two merges would drop the other's
    chunks of documents it did not see change."""
    ingest_documents(small_settings, "v1")
    chunker = Chunker.for_model(HashEmbedder())
    steps: list[str] = []
    first_paused, first_may_go, second_asked = (threading.Event() for _ in range(3))
    read_documents, validate, writer_lock = (
        chunks.read_documents,
        chunks.failing_documents,
        chunks.writer_lock,
    )

    def reading(settings):
        steps.append(f"{threading.current_thread().name} reads the documents")
        return read_documents(settings)

    def pausing(stale, new_chunks):
        """The first refresh waits between chunking version 1 and merging it."""
        if threading.current_thread().name == "first":
            first_paused.set()
            assert first_may_go.wait(timeout=300)
        return validate(stale, new_chunks)

    @contextmanager
    def locking(settings, table):
        name = threading.current_thread().name
        steps.append(f"{name} asks for the lock")
        if name == "second":
            second_asked.set()
        with writer_lock(settings, table):
            yield
        steps.append(f"{name} let go of the lock")

    monkeypatch.setattr(chunks, "read_documents", reading)
    monkeypatch.setattr(chunks, "failing_documents", pausing)
    monkeypatch.setattr(chunks, "writer_lock", locking)
    results: dict[str, chunks.ChunkResult] = {}
    errors: list[BaseException] = []

    def refresh(run_id: str) -> None:
        try:
            results[run_id] = refresh_chunks(small_settings, chunker, run_id)
        except BaseException as exc:  # raised again below, in the test's own thread
            errors.append(exc)
            first_paused.set()

    first = threading.Thread(target=refresh, args=("first",), name="first")
    first.start()
    assert first_paused.wait(timeout=300) and not errors
    path = small_settings.policies / FEES
    path.write_text(path.read_text() + "\nFrom 1 March the daily fee is 3 pounds.\n")
    ingest_documents(small_settings, "v2")
    second = threading.Thread(target=refresh, args=("second",), name="second")
    second.start()
    assert second_asked.wait(timeout=300)
    first_may_go.set()
    for thread in (first, second):
        thread.join(timeout=300)
        assert not thread.is_alive()
    if errors:
        raise errors[0]

    assert steps == [
        "first asks for the lock",
        "first reads the documents",
        "second asks for the lock",
        "first let go of the lock",
        "second reads the documents",
        "second let go of the lock",
    ]
    assert results["first"].documents_rechunked == len(SMALL)  # version 1 of every document
    assert results["second"].documents_rechunked == 1  # the edit, not the first's work again
    current = read_chunks(small_settings).select("doc_id", "doc_version").unique()
    assert dict(current.iter_rows()) == {doc_id: 2 if doc_id == FEES else 1 for doc_id in SMALL}


def test_documents_are_split_in_order_of_capacity_so_each_splitter_is_built_once(
    settings, monkeypatch
):
    """A chunker keeps only SPLITTERS_KEPT splitters (each a copy of the tokenizer); the refresh
    splits documents in order of the capacity their headers leave, so none is built twice."""
    ingest_documents(settings, "v1")
    built: list[int] = []
    splitter = chunking.MarkdownSplitter

    class Counted:
        @staticmethod
        def from_huggingface_tokenizer(tokenizer, capacity):
            built.append(capacity)
            return splitter.from_huggingface_tokenizer(tokenizer, capacity)

    monkeypatch.setattr(chunking, "MarkdownSplitter", Counted)
    chunker = Chunker.for_model(Embedder())
    refresh_chunks(settings, chunker, "v1")
    assert len(set(built)) > SPLITTERS_KEPT  # more capacities than splitters kept
    assert sorted(built) == sorted(set(built))
    assert len(chunker._splitters) <= SPLITTERS_KEPT
