"""Invariants 1-5 and 9 of DESIGN.md against real Delta tables, LanceDB and the real model."""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import lancedb
import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from policyfresh.index import vectors
from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import read_chunks
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import (
    VECTORS,
    _ensure_indexes,
    open_vectors,
    read_vector_rows,
    reconcile,
)
from policyfresh.ingest.documents import read_documents
from policyfresh.quality.pipeline import refresh
from policyfresh.store.config import Settings
from policyfresh.store.tables import INGEST_ERRORS, POLICY_CHUNKS, POLICY_DOCUMENTS
from tests.conftest import REPO, HashEmbedder

PLANTED = [
    "maria.okafor@northwind-bank.com",
    "4111 1111 1111 1111",
    "(212) 555-0187",
    "james.whitfield@northwind-bank.com",
]
ZERO = {"missing": 0, "stale": 0, "orphaned": 0, "duplicates": 0, "model_mismatch": 0}


def vector_texts(settings) -> list[str]:
    return read_vector_rows(open_vectors(settings), ["text"])["text"].to_list()


def versions(settings) -> dict:
    delta = {
        name: DeltaTable(settings.table_uri(name)).version()
        for name in (POLICY_DOCUMENTS.name, POLICY_CHUNKS.name, INGEST_ERRORS.name)
    }
    return delta | {VECTORS: open_vectors(settings).version}


def test_noop_refresh_embeds_nothing_and_writes_nothing(small_settings, corpus, embedder):
    (corpus / "broken.pdf").write_bytes(b"not a pdf")
    built = refresh(small_settings, embedder, "build")
    assert built["vectors"]["embedded"] > 0 and built["documents"]["quarantined"] == 1
    before = versions(small_settings)
    again = refresh(small_settings, embedder, "noop")
    assert again["documents"]["unchanged"] == 5
    assert again["vectors"]["embedded"] == again["vectors"]["reused"] == 0
    assert versions(small_settings) == before
    assert reconcile(small_settings, embedder.model_id) == ZERO


def test_an_edit_embeds_exactly_the_changed_chunks(small_settings, corpus, embedder):
    refresh(small_settings, embedder, "build")
    before = set(read_chunks(small_settings)["text_sha256"])
    path = corpus / "retail" / "overdraft-fees.md"
    path.write_text(path.read_text().replace("$29 per item", "$32 per item"))
    result = refresh(small_settings, embedder, "edit")
    after = read_chunks(small_settings)
    new_texts = set(after["text_sha256"]) - before
    assert result["documents"]["changed"] == 1
    assert result["vectors"]["embedded"] == len(new_texts) == 1
    unchanged_in_doc = after.filter(
        (pl.col("doc_id") == "retail/overdraft-fees.md") & pl.col("text_sha256").is_in(before)
    ).height
    assert result["vectors"]["reused"] == unchanged_in_doc > 0
    rows = read_vector_rows(open_vectors(small_settings), ["doc_id", "doc_version"])
    assert set(rows.filter(pl.col("doc_id") == "retail/overdraft-fees.md")["doc_version"]) == {2}
    assert reconcile(small_settings, embedder.model_id) == ZERO
    # Rows outside the full-text index are scanned by every query: 75 ms against 2 on 18F.
    assert open_vectors(small_settings).index_stats("embed_text_idx").num_unindexed_rows == 0


def test_deleted_document_leaves_no_vector_but_keeps_its_history(small_settings, corpus, embedder):
    refresh(small_settings, embedder, "build")
    (corpus / "hr" / "annual-leave.md").unlink()
    result = refresh(small_settings, embedder, "delete")
    assert result["vectors"]["deleted"] > 0 and result["vectors"]["embedded"] == 0
    rows = read_vector_rows(open_vectors(small_settings), ["doc_id"])
    assert "hr/annual-leave.md" not in set(rows["doc_id"])
    history = (
        read_documents(small_settings, current_only=False)
        .filter(pl.col("doc_id") == "hr/annual-leave.md")
        .sort("doc_version")
    )
    assert history["is_deleted"].to_list() == [False, True]
    assert "leave" in history["text"][0]
    assert reconcile(small_settings, embedder.model_id) == ZERO


class RecordingEmbedder(Embedder):
    """The real model, keeping every text it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def encode(self, texts, batch_size=64, progress=None):
        self.seen.extend(texts)
        return super().encode(texts, batch_size=batch_size, progress=progress)


def test_planted_pii_never_reaches_the_model_or_the_vector_store(small_settings, embedder):
    model = RecordingEmbedder()
    refresh(small_settings, model, "build")
    for where in ("\n".join(vector_texts(small_settings)), "\n".join(model.seen)):
        assert "<EMAIL_ADDRESS>" in where and "<CREDIT_CARD>" in where
        for planted in PLANTED:
            assert planted not in where
        assert "4111 1111 1111 1112" in where  # fails Luhn: not a card number, not redacted


def test_classification_rules_block_or_allow(small_settings, embedder, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_PII_RULES", "restricted=block,internal=allow")
    settings = Settings.load()
    result = refresh(settings, embedder, "rules")
    assert result["chunks"]["blocked"] >= 1
    chunks = read_chunks(settings)
    blocked = chunks.filter(pl.col("pii_action") == "blocked")
    assert set(blocked["doc_id"]) == {"compliance/sanctions-screening.md"}
    assert blocked["text"].null_count() == blocked.height
    stored = "\n".join(vector_texts(settings))
    assert "james.whitfield@northwind-bank.com" not in stored
    assert "maria.okafor@northwind-bank.com" in stored  # internal: allowed by the rule
    assert reconcile(settings, embedder.model_id) == ZERO


def test_a_pii_rule_change_after_a_build_regates_every_chunk(small_settings, embedder, monkeypatch):
    refresh(small_settings, embedder, "build")
    monkeypatch.setenv("POLICYFRESH_PII_RULES", "internal=allow")
    allowed = Settings.load()
    refresh(allowed, embedder, "allow")
    assert "maria.okafor@northwind-bank.com" in "\n".join(vector_texts(allowed))
    monkeypatch.delenv("POLICYFRESH_PII_RULES")
    result = refresh(Settings.load(), embedder, "redact-again")
    assert result["chunks"]["documents_rechunked"] == 5
    assert "maria.okafor@northwind-bank.com" not in "\n".join(vector_texts(small_settings))
    assert reconcile(small_settings, embedder.model_id) == ZERO


def test_model_change_reembeds_everything_even_at_another_dimension(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    other = HashEmbedder(dimensions=32)
    result = refresh(small_settings, other, "new-model")
    rows = read_vector_rows(open_vectors(small_settings), ["model_id", "vector"])
    assert result["vectors"]["model_changed"] is True
    assert result["vectors"]["embedded"] == rows.height
    assert set(rows["model_id"]) == {other.model_id} and rows["vector"].dtype.size == 32
    assert {i.index_type for i in open_vectors(small_settings).list_indices()} == {"FTS"}
    assert reconcile(small_settings, other.model_id) == ZERO


def test_duplicated_rows_are_counted_and_repaired(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    table = open_vectors(small_settings)
    table.add(table.to_lance().to_table(limit=2))
    assert reconcile(small_settings, embedder.model_id)["duplicates"] == 2
    result = refresh(small_settings, embedder, "repair")
    assert result["vectors"]["embedded"] == 0
    assert reconcile(small_settings, embedder.model_id) == ZERO


KILL_AFTER_FIRST_BATCH = """
import os, signal, sys
from policyfresh.store.config import Settings
from policyfresh.index.embedding import Embedder
from policyfresh.quality.pipeline import refresh

class Dying(Embedder):
    def encode(self, texts, batch_size=64, progress=None):
        vectors = super().encode(texts[:8], batch_size=batch_size)
        print("embedding started", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

refresh(Settings.load(), Dying(), "killed")
"""


def test_refresh_killed_mid_embedding_converges_on_the_next(small_settings, embedder):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_AFTER_FIRST_BATCH)],
        cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "embedding started" in done.stdout
    assert read_chunks(small_settings).height > 0
    assert reconcile(small_settings, embedder.model_id)["missing"] > 0
    result = refresh(small_settings, embedder, "after-kill")
    assert result["vectors"]["embedded"] > 0
    assert reconcile(small_settings, embedder.model_id) == ZERO


def _sync_in_process(home: str, policies: str) -> int:
    from policyfresh.index.embedding import Embedder
    from policyfresh.index.vectors import sync_vectors

    settings = Settings.load(home=home, policies=policies)
    return sync_vectors(settings, Embedder()).embedded


def test_two_concurrent_refreshes_leave_no_duplicate_rows(small_settings, corpus, embedder):
    from policyfresh.index.chunking import Chunker
    from policyfresh.index.chunks import refresh_chunks
    from policyfresh.ingest.documents import ingest_documents

    def prepare():
        ingest_documents(small_settings, "ingest")
        return refresh_chunks(small_settings, Chunker.for_model(embedder), "chunks")

    args = (str(small_settings.home), str(small_settings.policies))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        total = prepare().total_chunks  # first round: both race to create the table
        assert sorted(pool.starmap(_sync_in_process, [args, args])) == [0, total]
        (corpus / "hr" / "annual-leave.md").write_text("# Leave\n\nA brand new leave rule.\n")
        (corpus / "finance").mkdir(exist_ok=True)
        (corpus / "finance" / "gifts.md").write_text("# Gifts\n\nGifts over $50 need approval.\n")
        prepare()  # second round: both race to merge the same new keys into the table
        assert sorted(pool.starmap(_sync_in_process, [args, args])) == [0, 2]
    rows = read_vector_rows(open_vectors(small_settings), ["chunk_id"])
    assert rows.height == rows["chunk_id"].n_unique() == read_chunks(small_settings).height
    assert reconcile(small_settings, embedder.model_id) == ZERO


def test_vector_index_is_built_once_the_table_is_large_enough(tmp_path, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_VECTOR_INDEX_MIN_ROWS", "300")
    settings = Settings.load(home=tmp_path, policies=tmp_path)
    db = lancedb.connect(settings.vectors_uri)
    rng = np.random.default_rng(0)

    def rows(n, offset):
        vectors = rng.random((n, 384), dtype=np.float32).ravel()
        return pa.table({
            "chunk_id": [str(i) for i in range(offset, offset + n)],
            "embed_text": [f"clause {i}" for i in range(offset, offset + n)],
            "vector": pa.FixedSizeListArray.from_arrays(vectors, 384),
        })  # fmt: skip

    table = db.create_table(VECTORS, data=rows(200, 0))
    _ensure_indexes(settings, table)
    assert {i.index_type for i in table.list_indices()} == {"FTS"}
    table.add(rows(200, 200))
    _ensure_indexes(settings, table)
    assert {i.index_type for i in table.list_indices()} == {"FTS", "IvfPq"}


def test_reconcile_counts_orphans_and_stale_rows(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    table = open_vectors(small_settings)
    table.update(where="chunk_index = 0", values={"doc_version": 99})
    orphan = table.to_lance().to_table(limit=1)
    table.add(orphan.set_column(0, "chunk_id", pa.array(["orphan"])))
    counts = reconcile(small_settings, embedder.model_id)
    assert counts == ZERO | {"orphaned": 1, "stale": 5}
    refresh(small_settings, embedder, "fix")
    assert reconcile(small_settings, embedder.model_id) == ZERO


def test_a_refresh_killed_before_indexing_gets_its_index_on_the_next(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    table = open_vectors(small_settings)
    table.drop_index("embed_text_idx")
    refresh(small_settings, embedder, "noop")
    assert "FTS" in {i.index_type for i in open_vectors(small_settings).list_indices()}


class NoModel(Embedder):
    """The real model's identity, but loading its weights fails the test."""

    def load(self):
        raise AssertionError("a refresh with nothing to embed loaded the model")


def test_a_noop_refresh_never_loads_the_model(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    assert refresh(small_settings, NoModel(), "noop")["vectors"]["embedded"] == 0


def test_fragments_are_compacted_once_they_pile_up(small_settings, corpus, embedder, monkeypatch):
    monkeypatch.setattr(vectors, "OPTIMIZE_FRAGMENTS", 3)
    refresh(small_settings, embedder, "build")
    for n in range(3):
        (corpus / f"note-{n}.md").write_text(f"# Note {n}\n\nTemporary note number {n}.\n")
        refresh(small_settings, embedder, f"add-{n}")
    stats = open_vectors(small_settings).stats()["fragment_stats"]
    assert stats["num_fragments"] < 3
    assert reconcile(small_settings, embedder.model_id) == ZERO


def test_a_document_that_fails_to_chunk_keeps_its_chunks_and_the_rest_go_on(
    small_settings, corpus, embedder, monkeypatch
):
    refresh(small_settings, embedder, "build")
    before = read_chunks(small_settings).filter(pl.col("doc_id") == "retail/overdraft-fees.md")
    real_split = Chunker.split

    def split(self, layout):
        if layout.doc_id == "retail/overdraft-fees.md":
            raise RuntimeError("tokenizer exploded")
        return real_split(self, layout)

    monkeypatch.setattr(Chunker, "split", split)
    for name in ("retail/overdraft-fees.md", "hr/annual-leave.md"):
        path = corpus / name
        path.write_text(path.read_text() + "\nA new closing line.\n")
    result = refresh(small_settings, embedder, "edit")["chunks"]
    assert result["documents_rechunked"] == 1
    [held] = result["held"]
    assert held["doc_id"] == "retail/overdraft-fees.md"
    assert held["reasons"] == ["chunking raised RuntimeError"]  # never the message: it may quote
    after = read_chunks(small_settings).filter(pl.col("doc_id") == "retail/overdraft-fees.md")
    assert after["chunk_id"].to_list() == before["chunk_id"].to_list()


def test_chunk_id_is_the_primary_key_and_an_older_table_is_given_it(small_settings, embedder):
    from policyfresh.index.chunks import refresh_chunks
    from policyfresh.index.vectors import PRIMARY_KEY, sync_vectors, vectors_dataset
    from policyfresh.ingest.documents import ingest_documents

    ingest_documents(small_settings, "ingest")
    refresh_chunks(small_settings, Chunker.for_model(embedder), "chunk")
    hashed = HashEmbedder()  # bookkeeping only: which rows are written, not what they mean
    rows = sync_vectors(small_settings, hashed).rows
    assert vectors_dataset(small_settings).schema.field("chunk_id").metadata == PRIMARY_KEY

    old = open_vectors(small_settings).to_arrow()  # as an older policyfresh made it: no key
    unkeyed = pa.schema([f.remove_metadata().with_nullable(True) for f in old.schema])
    lancedb.connect(small_settings.vectors_uri).create_table(
        VECTORS, data=old.cast(unkeyed), mode="overwrite"
    )
    again = sync_vectors(small_settings, hashed)
    assert (again.embedded, again.reused, again.rows) == (0, rows, rows)
    assert vectors_dataset(small_settings).schema.field("chunk_id").metadata == PRIMARY_KEY
    assert reconcile(small_settings, hashed.model_id) == ZERO
