"""How sure search is that the corpus answers a question: a small logistic model over signals
the retrieval already computed, fitted on the golden cases (see `policyfresh.quality.calibration`),
or the best hit's cosine when no fit exists. Scoring is numpy over stored coefficients: a cold
search imports no learning library."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policyfresh.serve.passages import chunk_terms, terms
from policyfresh.store.config import Settings

log = logging.getLogger(__name__)

SIGNALS = ("top_cosine", "margin", "bm25_top", "agreement", "same_document", "term_overlap",
           "unmatched_terms", "passage_overlap")  # fmt: skip
# What the model is fitted on. On held-out folds (benchmarks/retrieval.py) no set of signals
# escalated clearly more than the cosine alone (one or two of 17 must-escalate cases); these
# three did as well as any on both golden sets together, and the two shares of the question's
# words tell an out-of-scope question from an answerable one of the same cosine.
FEATURES = ("top_cosine", "term_overlap", "unmatched_terms")
TOP = 5  # hits compared for agreement and for a shared document


def features(
    question: str,
    rows: list[dict],
    nearest: list[dict],
    matched: list[dict],
    passages: list[dict],
) -> dict[str, float]:
    """The signals of one retrieval (rows with `_similarity`): best cosine and its margin over
    the second, best BM25 score, how many of the two retrievers' top hits agree, how many of the
    fused top hits share the best hit's document, the share of the question's words in the best
    hit, the share that no candidate holds, and the best sentence's weighted share among the
    candidates (`policyfresh.serve.passages`)."""
    cosines = sorted((r["_similarity"] for r in nearest), reverse=True)
    top = [r["chunk_id"] for r in nearest[:TOP]], [r["chunk_id"] for r in matched[:TOP]]
    asked = terms(question)
    best = rows[0] if rows else None
    found = chunk_terms(best) if best else frozenset()
    held = frozenset().union(*(chunk_terms(r) for r in nearest + matched))
    return {
        "top_cosine": cosines[0] if cosines else 0.0,
        "margin": cosines[0] - cosines[1] if len(cosines) > 1 else 0.0,
        "bm25_top": float(matched[0]["_score"]) if matched else 0.0,
        "agreement": len(set(top[0]) & set(top[1])) / TOP,
        "same_document": (
            sum(r["doc_id"] == best["doc_id"] for r in rows[:TOP]) / min(len(rows), TOP)
            if best
            else 0.0
        ),
        "term_overlap": len(asked & found) / len(asked) if asked else 0.0,
        "unmatched_terms": len(asked - held) / len(asked) if asked else 0.0,
        "passage_overlap": max((r["_passage"] for r in passages), default=0.0),
    }


@dataclass(frozen=True)
class Cosine:
    """The fallback without a fit: the best hit's cosine to the question, against the
    configured threshold (`POLICYFRESH_ESCALATION_THRESHOLD`)."""

    threshold: float
    reason: str
    model_id: str = "cosine"

    def score(self, values: dict[str, float]) -> float:
        return round(min(max(values["top_cosine"], 0.0), 1.0), 4)

    def describe(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "threshold": self.threshold, "status": self.reason}


@dataclass(frozen=True)
class ConfidenceModel:
    """A fitted logistic model: standardised features, coefficients, the threshold chosen on
    held-out folds, and what it was fitted on (the golden file, the index configuration and a
    hash of the training rows: the same rows always give the same model)."""

    model_id: str
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float
    training_sha256: str
    golden_sha256: str
    index_config: str
    cases: int
    must_escalate: int
    held_out: dict[str, float] = field(default_factory=dict)  # ECE and rates on held-out folds

    def score(self, values: dict[str, float]) -> float:
        """The probability that the corpus answers the question, in [0, 1]."""
        x = (np.array([values[f] for f in self.features]) - self.mean) / self.scale
        logit = float(x @ np.array(self.coef)) + self.intercept
        return round(1 / (1 + math.exp(-max(min(logit, 50.0), -50.0))), 4)

    def describe(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "threshold": self.threshold,
            "status": f"fitted on {self.cases} golden cases ({self.must_escalate} must escalate)",
            "training_sha256": self.training_sha256,
            "golden_sha256": self.golden_sha256,
            "index_config": self.index_config,
            "held_out": self.held_out,
        }


Scorer = ConfidenceModel | Cosine


def model_path(settings: Settings) -> Path:
    """Where the home's fitted model is kept: it belongs to this deployment's index and golden
    file, not to the code."""
    return settings.home / "confidence.json"


def save_model(settings: Settings, model: ConfidenceModel) -> None:
    path = model_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(model), indent=2, sort_keys=True) + "\n")
    temporary.replace(path)  # a reader never sees half a file


def load_model(settings: Settings) -> ConfidenceModel | None:
    """The fitted model, or None when there is none or it cannot be read (then said in the log)."""
    path = model_path(settings)
    try:
        stored = json.loads(path.read_text())
        stored["features"] = tuple(stored["features"])
        for name in ("mean", "scale", "coef"):
            stored[name] = tuple(stored[name])
        model = ConfidenceModel(**stored)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("confidence model %s unreadable, the cosine serves: %s", path, exc)
        return None
    if model.features != FEATURES:
        log.warning("confidence model %s has other features, the cosine serves", path)
        return None
    return model


def scorer(settings: Settings) -> Scorer:
    """The home's fitted model, else the cosine with the reason why."""
    model = load_model(settings)
    if model is not None:
        return model
    return Cosine(
        settings.gate.escalation_threshold,
        "best hit's cosine: no fitted confidence model (a refresh with golden cases that "
        "include must-escalate ones fits it)",
    )
