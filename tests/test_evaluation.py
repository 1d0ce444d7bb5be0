"""The regression evaluation and the releases it gates, on the real model and real tables."""

import threading
from dataclasses import replace

import polars as pl
import pytest

from policyfresh.index import vectors
from policyfresh.index.vectors import open_vectors, sync_vectors
from policyfresh.quality.evaluation import evaluate, read_case_results
from policyfresh.quality.golden import COLUMNS
from policyfresh.quality.pipeline import refresh
from policyfresh.release.releases import read_audit, read_releases, release_status, rollback
from policyfresh.serve.search import search
from policyfresh.store.config import Settings
from policyfresh.store.local_state import read_state
from policyfresh.store.tables import EVAL_RUNS, RETRIEVAL_TRACES
from tests.conftest import HashEmbedder

# Cases over the five documents of `small_settings`, written for these tests.
GOLDEN = [
    ("fee", "What is the overdraft item fee?", "$29 per item, only above $50 overdrawn.", "fact",
     "high", "false", "retail/overdraft-fees.md",
     "Charged only if the item overdraws the account by more than $50", "$35 per item"),
    ("dispute-pan", "What happens if an agent types a full card number into a dispute ticket?",
     "It is a reportable data-handling incident.", "fact", "high", "false",
     "retail/card-disputes.md", "is a reportable data-handling incident", ""),
    ("carry-over", "Can I roll unused holiday into next year?",
     "Up to 5 unused days, to be used by 31 March.", "paraphrase", "medium", "false",
     "hr/annual-leave.md", "Employees may carry over up to 5 unused days", ""),
    ("ack", "How quickly must a complaint be acknowledged in writing?", "Within 2 business days.",
     "fact", "medium", "false", "compliance/complaints-handling.md",
     "Written acknowledgement to the customer", ""),
    ("ofac", "When are blocked transactions reported to OFAC?",
     "Within 10 business days of the blocking or rejection.", "fact", "high", "false",
     "compliance/sanctions-screening.md", "Reports to OFAC are filed within 10 business days", ""),
    ("oos", "How do I reset my iPhone to factory settings?", "Not covered: escalate.",
     "out_of_scope", "low", "true", "", "", ""),
]  # fmt: skip


def write_golden(path, rows=GOLDEN):
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


@pytest.fixture
def gated(small_settings, tmp_path, monkeypatch) -> Settings:
    """The five small policies with the golden cases above."""
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", str(write_golden(tmp_path / "golden.csv")))
    return Settings.load()


def edit(settings: Settings, doc_id: str, old: str, new: str) -> None:
    path = settings.policies / doc_id
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_the_first_release_is_evaluated_and_served(gated, embedder):
    built = refresh(gated, embedder, "build")
    assert built["eval"]["verdict"] == "passed", built["eval"]
    assert built["eval"]["cases"] == 6 and built["eval"]["hit_at_5"] == 1.0
    assert built["release"]["published"]
    release = built["release"]["release"]
    result = search(gated, embedder, "What is the overdraft item fee?")
    assert result.release == release == result.index_version
    assert all(h.release == release for h in result.hits)

    cases = read_case_results(gated, built["eval"]["eval_run_id"])
    assert cases.filter(pl.col("case_id") == "oos")["escalated"].to_list() == [True]
    # Behaviour is read back from the traces: one retrieval per case, each traced.
    assert cases["retrievals"].to_list() == [1] * 6
    traces = pl.read_delta(gated.table_uri(RETRIEVAL_TRACES.name))
    assert set(cases["trace_id"]) <= set(traces["trace_id"])
    similarity = dict(zip(cases["case_id"], cases["similarity"], strict=True))
    assert similarity.pop("oos") is None and min(similarity.values()) > 0.3


def test_a_policy_edit_is_published_and_its_case_flagged_for_review(gated, embedder):
    first = refresh(gated, embedder, "build")["release"]["release"]
    edit(gated, "retail/overdraft-fees.md", "by more than $50 |", "by more than $75 |")
    edit(gated, "retail/overdraft-fees.md", "$29 per item", "$32 per item")

    after = refresh(gated, embedder, "edit")

    assert after["eval"]["verdict"] == "passed", after["eval"]
    assert after["eval"]["affected"][0] == "fee"  # affected cases run first
    assert "fee" in after["eval"]["needs_review"]
    assert after["release"]["published"] and after["release"]["release"] > first
    case = read_case_results(gated, after["eval"]["eval_run_id"]).filter(pl.col("case_id") == "fee")
    row = case.row(0, named=True)
    assert row["affected_reason"] == "source retail/overdraft-fees.md changed (v1 -> v2)"
    assert row["status"] == "needs_review"
    assert "by more than $50" in row["expected_evidence"]
    assert "$75" in row["served_evidence"]  # the new evidence, beside the old, for the owner
    served = search(gated, embedder, "What is the overdraft item fee?")
    assert served.release == after["release"]["release"]
    assert any("$32 per item" in h.text for h in served.hits)
    assert not any("$29 per item" in h.text for h in served.hits)


def test_a_change_that_breaks_unaffected_cases_is_not_published(gated, embedder, monkeypatch):
    first = refresh(gated, embedder, "build")["release"]["release"]
    monkeypatch.setenv(
        "POLICYFRESH_PII_RULES", "internal=block"
    )  # blocks the chunk with a card PAN
    blocking = Settings.load()

    result = refresh(blocking, embedder, "block")

    assert result["eval"]["verdict"] == "blocked"
    assert result["eval"]["newly_failing"] == ["dispute-pan"]
    assert result["eval"]["reasons"][0].startswith("dispute-pan (high risk): ")
    assert not result["release"]["published"]
    served = search(blocking, embedder, "full card number typed into a dispute ticket")
    assert served.release == first and served.hits[0].release == first
    assert any("reportable data-handling incident" in h.text for h in served.hits)
    status = release_status(blocking)
    assert status["published"]["release"] == first
    assert status["waiting"]["why"] == "blocked by the evaluation"
    releases = read_releases(blocking)
    assert releases.filter(pl.col("verdict") == "blocked")["published_at"].to_list() == [None]


def test_rollback_serves_the_earlier_release_until_asked_otherwise(gated, embedder):
    first = refresh(gated, embedder, "build")["release"]["release"]
    edit(gated, "retail/overdraft-fees.md", "$29 per item", "$32 per item")
    second = refresh(gated, embedder, "edit")["release"]["release"]

    done = rollback(gated, None, actor="alice", reason="fee change not approved")

    assert done == {"release": first, "previous_release": second, "actor": "alice",
                    "reason": "fee change not approved", "model_id": embedder.model_id}  # fmt: skip
    served = search(gated, embedder, "What is the overdraft item fee?")
    assert served.release == first and any("$29 per item" in h.text for h in served.hits)
    audit = read_audit(gated).row(-1, named=True)
    assert (audit["action"], audit["actor"], audit["release"]) == ("rollback", "alice", first)
    again = refresh(gated, embedder, "no-op")  # a rolled-back candidate is not re-published
    assert not again["release"]["published"] and "rolled back" in again["release"]["message"]
    assert release_status(gated)["waiting"]["why"] == "rolled back"
    rollback(gated, second, actor="alice", reason="approved after all")
    assert search(gated, embedder, "overdraft item fee").release == second


def test_hybrid_search_keeps_answering_while_a_model_change_rewrites_the_index(
    gated, embedder, monkeypatch
):
    release = refresh(gated, embedder, "build")["release"]["release"]
    ensure = vectors._ensure_indexes
    rewritten, searched = threading.Event(), threading.Event()
    outcome: list[object] = []  # what the rewrite returned, or the exception it raised

    def held_ensure(settings, table):  # hold the rewrite between its data and its index
        if not list(table.list_indices()):
            rewritten.set()
            assert searched.wait(timeout=300)
        ensure(settings, table)

    def rewrite_with_another_model() -> None:
        try:
            outcome.append(sync_vectors(gated, HashEmbedder()))
        except BaseException as exc:  # raised again in the test's own thread
            outcome.append(exc)
            rewritten.set()

    monkeypatch.setattr(vectors, "_ensure_indexes", held_ensure)
    rewrite = threading.Thread(target=rewrite_with_another_model)
    rewrite.start()
    assert rewritten.wait(timeout=300) and not outcome, outcome
    latest = open_vectors(gated)
    assert latest.version != release and not list(latest.list_indices())  # no full-text index
    answered = [search(gated, embedder, "How quickly is a complaint acknowledged?")]
    searched.set()
    rewrite.join(timeout=300)
    assert not rewrite.is_alive()
    (synced,) = outcome
    if isinstance(synced, BaseException):
        raise synced
    assert synced.model_changed and synced.model_id == HashEmbedder().model_id
    assert synced.embedded == synced.rows > 0
    answered.append(search(gated, embedder, "How quickly is a complaint acknowledged?"))
    assert {r.release for r in answered} == {release}
    assert all(r.hits for r in answered)


def test_no_change_reuses_the_evaluation_and_republishes_nothing(gated, embedder):
    refresh(gated, embedder, "build")
    runs = pl.read_delta(gated.table_uri(EVAL_RUNS.name)).height
    events = read_audit(gated).height
    again = refresh(gated, embedder, "no-op")
    assert again["eval"]["reused"] and not again["release"]["published"]
    assert pl.read_delta(gated.table_uri(EVAL_RUNS.name)).height == runs
    assert read_audit(gated).height == events


def test_a_changed_golden_file_is_evaluated_again(gated, embedder, tmp_path, monkeypatch):
    first = refresh(gated, embedder, "build")
    extra = ("od-none", "Is there an overdraft fee for $40 overdrawn?", "No.", "fact", "low",
             "false", "retail/overdraft-fees.md", "overdrawn by $50.00 or less", "")  # fmt: skip
    golden = write_golden(tmp_path / "golden2.csv", [*GOLDEN, extra])
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", str(golden))
    again = refresh(Settings.load(), embedder, "golden")
    assert not again["eval"]["reused"] and again["eval"]["cases"] == 7
    assert again["eval"]["candidate"] == first["eval"]["candidate"]
    assert not again["release"]["published"]  # the same index: already served


def test_a_corpus_no_golden_case_applies_to_is_served_unevaluated(settings, corpus, embedder):
    for path in list(corpus.rglob("*.md"))[2:]:
        path.rename(path.with_name("own-" + path.name))
    for path in corpus.rglob("*"):
        if path.is_file() and not path.name.startswith("own-") and path.name != "OWNERS":
            path.unlink()
    result = refresh(settings, embedder, "own-folder")
    assert result["eval"]["verdict"] == "unevaluated" and result["eval"]["cases"] == 0
    assert "nothing gates this release" in result["eval"]["skipped"][0]
    assert result["release"]["published"]
    assert release_status(settings)["published"]["verdict"] == "unevaluated"


def test_evaluation_before_any_index_is_none(small_settings, embedder):
    assert evaluate(small_settings, embedder, "nothing") is None


def test_the_llm_judge_scores_cases_when_configured(gated, embedder, chat_server, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_JUDGE_URL", chat_server.url)
    monkeypatch.setenv("POLICYFRESH_JUDGE_MODEL", "grader-1")
    judged = Settings.load()
    built = refresh(judged, embedder, "judged")
    assert built["eval"]["judge"] == "grader-1"
    cases = read_case_results(judged, built["eval"]["eval_run_id"])
    scores = dict(zip(cases["case_id"], cases["judge_score"], strict=True))
    assert scores.pop("oos") is None and set(scores.values()) == {0.9}
    assert len(chat_server.requests) == 5  # every answerable case, none for the escalation

    chat_server.status = 500  # a failing judge leaves its scores out; the evaluation goes on
    edit(judged, "hr/annual-leave.md", "floating holiday", "personal holiday")
    again = refresh(judged, embedder, "judge-down")
    assert again["eval"]["judge"].startswith("grader-1: failed (judge http://127.0.0.1:")
    assert again["eval"]["verdict"] == "passed" and again["release"]["published"]
    cases = read_case_results(judged, again["eval"]["eval_run_id"])
    assert cases["judge_score"].null_count() == cases.height


def test_without_a_judge_no_score_is_invented(gated, embedder):
    built = refresh(gated, embedder, "build")
    assert built["eval"]["judge"] == "not configured"
    cases = read_case_results(gated, built["eval"]["eval_run_id"])
    assert cases["judge_score"].null_count() == cases.height


def test_pii_in_hits_is_found_once_per_text_and_again_for_another_detector(
    small_settings, monkeypatch
):
    """The evaluation's PII check keeps its findings by text hash under the home: the next
    evaluation scans only new texts, and a new detector scans everything again."""
    from policyfresh.quality import evaluation

    leaky, clean = "Call 555-201-3344 or write to maria.okafor@northwind-bank.com.", "No data."
    allowed = replace(small_settings, pii_rules={"internal": "allow"})
    first = evaluation._PiiCheck(allowed)
    assert first(leaky, "public") and not first(clean, "public")
    assert not first(leaky, "internal"), "a classification whose rule allows PII"
    first.save()
    assert leaky not in read_state(allowed, first.STATE), "only hashes are kept"

    scanned = []
    detect = evaluation.detect_pii
    monkeypatch.setattr(evaluation, "detect_pii", lambda text: scanned.append(text) or detect(text))
    again = evaluation._PiiCheck(allowed)
    assert again(leaky, "public") and not again(clean, "public") and not again("New.", "public")
    assert scanned == ["New."]
    monkeypatch.setattr(evaluation, "detector_id", lambda: "another-detector")
    assert evaluation._PiiCheck(allowed)(leaky, "public") and scanned == ["New.", leaky]


def test_expected_answers_are_encoded_once_per_model(small_settings, embedder, monkeypatch):
    """The golden answers' vectors are kept by text hash and model: the next evaluation encodes
    only new answers, the kept vectors equal the model's, and another model encodes them all."""
    from policyfresh.quality import evaluation

    answers = ["Disputes are filed within 60 days.", "The fee is $29 per item."]
    first = evaluation._answer_vectors(small_settings, embedder, answers)
    assert (first == embedder.encode(answers)).all()

    encoded = []
    encode = type(embedder).encode
    monkeypatch.setattr(
        type(embedder), "encode", lambda self, texts: encoded.append(texts) or encode(self, texts)
    )
    again = evaluation._answer_vectors(small_settings, embedder, [answers[1], "New answer."])
    assert encoded == [["New answer."]] and (again[0] == first[1]).all()
    other = HashEmbedder()
    assert (
        evaluation._answer_vectors(small_settings, other, answers) == other.encode(answers)
    ).all()


def test_a_missed_passage_says_where_its_document_and_its_evidence_rank(
    gated, embedder, tmp_path, monkeypatch
):
    # The question finds the policy's owners; the evidence asked for sits in its definitions.
    far = ("far", "Who owns the card disputes policy?", "Card Services.", "fact", "low", "false",
           "retail/card-disputes.md", "a temporary credit to the cardholder's account",
           "")  # fmt: skip
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", str(write_golden(tmp_path / "far.csv", [far])))
    built = refresh(Settings.load(), embedder, "build")
    row = read_case_results(gated, built["eval"]["eval_run_id"]).row(0, named=True)
    assert row["hit_at_1"] and row["document_rank"] == 1 and not row["evidence_at_5"]
    assert 5 < row["evidence_rank"] <= 50
    assert (
        f"expected evidence not in the top 5 (its document at rank 1, the evidence at rank "
        f"{row['evidence_rank']})" in row["failures"]
    )
