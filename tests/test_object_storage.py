"""The lake and the vectors in object storage: the whole flow on a real S3 server (moto, on
127.0.0.1), clients configured by the usual AWS_* variables only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lance
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from policyfresh.index.chunks import read_chunks
from policyfresh.index.vectors import open_vectors, reconcile
from policyfresh.ingest.documents import read_documents
from policyfresh.quality.pipeline import refresh
from policyfresh.release.purge import purge_document
from policyfresh.release.releases import read_audit, read_releases, rollback
from policyfresh.serve.search import search
from policyfresh.serve.trace_store import read_traces
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.tables import EVAL_RUNS, WRITER_LEASES
from tests.conftest import holds_text
from tests.s3 import S3Server, s3_server
from tests.test_cli import environment, policyfresh

pytestmark = pytest.mark.xdist_group("s3")  # its module fixture: built once

DISPUTES = "retail/card-disputes.md"
OVERDRAFT = "retail/overdraft-fees.md"
SECRET = "Zebra clause QX4471 sets the chargeback holdback at seventeen percent"
FEE_QUESTION = "How much is the overdraft fee per item?"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def s3_settings(
    small_settings: Settings, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The small corpus with its lake and vectors in a new bucket; state stays in the home."""
    bucket = f"policyfresh-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    for name, value in s3.environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("POLICYFRESH_LAKE_URI", f"s3://{bucket}/lake")
    monkeypatch.setenv("POLICYFRESH_VECTORS_URI", f"s3://{bucket}/vectors")
    return Settings.load()


def objects_holding(s3: S3Server, bucket: str, text: str) -> list[str]:
    client = s3.client()
    return [
        key
        for key in s3.keys(bucket)
        if holds_text(key, client.get_object(Bucket=bucket, Key=key)["Body"].read(), text)
    ]


def served_text(result) -> str:
    return "\n".join(hit.text for hit in result.hits)


def files_under(home: Path) -> set[str]:
    return {p.relative_to(home).parts[0] for p in home.rglob("*") if p.is_file()}


APPENDER = """
import sys
import lance, pyarrow as pa
from deltalake import write_deltalake
for i in range(10):
    row = pa.table({"writer": [sys.argv[2]], "i": [i]})
    write_deltalake(sys.argv[1] + "/delta", row, mode="append")
    lance.write_dataset(row, sys.argv[1] + "/vectors.lance", mode="append")
"""


def test_concurrent_commits_on_s3_lose_nothing_without_a_lock_service(s3_settings, s3):
    """Delta and Lance commit on S3 with conditional writes (put if absent): two processes
    committing at once never overwrite each other's log entry, with no DynamoDB lock."""
    root = s3_settings.lake_uri
    empty = pa.table({"writer": pa.array([], pa.string()), "i": pa.array([], pa.int64())})
    write_deltalake(f"{root}/delta", empty)
    lance.write_dataset(empty, f"{root}/vectors.lance")
    writers = [
        subprocess.Popen([sys.executable, "-c", APPENDER, root, name], env=dict(os.environ))
        for name in ("a", "b")
    ]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    delta = DeltaTable(f"{root}/delta")
    assert delta.version() == 20 and pl.read_delta(delta).height == 20
    dataset = lance.dataset(f"{root}/vectors.lance")
    assert dataset.version == 21 and dataset.count_rows() == 20


def test_the_whole_flow_runs_on_s3(s3_settings: Settings, s3: S3Server, embedder):
    bucket = s3_settings.lake_uri.removeprefix("s3://").split("/")[0]
    disputes = s3_settings.policies / DISPUTES
    disputes.write_text(disputes.read_text() + f"\n{SECRET}.\n")

    built = refresh(s3_settings, embedder, "build")
    first = built["release"]["release"]
    assert built["release"]["published"] and built["eval"]["verdict"] == "passed"
    asked = search(s3_settings, embedder, FEE_QUESTION)
    assert asked.release == first and asked.hits[0].doc_id == OVERDRAFT
    assert "$29 per item" in served_text(asked)
    assert read_traces(s3_settings).filter(trace_id=asked.trace_id).height == 1

    overdraft = s3_settings.policies / OVERDRAFT
    overdraft.write_text(overdraft.read_text().replace("$29 per item", "$31 per item"))
    edited = refresh(s3_settings, embedder, "edit")
    second = edited["release"]["release"]
    assert edited["vectors"]["embedded"] > 0 and second > first
    assert "$31 per item" in served_text(search(s3_settings, embedder, FEE_QUESTION))

    rollback(s3_settings, to=first, actor="test", reason="compare")
    assert "$29 per item" in served_text(search(s3_settings, embedder, FEE_QUESTION))
    rollback(s3_settings, to=second, actor="test", reason="back")
    assert read_audit(s3_settings)["action"].to_list()[-2:] == ["rollback", "rollback"]

    disputes.unlink()
    deleted = refresh(s3_settings, embedder, "delete")
    assert deleted["documents"]["deleted"] == 1
    assert objects_holding(s3, bucket, SECRET)  # history keeps it until a purge
    purged = purge_document(s3_settings, DISPUTES, reason="takedown", requested_by="dpo")
    assert purged.versions == [1, 2]  # the text and the tombstone
    assert objects_holding(s3, bucket, SECRET) == []

    after = refresh(s3_settings, embedder, "after")
    assert after["vectors"]["embedded"] == 0
    assert set(reconcile(s3_settings, embedder.model_id).values()) == {0}
    assert "$31 per item" in served_text(search(s3_settings, embedder, FEE_QUESTION))
    # Nothing of the lake or the index went to the local disk: the home keeps small state only
    # (and the confidence model the evaluation fitted).
    assert files_under(s3_settings.home) <= {"locks", "state", "secrets", "reports",
                                             "confidence.json"}  # fmt: skip


def test_two_refreshes_on_two_machines_at_once_leave_one_index_and_one_release(
    s3_settings: Settings, embedder, tmp_path: Path
):
    """Two homes (two machines, two Dagster instances: no shared pool, no shared file lock)
    refresh the same lake and vectors at the same time."""
    homes = [tmp_path / "machine-a", tmp_path / "machine-b"]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "policyfresh.cli", "run", "--json"],
            env=environment(s3_settings, POLICYFRESH_HOME=str(home)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for home in homes
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-3000:] for _, err in outputs]
    summaries = [json.loads(out) for out, _ in outputs]

    documents = read_documents(s3_settings, current_only=False)
    assert documents.height == documents.unique(["doc_id", "doc_version"]).height == 5
    chunks = read_chunks(s3_settings, ["chunk_id"])
    assert chunks.height == chunks["chunk_id"].n_unique()
    vectors = open_vectors(s3_settings).to_lance().to_table(columns=["chunk_id"])
    assert vectors.num_rows == len(set(vectors["chunk_id"].to_pylist())) == chunks.height
    assert set(reconcile(s3_settings, embedder.model_id).values()) == {0}
    # One machine embedded everything, the other found nothing left to do.
    assert sorted(s["vectors"]["embedded"] for s in summaries)[0] == 0
    # Every evaluation each run recorded is in the lake: no commit was lost.
    eval_runs = delta_store.read_table(s3_settings.table_uri(EVAL_RUNS.name), EVAL_RUNS.schema)
    reported = {s["eval"]["eval_run_id"] for s in summaries}
    assert reported <= set(eval_runs["eval_run_id"].to_list())
    published = read_releases(s3_settings).filter(pl.col("published_at").is_not_null())
    assert published.height == 1
    assert read_audit(s3_settings)["action"].to_list() == ["publish"]
    # Each machine says where the shared lake, vectors and locks are, and where its own state is.
    status = json.loads(policyfresh(replace(s3_settings, home=homes[0]), "status", "--json").stdout)
    assert status["home"] == str(homes[0]) and status["reports"] == str(homes[0] / "reports")
    assert status["lake"] == s3_settings.lake_uri
    assert status["vectors_uri"] == s3_settings.vectors_uri
    assert status["locks"] == s3_settings.table_uri(WRITER_LEASES.name)
