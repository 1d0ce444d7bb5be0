"""Invariant 9 of DESIGN.md: a refresh killed by SIGKILL between two writes that must both
happen converges on the next refresh. Each point is hit in a real child process."""

import os
import signal
import subprocess
import sys

import polars as pl
import pytest

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import read_chunks, refresh_chunks
from policyfresh.index.vectors import open_vectors, reconcile, vectors_dataset
from policyfresh.ingest.documents import ingest_documents, read_documents
from policyfresh.quality.pipeline import refresh
from policyfresh.release.releases import read_audit, read_releases, served_release
from policyfresh.store.config import Settings
from policyfresh.store.freshness import document_lag
from tests.conftest import REPO, HashEmbedder

ZERO = {"missing": 0, "stale": 0, "orphaned": 0, "duplicates": 0, "model_mismatch": 0}
EDITED = "retail/overdraft-fees.md"
OLD_FEE, NEW_FEE = "$29 per item", "$19 per item"

# The child replaces `module:attribute` with a function that kills its own process: the
# refresh dies exactly where that call would have been made.
KILLED_REFRESH = """
import importlib, os, signal, sys
from policyfresh.store.config import Settings
from policyfresh.quality.pipeline import refresh
from tests.conftest import HashEmbedder

module, _, path = sys.argv[1].partition(":")
*owners, name = path.split(".")
owner = importlib.import_module(module)
for attribute in owners:
    owner = getattr(owner, attribute)
setattr(owner, name, lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL))
refresh(Settings.load(), HashEmbedder(), "killed")
"""

# Where the child dies, and what is on disk when its refresh starts: "edited" (a release
# built, then a policy edited), "chunked" (the edit also ingested and chunked here, so the
# child's work starts at the vectors, and it does not import Presidio), "unbuilt" (the edit
# ingested and chunked, no vector table yet).
KILLS = [
    pytest.param(
        "policyfresh.ingest.documents:_record_errors", "edited", id="after-documents-commit"
    ),
    pytest.param("lancedb.table:LanceTable.merge_insert", "chunked", id="vectors-delete-merge"),
    pytest.param("policyfresh.index.vectors:_ensure_indexes", "unbuilt", id="vectors-write-index"),
    pytest.param(
        "policyfresh.quality.evaluation:record_candidate", "chunked", id="eval-run-candidate"
    ),
    pytest.param("policyfresh.quality.pipeline:publish", "chunked", id="vectors-publication"),
    pytest.param("policyfresh.release.releases:_audit", "chunked", id="served-tag-audit"),
]


def prepare(settings: Settings, embedder: HashEmbedder, start: str) -> None:
    """Bring the home to the state the killed refresh starts from (see KILLS)."""
    if start != "unbuilt":
        refresh(settings, embedder, "build")
        table = open_vectors(settings)
        table.add(table.to_lance().to_table(limit=2))  # duplicates: a first delete to make
    policy = settings.policies / EDITED
    policy.write_text(policy.read_text().replace(OLD_FEE, NEW_FEE))
    if start != "edited":
        ingest_documents(settings, "edit")
        refresh_chunks(settings, Chunker.for_model(embedder), "edit")


def assert_converged(settings: Settings, embedder: HashEmbedder) -> None:
    """Every table in step with the edited policy, and the edit served and recorded."""
    assert reconcile(settings, embedder.model_id) == ZERO
    chunks = read_chunks(settings, ["chunk_id", "doc_id", "doc_version"])
    assert chunks["chunk_id"].is_unique().all()
    chunked = chunks.select("doc_id", "doc_version").unique().sort("doc_id")
    assert chunked.equals(read_documents(settings).select("doc_id", "doc_version").sort("doc_id"))
    table = open_vectors(settings)
    served = served_release(table)
    assert served == table.version and "FTS" in {i.index_type for i in table.list_indices()}
    rows = pl.from_arrow(vectors_dataset(settings, "served").to_table(columns=["doc_id", "text"]))
    quoting = {fee: set(rows.filter(pl.col("text").str.contains(fee, literal=True))["doc_id"])
               for fee in (OLD_FEE, NEW_FEE)}  # fmt: skip
    assert quoting == {OLD_FEE: set(), NEW_FEE: {EDITED}}
    assert read_audit(settings)["release"][-1] == served
    release = read_releases(settings).filter(pl.col("release") == served)
    assert release["published_at"].is_not_null().to_list() == [True]
    assert set(document_lag(settings)["state"]) == {"served"}


@pytest.mark.parametrize(("target", "start"), KILLS)
def test_a_refresh_killed_between_two_writes_converges_on_the_next(
    target, start, small_settings, monkeypatch
):
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", "none")  # hash vectors would fail the gate
    settings = Settings.load()
    embedder = HashEmbedder()  # bookkeeping only: which rows are written, not what they mean
    prepare(settings, embedder, start)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_REFRESH, target],
        cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    refresh(settings, embedder, "after-kill")
    assert_converged(settings, embedder)
    again = refresh(settings, embedder, "noop")
    assert again["vectors"]["embedded"] == 0 and not again["release"]["published"]
    assert again["documents"]["added"] == again["documents"]["changed"] == 0
