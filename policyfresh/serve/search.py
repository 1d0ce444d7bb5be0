"""Hybrid search over the served release, with a receipt per hit and a trace per search.

Reads go through Lance alone (no lancedb, no torch): a search from a cold shell must answer
in about a second when the query encoder is the light ONNX one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import lance
import numpy as np
import pyarrow.compute as pc

from policyfresh.index.vectors import METADATA, vectors_dataset
from policyfresh.release.releases import served_release
from policyfresh.serve.confidence import Scorer, features, scorer
from policyfresh.serve.passages import with_passages
from policyfresh.serve.trace_store import write_traces
from policyfresh.store.config import CLASSIFICATIONS, Settings
from policyfresh.store.errors import PolicyfreshError
from policyfresh.store.sql import in_list


class IndexNotBuiltError(PolicyfreshError):
    """Search before the first build or the first release: there is nothing to serve."""


class ModelMismatchError(PolicyfreshError):
    """The index was embedded by another model than the one asked to embed the question."""


# Reciprocal rank fusion: each retriever's candidates score 1 / (RRF_K + rank), summed.
RRF_K = 60
CANDIDATES = 10  # candidates each retriever gives the fusion (at least k): measured best
PASSAGE_WEIGHT = 0.3  # what a candidate's best sentence adds to its cosine: measured best
# The retrieval's configuration: with the chunking, what a fitted confidence model depends on.
RETRIEVAL_ID = f"rrf-{RRF_K}/candidates-{CANDIDATES}/passage-{PASSAGE_WEIGHT}"
NPROBES = 20  # IVF partitions probed once the table has a vector index (LanceDB's default)
COLUMNS = [*(c for c in METADATA if c != "embed_text"), "model_id", "vector"]


class QueryEncoder(Protocol):
    """What search needs of a model: its id and normalized vectors (torch or ONNX)."""

    @property
    def model_id(self) -> str: ...

    def load(self) -> object:
        """Load the weights now, not inside the first timed search."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Caller:
    """Who searches and the classifications they may read; local commands may read all."""

    name: str
    entitled: frozenset[str] = frozenset(CLASSIFICATIONS)
    api_key_id: str | None = None

    def where(self) -> str | None:
        """The filter applied inside both retrievers, before ranking; None when all may be read."""
        if not self.entitled:
            raise PolicyfreshError(f"caller {self.name!r} may read no classification")
        if self.entitled >= set(CLASSIFICATIONS):
            return None
        return f"classification IN ({in_list(sorted(self.entitled))})"


@dataclass(frozen=True)
class Index:
    """One version of the vector table, opened once: every hit of a search comes from it."""

    dataset: lance.LanceDataset
    release: int | None
    model_ids: frozenset[str]
    confidence: Scorer

    @property
    def version(self) -> int:
        return self.dataset.version

    def check_model(self, model_id: str) -> None:
        if self.model_ids - {model_id}:
            raise ModelMismatchError(
                f"index version {self.version} holds vectors of {sorted(self.model_ids)}, not "
                f"{model_id}: refresh the index with this model first"
            )


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk and everything needed to reconstruct it later."""

    doc_id: str
    doc_version: int
    chunk_id: str
    heading: str
    char_start: int
    char_end: int
    owner: list[str]
    classification: str
    score: float
    model_id: str
    index_version: int
    release: int | None
    trace_id: str
    text: str


@dataclass(frozen=True)
class SearchResult:
    """The hits of one question, and how sure search is that they answer it: `confidence` in
    [0, 1] from `confidence_model` over `signals`, `escalate` when it is under that model's
    threshold (a person should answer)."""

    trace_id: str
    question: str
    index_version: int
    release: int | None
    confidence: float
    escalate: bool
    confidence_model: str
    signals: dict[str, float]
    latency_ms: float
    hits: list[Hit]

    def to_dict(self) -> dict:
        return asdict(self)


def hit_records(hits: list[Hit]) -> list[dict]:
    """Hits as traces and evaluation results store them: rank, chunk, document version, score."""
    return [
        {
            "rank": rank,
            "chunk_id": h.chunk_id,
            "doc_id": h.doc_id,
            "doc_version": h.doc_version,
            "score": h.score,
        }
        for rank, h in enumerate(hits, start=1)
    ]


def open_index(settings: Settings, version: int | None = None) -> Index:
    """The served release (or `version`, a candidate for the evaluation), opened once."""
    latest = vectors_dataset(settings)
    if latest is None:
        raise IndexNotBuiltError(f"no vector index under {settings.vectors_uri}: run a refresh")
    release = None
    if version is None:
        release = version = served_release(latest)
        if release is None:
            raise IndexNotBuiltError(
                f"no release of {settings.vectors_uri} is published yet: run a refresh; "
                "`policyfresh releases` says why a candidate was not published"
            )
    dataset = latest.checkout_version(version)
    models = pc.unique(dataset.to_table(columns=["model_id"])["model_id"]).to_pylist()
    return Index(dataset, release, frozenset(models), scorer(settings))


@dataclass(frozen=True)
class Retrieval:
    """One question's fused ranking, best first, and what it was fused from: `nearest` by
    cosine, `matched` by BM25 (rows with `_score`) and `passages`, the candidates of both by
    their cosine and their best sentence's `_passage` (see `policyfresh.serve.passages`).
    Every row has `_similarity`, its cosine to the question."""

    rows: list[dict]
    nearest: list[dict]
    matched: list[dict]
    passages: list[dict]


def candidates(
    dataset: lance.LanceDataset, question: str, vector: np.ndarray, limit: int, where: str | None
) -> tuple[list[dict], list[dict]]:
    """The `limit` nearest rows by cosine and the `limit` best by BM25, `where` applied inside
    both, so a row the caller may not read never takes a place among them."""
    nearest = {"column": "vector", "q": vector, "k": limit, "metric": "cosine",
               "minimum_nprobes": NPROBES}  # fmt: skip
    found = (  # naming the score columns keeps Lance from warning that it adds them
        dataset.to_table(
            columns=[*COLUMNS, "_distance"], nearest=nearest, filter=where, prefilter=True
        ),
        dataset.to_table(
            columns=[*COLUMNS, "_score"], full_text_query=question, filter=where,
            prefilter=True, limit=limit,
        ),
    )  # fmt: skip
    by_vector, by_text = (
        [r | {"_similarity": float(np.dot(r["vector"], vector))} for r in table.to_pylist()]
        for table in found
    )
    return by_vector, by_text


def pool(*rankings: list[dict]) -> list[dict]:
    """The rows of several rankings, each once, in the order first seen."""
    return list({r["chunk_id"]: r for ranking in rankings for r in ranking}.values())


def fuse(rankings: tuple[list[dict], ...]) -> list[dict]:
    """Rows by reciprocal rank fusion, each with `_score`, its fusion score."""
    scores: dict[str, float] = {}
    rows: dict[str, dict] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            scores[row["chunk_id"]] = scores.get(row["chunk_id"], 0.0) + 1 / (RRF_K + rank)
            rows.setdefault(row["chunk_id"], row)
    return [rows[c] | {"_score": scores[c]} for c in sorted(scores, key=lambda c: -scores[c])]


def by_passage(question: str, rows: list[dict]) -> list[dict]:
    """The rows by their cosine plus PASSAGE_WEIGHT times their best sentence's share of the
    question's words, best first."""
    scored = with_passages(question, rows)
    return sorted(scored, key=lambda r: -(r["_similarity"] + PASSAGE_WEIGHT * r["_passage"]))


def _rankings(
    dataset: lance.LanceDataset, question: str, vector: np.ndarray, limit: int, where: str | None
) -> tuple[list[dict], list[dict], list[dict]]:
    nearest, matched = candidates(dataset, question, vector, limit, where)
    return nearest, matched, by_passage(question, pool(nearest, matched))[:limit]


def retrieve(
    dataset: lance.LanceDataset,
    question: str,
    vector: np.ndarray,
    k: int,
    where: str | None,
    depth: int = 0,
) -> Retrieval:
    """Top k rows by reciprocal rank fusion of three rankings: the vector and full-text (BM25)
    candidates, and the same candidates by their cosine and best sentence (`by_passage`),
    which lifts the chunk whose one sentence answers. With `depth` over k, the ranking goes on
    to `depth` rows from deeper candidate lists, the first k unchanged: how far down a missed
    passage sits."""
    rankings = _rankings(dataset, question, vector, max(k, CANDIDATES), where)
    rows = fuse(rankings)[:k]
    if depth > k:
        served = {r["chunk_id"] for r in rows}
        deeper = fuse(_rankings(dataset, question, vector, depth, where))
        rows += [r for r in deeper if r["chunk_id"] not in served][: depth - len(rows)]
    return Retrieval(rows, *rankings)


def answer(
    index: Index,
    question: str,
    vector: np.ndarray,
    k: int,
    caller: Caller,
    model_id: str,
    started: float,
) -> tuple[SearchResult, dict[str, Any]]:
    """Search one question whose vector `model_id` computed; its result and its trace row.
    `started` is when the question arrived, so latency includes the encoding."""
    retrieval = retrieve(index.dataset, question, vector, k, caller.where())
    rows = retrieval.rows
    signals = features(question, rows, retrieval.nearest, retrieval.matched, retrieval.passages)
    confidence = index.confidence.score(signals)
    latency = (time.perf_counter() - started) * 1000
    trace_id = uuid.uuid4().hex
    hits = [
        Hit(
            doc_id=r["doc_id"],
            doc_version=r["doc_version"],
            chunk_id=r["chunk_id"],
            heading=r["heading"],
            char_start=r["char_start"],
            char_end=r["char_end"],
            owner=r["owners"],
            classification=r["classification"],
            score=round(r["_score"], 6),
            model_id=r["model_id"],
            index_version=index.version,
            release=index.release,
            trace_id=trace_id,
            text=r["text"],
        )
        for r in rows
    ]
    result = SearchResult(
        trace_id=trace_id,
        question=question,
        index_version=index.version,
        release=index.release,
        confidence=confidence,
        escalate=confidence < index.confidence.threshold,
        confidence_model=index.confidence.model_id,
        signals={name: round(value, 6) for name, value in signals.items()},
        latency_ms=round(latency, 2),
        hits=hits,
    )
    trace = {
        "trace_id": trace_id,
        "searched_at": datetime.now(tz=UTC),
        "question": question,  # stored redacted, its hash keyed: see `trace_store`
        "k": k,
        "hits": hit_records(hits),
        "index_version": index.version,
        "model_id": model_id,
        "latency_ms": latency,
        "caller": caller.name,
        "release": index.release,
        "entitled": sorted(caller.entitled),
        "api_key_id": caller.api_key_id,
    }
    return result, trace


def answer_many(
    settings: Settings,
    encoder: QueryEncoder,
    questions: list[str],
    k: int = 5,
    caller: str = "cli",
    version: int | None = None,
    entitled: Collection[str] = CLASSIFICATIONS,
) -> tuple[list[SearchResult], list[dict[str, Any]]]:
    """Answer each question from the served release (or a candidate `version`, for the
    evaluation), all from one index version; the results and their trace rows, not written."""
    index = open_index(settings, version)
    index.check_model(encoder.model_id)
    encoder.load()
    who = Caller(caller, frozenset(entitled))
    results, traces = [], []
    started = time.perf_counter()
    vectors = encoder.encode(questions)  # one batch: many times faster than one call each
    share = (time.perf_counter() - started) / len(questions) if questions else 0.0
    for question, vector in zip(questions, vectors, strict=True):
        # Each latency counts its share of the batch's encoding and its own search.
        began = time.perf_counter() - share
        result, trace = answer(index, question, vector, k, who, encoder.model_id, began)
        results.append(result)
        traces.append(trace)
    return results, traces


def search_many(
    settings: Settings,
    encoder: QueryEncoder,
    questions: list[str],
    k: int = 5,
    caller: str = "cli",
    version: int | None = None,
    entitled: Collection[str] = CLASSIFICATIONS,
) -> list[SearchResult]:
    """`answer_many`, then the trace rows written in one commit."""
    if not questions:
        return []
    results, traces = answer_many(settings, encoder, questions, k, caller, version, entitled)
    write_traces(settings, traces, run_id=f"search:{caller}")
    return results


def search(
    settings: Settings,
    encoder: QueryEncoder,
    question: str,
    k: int = 5,
    caller: str = "app",
    entitled: Collection[str] = CLASSIFICATIONS,
) -> SearchResult:
    """The Python entry point for applications: one question, hits with receipts."""
    return search_many(settings, encoder, [question], k=k, caller=caller, entitled=entitled)[0]
