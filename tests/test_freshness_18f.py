"""The real-world case: three real policy edits from the 18F handbook's history."""

import json
import shutil
from datetime import UTC, datetime

import polars as pl
import pytest

from policyfresh.index.chunks import read_chunks
from policyfresh.index.vectors import open_vectors, read_vector_rows, reconcile
from policyfresh.quality.evaluation import read_case_results
from policyfresh.quality.pipeline import refresh
from policyfresh.serve.search import search_many
from policyfresh.store.config import Settings
from tests.conftest import HANDBOOK, HANDBOOK_GOLDEN

pytestmark = pytest.mark.xdist_group("handbook-edits")  # its module fixture builds a home

CHANGES = [
    json.loads(line) for line in (HANDBOOK / "changes" / "changes.jsonl").read_text().splitlines()
]
FOLDERS = [
    "travel-and-leave",
    "hiring-staying-or-changing-jobs",
    "general-information-and-resources/employee-resources-policies",
]


def doc_id(change: dict) -> str:
    return change["path"].removeprefix("pages/")


@pytest.fixture(scope="module")
def handbook(tmp_path_factory, embedder):
    """Three folders of the handbook with the three pages as they were before their edits."""
    root = tmp_path_factory.mktemp("18f")
    policies = root / "pages"
    for folder in FOLDERS:
        shutil.copytree(HANDBOOK / "pages" / folder, policies / folder)
    for change in CHANGES:
        shutil.copy(HANDBOOK / change["before_file"], policies / doc_id(change))
    settings = Settings.load(home=root / "home", policies=policies, golden=HANDBOOK_GOLDEN)
    build = refresh(settings, embedder, "before")
    return settings, build


def test_the_real_edits_are_served_fresh_and_only_changed_chunks_are_embedded(handbook, embedder):
    settings, build = handbook
    assert build["documents"]["quarantined"] == 0 and build["vectors"]["embedded"] > 250
    assert build["release"]["published"], build["eval"]
    edits = {c["change_id"] for c in CHANGES}
    assert edits <= set(build["eval"]["needs_review"])  # the golden file has the new text
    before = search_many(settings, embedder, [c["question"] for c in CHANGES], k=5)
    assert any(
        c["evidence_before"] in h.text for c, r in zip(CHANGES, before, strict=True) for h in r.hits
    )
    texts_before = set(read_chunks(settings)["text_sha256"])
    switched_at = datetime.now(tz=UTC)
    for change in CHANGES:
        shutil.copy(HANDBOOK / change["after_file"], settings.policies / doc_id(change))

    result = refresh(settings, embedder, "after")

    # The evaluation reports the changed answers: affected first, now found, published.
    assert result["eval"]["verdict"] == "passed" and result["release"]["published"]
    cases = read_case_results(settings, result["eval"]["eval_run_id"])
    changed = cases.filter(pl.col("case_id").is_in(list(edits)))
    assert changed["affected"].all() and changed.height == 3
    for row in changed.iter_rows(named=True):
        assert row["affected_reason"].startswith("source "), row
        assert row["hit_at_5"] and not row["stale_served"], row["failures"]
        assert row["status"] == "pass", row["failures"]  # "Sick Leave" is served verbatim

    assert result["documents"]["changed"] == 3 and result["documents"]["unchanged"] > 20
    chunks = read_chunks(settings)
    new_texts = chunks.filter(~pl.col("text_sha256").is_in(list(texts_before)))
    assert set(new_texts["doc_id"]) == {doc_id(c) for c in CHANGES}
    assert result["vectors"]["embedded"] == new_texts["text_sha256"].n_unique()
    assert result["vectors"]["embedded"] <= 12
    fresh = read_vector_rows(open_vectors(settings), ["doc_id", "embedded_at"]).filter(
        pl.col("embedded_at") > switched_at
    )
    assert fresh.height == new_texts.height
    assert reconcile(settings, embedder.model_id) == dict.fromkeys(
        ("missing", "stale", "orphaned", "duplicates", "model_mismatch"), 0
    )

    after = search_many(settings, embedder, [c["question"] for c in CHANGES], k=5)
    stored = "\n".join(read_vector_rows(open_vectors(settings), ["text"])["text"])
    for change, answer in zip(CHANGES, after, strict=True):
        served = [h.text for h in answer.hits]
        evidence = change["evidence_after"]
        assert any(evidence in t for t in served), change["change_id"]
        assert not any(change["evidence_before"] in t for t in served), change["change_id"]
        assert change["evidence_before"] not in stored
        changed_hits = [h for h in answer.hits if h.doc_id == doc_id(change)]
        assert changed_hits and all(h.doc_version == 2 for h in changed_hits)
