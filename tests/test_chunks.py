"""`policy_chunks` follows the current documents, even when two refreshes overlap."""

import threading

from ragfresh import chunks
from ragfresh.chunking import Chunker
from ragfresh.chunks import read_chunks, refresh_chunks
from ragfresh.documents import ingest_documents
from tests.conftest import HashEmbedder

FEES = "retail/overdraft-fees.md"


def test_an_overlapping_refresh_never_replaces_newer_chunks_with_older_ones(
    small_settings, monkeypatch
):
    ingest_documents(small_settings, "v1")
    chunker = Chunker.for_model(HashEmbedder())
    path = small_settings.policies / FEES
    first_done_chunking = threading.Event()
    second_finished = threading.Event()
    validate = chunks.failing_documents

    def slow_first_writer(stale, new_chunks):
        """The first refresh pauses between chunking version 1 and merging it."""
        if threading.current_thread().name == "first":
            first_done_chunking.set()
            second_finished.wait(timeout=2)
        return validate(stale, new_chunks)

    monkeypatch.setattr(chunks, "failing_documents", slow_first_writer)
    first = threading.Thread(
        target=refresh_chunks, args=(small_settings, chunker, "first"), name="first"
    )
    first.start()
    assert first_done_chunking.wait(timeout=60)
    path.write_text(path.read_text() + "\nFrom 1 March the daily fee is 3 pounds.\n")
    ingest_documents(small_settings, "v2")
    second = threading.Thread(
        target=lambda: (refresh_chunks(small_settings, chunker, "second"), second_finished.set())
    )
    second.start()
    first.join(timeout=120)
    second.join(timeout=120)

    versions = set(read_chunks(small_settings).filter(doc_id=FEES)["doc_version"])
    assert versions == {2}
