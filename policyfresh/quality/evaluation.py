"""Regression evaluation of a candidate index against the golden cases: deterministic, semantic
and behavioural checks per case, cases affected by the change first, recorded in `eval_runs`
and `eval_case_results` and diffed with the previous run."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import chunking_id
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import open_vectors
from policyfresh.ingest.documents import read_documents
from policyfresh.ingest.pii import NER_ENTITIES, detect_pii, detector_id
from policyfresh.quality.calibration import calibrate
from policyfresh.quality.gate import compare, decide, metric_deltas, run_metrics
from policyfresh.quality.golden import GoldenCase, GoldenSet, load_golden, normalize
from policyfresh.quality.judge import NOT_CONFIGURED, Judge, JudgeError
from policyfresh.release.releases import (
    latest_eval,
    read_releases,
    record_candidate,
    served_release,
)
from policyfresh.serve.confidence import Scorer, scorer
from policyfresh.serve.search import (
    RETRIEVAL_ID,
    SearchResult,
    hit_records,
    open_index,
    retrieve,
    search_many,
)
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.local_state import read_state, write_state
from policyfresh.store.sql import in_list
from policyfresh.store.tables import EVAL_CASE_RESULTS, EVAL_RUNS, RETRIEVAL_TRACES, empty_frame

log = logging.getLogger(__name__)

EVAL_K = 10  # hits retrieved per case: stale evidence and reciprocal rank look this deep
DEPTH = 50  # how far down the ranking a missed source or evidence is looked for
TOP = 5  # hit@5 and evidence recall@5
EVIDENCE_CHARS = 300


@dataclass(frozen=True)
class Evaluation:
    """One evaluation run: its `eval_runs` row, its case results and what changed since the
    previous run."""

    run: dict[str, Any]
    cases: pl.DataFrame
    changes: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    @property
    def verdict(self) -> str:
        return self.run["verdict"]

    def summary(self) -> dict[str, Any]:
        """What `policyfresh run --json` prints under `eval`."""
        metrics = self.run["metrics"] or {}
        review = self.cases.filter(pl.col("status") == "needs_review")
        return {
            "eval_run_id": self.run["eval_run_id"],
            "verdict": self.verdict,
            "candidate": self.run["candidate_version"],
            "cases": self.run["cases"],
            "hit_at_5": metrics.get("hit_at_5"),
            "mrr": metrics.get("mrr"),
            "evidence_recall_at_5": metrics.get("evidence_recall_at_5"),
            "affected": self.cases.filter("affected")["case_id"].to_list(),
            "newly_failing": self.changes.get("newly_failing", []),
            "needs_review": review["case_id"].to_list(),
            "reasons": self.run["reasons"],
            "skipped": self.run["skipped"],
            "judge": self.run["judge"],
            "confidence_model": self.run["confidence_model"],
            "reused": self.reused,
        }


def read_case_results(settings: Settings, eval_run_id: str | None) -> pl.DataFrame:
    """The case results of one evaluation run (none for no run)."""
    if eval_run_id is None:
        return empty_frame(EVAL_CASE_RESULTS)
    return delta_store.read_table(
        settings.table_uri(EVAL_CASE_RESULTS.name),
        EVAL_CASE_RESULTS.schema,
        where=pl.col("eval_run_id") == eval_run_id,
    )


def _table_version(settings: Settings, name: str) -> int | None:
    table = delta_store.open_table(settings.table_uri(name))
    return table.version() if table else None


@dataclass
class _Corpus:
    """Every document version, for what is current, what changed and what a source says."""

    history: pl.DataFrame

    def __post_init__(self) -> None:
        latest = self.history.filter(pl.col("is_current"))
        self.current = {r["doc_id"]: r for r in latest.iter_rows(named=True)}
        self.sha = {
            (r["doc_id"], r["doc_version"]): r["content_sha256"]
            for r in self.history.select("doc_id", "doc_version", "content_sha256").iter_rows(
                named=True
            )
        }
        self._texts: dict[str, str] = {}

    def live(self, doc_id: str) -> dict[str, Any] | None:
        row = self.current.get(doc_id)
        return row if row and not row["is_deleted"] else None

    def text(self, doc_id: str) -> str:
        if doc_id not in self._texts:
            row = self.live(doc_id)
            self._texts[doc_id] = normalize(row["text"]) if row else ""
        return self._texts[doc_id]

    def changed_since(self, doc_id: str, version: int) -> str | None:
        """How a document differs from one of its versions: deleted, or new text."""
        row = self.current.get(doc_id)
        if row is None or row["is_deleted"]:
            return f"{doc_id} deleted"
        if self.sha.get((doc_id, version)) != row["content_sha256"]:
            return f"{doc_id} changed (v{version} -> v{row['doc_version']})"
        return None


def _affected(case: GoldenCase, reference: dict[str, Any] | None, corpus: _Corpus) -> str | None:
    """Why a case is affected by what changed since its reference result: its source policy
    changed or was deleted, or a document it was answered from changed."""
    reasons = [f"source {doc} deleted" for doc in case.source_policy if not corpus.live(doc)]
    if reference is not None:
        for source in reference["sources"]:
            change = corpus.changed_since(source["doc_id"], source["doc_version"])
            if change and corpus.live(source["doc_id"]):
                reasons.append(f"source {change}")
        hits = {(h["doc_id"], h["doc_version"]) for h in reference["hits"]}
        for doc_id, version in sorted(hits):
            change = None if doc_id in case.source_policy else corpus.changed_since(doc_id, version)
            if change:
                reasons.append(f"previous hit {change}")
    return "; ".join(dict.fromkeys(reasons)) or None


def _applicable(golden: GoldenSet, corpus: _Corpus, settings: Settings):
    """Cases whose source policies are documents of this corpus (current or deleted), and a
    `file:line: reason` for each that is not. Out-of-scope cases apply only alongside others:
    a golden file none of whose sources are here does not apply at all."""
    cases, skipped = [], []
    for case in golden.cases:
        unknown = [doc for doc in case.source_policy if doc not in corpus.current]
        if unknown:
            verb = "is not a document" if len(unknown) == 1 else "are not documents"
            skipped.append(
                f"{golden.where(case)}: case {case.case_id}: source_policy "
                f"{', '.join(unknown)} {verb} of {settings.policies}"
            )
        else:
            cases.append(case)
    if not any(c.source_policy for c in cases):
        return [], [
            f"{golden.path}: none of its {len(golden.cases)} cases has its source policies in "
            f"{settings.policies}: nothing gates this release"
        ]
    return cases, skipped


class _PiiCheck:
    """Raw PII in a hit that its classification's rule does not allow. Only what the pattern
    recognizers find counts: a name is found from its whole document's context, and the same
    words cut out of it into a chunk may read as a name, or not. Findings are kept by text hash
    under the home for the same detector, so an edit rescans only the texts it changed."""

    STATE = "eval_pii_scan"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.detector = detector_id()
        kept = json.loads(read_state(settings, self.STATE) or "{}")
        self.known: dict[str, bool] = kept["found"] if kept.get("detector") == self.detector else {}
        self.seen: dict[str, bool] = {}

    def __call__(self, text: str, classification: str) -> bool:
        key = hashlib.sha256(text.encode()).hexdigest()
        if key not in self.seen:
            found = self.known.get(key)
            if found is None:
                found = any(s.entity_type not in NER_ENTITIES for s in detect_pii(text))
            self.seen[key] = found
        return self.seen[key] and self.settings.pii_action(classification) != "allow"

    def save(self) -> None:
        """Keep the findings of the texts this evaluation saw (no text, only hashes)."""
        write_state(self.settings, self.STATE, json.dumps({"detector": self.detector,
                                                            "found": self.seen}))  # fmt: skip


def _answer_vectors(settings: Settings, embedder: Embedder, answers: list[str]) -> np.ndarray:
    """The expected answers' vectors, kept in the home by model and text hash: the same golden
    answers are encoded once, not at every evaluation."""
    name = "eval_answer_vectors"
    kept = json.loads(read_state(settings, name) or "{}")
    same_model = kept.get("model") == embedder.model_id
    known: dict[str, list[float]] = kept["vectors"] if same_model else {}
    keys = [hashlib.sha256(a.encode()).hexdigest() for a in answers]
    missing = sorted({(k, a) for k, a in zip(keys, answers, strict=True) if k not in known})
    if missing:
        encoded = embedder.encode([a for _, a in missing])
        known |= {k: v.tolist() for (k, _), v in zip(missing, encoded, strict=True)}
        used = {k: known[k] for k in keys}
        write_state(settings, name, json.dumps({"model": embedder.model_id, "vectors": used}))
    return np.array([known[k] for k in keys], dtype=np.float32).reshape(-1, embedder.dimensions)


def _traced(settings: Settings, caller: str) -> pl.DataFrame:
    """The evaluation's own retrievals, read back from `retrieval_traces`."""
    return delta_store.read_table(
        settings.table_uri(RETRIEVAL_TRACES.name),
        RETRIEVAL_TRACES.schema,
        columns=["question", "hits", "latency_ms"],
        where=pl.col("caller") == caller,
    )


def _vectors(settings: Settings, version: int, chunk_ids: list[str]) -> dict[str, dict]:
    table = open_vectors(settings, version=version)
    found = table.to_lance().to_table(
        columns=["chunk_id", "text_sha256", "vector"], filter=f"chunk_id IN ({in_list(chunk_ids)})"
    )
    return {r["chunk_id"]: r for r in found.to_pylist()}


def _duplicates(trace_hits: list[dict], stored: dict[str, dict]) -> int:
    """Hits (as traced) that repeat an earlier hit's chunk or text."""
    seen: set[str] = set()
    repeats = 0
    for hit in trace_hits:
        keys = {hit["chunk_id"], (stored.get(hit["chunk_id"]) or {}).get("text_sha256") or ""}
        repeats += bool(keys & seen)
        seen |= keys - {""}
    return repeats


def retrieval_checks(case: GoldenCase, hits: list[tuple[str, str]]) -> dict[str, Any]:
    """The deterministic retrieval layer of one case over its ranked (doc_id, text) hits, the
    first EVAL_K as served, any further ones deeper down the same ranking: hit@1 and hit@5 of a
    source policy, reciprocal rank, evidence in the top 5, stale evidence in the top EVAL_K,
    and the ranks at which a source policy and the evidence first appear."""
    texts = [normalize(text or "") for _, text in hits]
    document = next((r for r, (doc, _) in enumerate(hits, 1) if doc in case.source_policy), None)
    evidence = next(
        (r for r, text in enumerate(texts, 1) if case.expected_evidence in text), None
    ) if case.expected_evidence else None  # fmt: skip
    return {
        "hit_at_1": document == 1,
        "hit_at_5": document is not None and document <= TOP,
        "reciprocal_rank": 1 / document if document and document <= EVAL_K else 0.0,
        "evidence_at_5": evidence is not None and evidence <= TOP,
        "stale_served": bool(case.stale_evidence)
        and any(case.stale_evidence in t for t in texts[:EVAL_K]),
        "document_rank": document,
        "evidence_rank": evidence,
    }


def _where(checks: dict[str, Any]) -> str:
    """Where a missed answer sits, for its owner: the page found and the passage not, or
    neither."""
    document, evidence = checks["document_rank"], checks["evidence_rank"]
    found = f"its document at rank {document}" if document else f"no source in the top {DEPTH}"
    passage = f"the evidence at rank {evidence}" if evidence else f"not in the top {DEPTH}"
    return f"{found}, {passage}"


def _ranked(
    settings: Settings,
    embedder: Embedder,
    version: int,
    cases: list[GoldenCase],
    results: list[SearchResult],
) -> dict[str, list[tuple[str, str]]]:
    """Each case's ranked (doc_id, text) hits: the served ones, or, when its source or its
    evidence is not among them, the same ranking down to DEPTH: how far down a miss sits."""
    ranked = {
        c.case_id: [(h.doc_id, h.text) for h in r.hits] for c, r in zip(cases, results, strict=True)
    }
    missed = []
    for case in cases:
        checks = retrieval_checks(case, ranked[case.case_id])
        if case.source_policy and (
            checks["document_rank"] is None
            or (case.expected_evidence and checks["evidence_rank"] is None)
        ):
            missed.append(case)
    if not missed:
        return ranked
    index = open_index(settings, version)
    vectors = embedder.encode([c.user_question for c in missed])
    for case, vector in zip(missed, vectors, strict=True):
        deeper = retrieve(index.dataset, case.user_question, vector, EVAL_K, None, depth=DEPTH)
        ranked[case.case_id] = [(row["doc_id"], row["text"]) for row in deeper.rows]
    return ranked


def _case_result(
    case: GoldenCase,
    result: SearchResult,
    context: dict[str, Any],
) -> dict[str, Any]:
    corpus: _Corpus = context["corpus"]
    scorer: Scorer = context["confidence"]
    threshold = scorer.threshold
    hits, top = result.hits, result.hits[:TOP]
    sources = set(case.source_policy)
    checks = retrieval_checks(case, context["ranked"][case.case_id])
    superseded = sum(
        (corpus.live(h.doc_id) or {}).get("doc_version") != h.doc_version for h in hits
    )
    pii = sum(context["pii"](h.text or "", h.classification) for h in hits)
    stored = context["vectors"]
    answer = context["answers"].get(case.case_id)
    similarity = None
    if answer is not None and top:
        similarity = round(max(float(np.dot(answer, stored[h.chunk_id]["vector"])) for h in top), 4)
    traced = context["traces"].get(result.question, [])
    retrievals = len(traced)
    duplicates = _duplicates(traced[0]["hits"], stored) if traced else 0
    confidence = scorer.score(result.signals)  # as search serves it from this evaluation on
    escalated = confidence < threshold

    failures = []
    if case.must_escalate and not escalated:
        failures.append(f"not escalated (confidence {confidence:.2f} >= {threshold})")
    if not case.must_escalate:
        if not checks["hit_at_5"]:
            failures.append(f"no source policy in the top {TOP} ({_where(checks)})")
        if not checks["evidence_at_5"]:
            failures.append(f"expected evidence not in the top {TOP} ({_where(checks)})")
        if escalated:
            failures.append(f"escalated (confidence {confidence:.2f} < {threshold})")
    if checks["stale_served"]:
        failures.append("stale evidence served")
    if superseded:
        failures.append(f"{superseded} hits from superseded document versions")
    if pii:
        failures.append(f"{pii} hits with raw PII")
    if retrievals != 1:
        failures.append(f"{retrievals} retrieval calls traced, not 1")
    if duplicates:
        failures.append(f"{duplicates} duplicate hits")
    moved = sources and not any(case.expected_evidence in corpus.text(s) for s in sources)
    if moved:
        failures.append("expected evidence is no longer in its source policy")
    affected_reason = context["affected"].get(case.case_id)
    passed = not failures
    status = "pass" if passed else "fail"
    if moved or (affected_reason and not passed):
        status = "needs_review"
    best = next((h for h in top if h.doc_id in sources), None)
    return {
        "eval_run_id": context["eval_run_id"],
        "case_id": case.case_id,
        "case_type": case.case_type,
        "risk_category": case.risk_category,
        "must_escalate": case.must_escalate,
        "sources": [
            {"doc_id": s, "doc_version": corpus.current[s]["doc_version"]}
            for s in case.source_policy
        ],
        "affected": affected_reason is not None,
        "affected_reason": affected_reason,
        "hits": hit_records(hits),
        **checks,
        "superseded_hits": superseded,
        "pii_hits": pii,
        "duplicate_hits": duplicates,
        "retrievals": retrievals,
        "similarity": similarity,
        "judge_score": context["judged"].get(case.case_id),
        "confidence": confidence,
        "escalated": escalated,
        "passed": passed,
        "status": status,
        "failures": failures,
        "expected_evidence": case.expected_evidence or None,
        "served_evidence": " ".join((best.text or "").split())[:EVIDENCE_CHARS] if best else None,
        "trace_id": result.trace_id,
    }


def _judge(settings: Settings, cases: list[GoldenCase], results: list[SearchResult]):
    """Judge scores per case, and how the judge is described in the run."""
    judge = Judge.from_settings(settings.judge_url, settings.judge_model)
    if judge is None:
        return {}, NOT_CONFIGURED
    scores: dict[str, float] = {}
    try:
        for case, result in zip(cases, results, strict=True):
            if case.must_escalate or not case.expected_answer:
                continue
            passages = [h.text or "" for h in result.hits[:TOP]]
            scores[case.case_id] = judge.groundedness(
                case.user_question, case.expected_answer, passages
            )
    except JudgeError as exc:
        log.warning("LLM judge failed; its scores are left out: %s", exc)
        return {}, f"{settings.judge_model}: failed ({exc})"
    return scores, settings.judge_model or ""


def evaluate(settings: Settings, embedder: Embedder, run_id: str) -> Evaluation | None:
    """Evaluate the newest index version (the candidate) with the golden cases and record it.
    An evaluation already made of the same candidate, documents, model and golden file is
    reused. None when there is no index yet."""
    golden = load_golden(settings.golden_cases) if settings.golden_cases else None
    table = open_vectors(settings)
    if table is None:
        return None
    candidate, served = table.version, served_release(table)
    golden_sha = golden.sha256 if golden else ""
    documents_version = _table_version(settings, "policy_documents")
    done = latest_eval(settings, candidate)
    if done and (done["golden_sha256"], done["model_id"], done["documents_version"]) == (
        golden_sha, embedder.model_id, documents_version
    ):  # fmt: skip
        if read_releases(settings).filter(pl.col("release") == candidate).is_empty():
            record_candidate(settings, done, run_id)  # its run was killed before recording it
        return Evaluation(done, read_case_results(settings, done["eval_run_id"]), reused=True)

    corpus = _Corpus(read_documents(settings, current_only=False))
    cases, skipped = _applicable(golden, corpus, settings) if golden else ([], [])
    if skipped:
        log.warning("%d golden cases not evaluated, first: %s", len(skipped), skipped[0])
    previous = latest_eval(settings)
    baseline = latest_eval(settings, served) if served is not None else None
    reference_run = baseline or previous
    reference = read_case_results(settings, reference_run and reference_run["eval_run_id"])
    by_case = {r["case_id"]: r for r in reference.iter_rows(named=True)}
    affected = {c.case_id: _affected(c, by_case.get(c.case_id), corpus) for c in cases}
    affected = {k: v for k, v in affected.items() if v}
    cases.sort(key=lambda c: c.case_id not in affected)  # affected cases run first

    eval_run_id = uuid.uuid4().hex
    caller = f"eval:{eval_run_id}"
    log.info("evaluating candidate %d: %d cases, %d affected", candidate, len(cases), len(affected))
    results = search_many(
        settings, embedder, [c.user_question for c in cases], k=EVAL_K, caller=caller,
        version=candidate,
    ) if cases else []  # fmt: skip
    traces: dict[str, list[dict]] = {}
    latencies: list[float] = []
    for row in _traced(settings, caller).iter_rows(named=True) if cases else []:
        traces.setdefault(row["question"], []).append(row)
        latencies.append(row["latency_ms"])
    chunk_ids = sorted({h.chunk_id for r in results for h in r.hits})
    answered = [c for c in cases if c.expected_answer and not c.must_escalate]
    encoded = _answer_vectors(settings, embedder, [c.expected_answer for c in answered])
    judged, judge = _judge(settings, cases, results)
    model, confidence_note = calibrate(
        settings,
        [c.case_id for c in cases],
        [r.signals for r in results],
        [not c.must_escalate for c in cases],
        golden_sha,
        f"{chunking_id(settings, Chunker.for_model(embedder))}/{RETRIEVAL_ID}",
    ) if cases else (None, "cosine: no golden cases")  # fmt: skip
    context = {
        "eval_run_id": eval_run_id,
        "corpus": corpus,
        "confidence": model or scorer(settings),
        "pii": _PiiCheck(settings),
        "vectors": _vectors(settings, candidate, chunk_ids) if chunk_ids else {},
        "answers": {c.case_id: v for c, v in zip(answered, encoded, strict=True)},
        "traces": traces,
        "affected": affected,
        "judged": judged,
        "ranked": _ranked(settings, embedder, candidate, cases, results),
    }
    rows = [_case_result(c, r, context) for c, r in zip(cases, results, strict=True)]
    context["pii"].save()
    frame = pl.DataFrame(rows, schema=empty_frame(EVAL_CASE_RESULTS).schema)
    metrics = run_metrics(frame, latencies) if rows else None
    baseline_cases = read_case_results(settings, baseline and baseline["eval_run_id"])
    threshold = context["confidence"].threshold
    verdict, reasons = decide(settings.gate, threshold, frame, baseline_cases)
    previous_cases = read_case_results(settings, previous and previous["eval_run_id"])
    changes = {
        **compare(frame, previous_cases),
        "previous_eval_run_id": previous and previous["eval_run_id"],
        "metric_deltas": metric_deltas(metrics or {}, previous and previous["metrics"]),
    }
    run = {
        "eval_run_id": eval_run_id,
        "evaluated_at": datetime.now(tz=UTC),
        "candidate_version": candidate,
        "release_before": served,
        "documents_version": documents_version,
        "chunks_version": _table_version(settings, "policy_chunks"),
        "model_id": embedder.model_id,
        "golden_file": str(golden.path) if golden else "",
        "golden_sha256": golden_sha,
        "cases": len(rows),
        "affected": len(affected),
        "metrics": metrics,
        "verdict": verdict,
        "reasons": reasons,
        "skipped": skipped,
        "judge": judge,
        "run_id": run_id,
        "confidence_model": confidence_note,
    }
    if rows:
        delta_store.append(
            EVAL_CASE_RESULTS, settings.table_uri(EVAL_CASE_RESULTS.name), frame, run_id
        )
    runs = pl.DataFrame([run], schema=empty_frame(EVAL_RUNS).schema)
    delta_store.append(EVAL_RUNS, settings.table_uri(EVAL_RUNS.name), runs, run_id)
    record_candidate(settings, run, run_id)
    log.info("evaluation %s of candidate %d: %s", eval_run_id, candidate, verdict)
    return Evaluation(run, frame, changes)
