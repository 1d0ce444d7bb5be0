"""Fit the confidence model on the golden cases: a logistic regression over the retrieval's
signals, its threshold and its reliability (expected calibration error) taken from held-out
folds, refitted only when the golden file or the index configuration changed."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence

import numpy as np

from policyfresh.serve.confidence import (
    FEATURES,
    ConfidenceModel,
    load_model,
    model_path,
    save_model,
)
from policyfresh.store.config import Settings

log = logging.getLogger(__name__)

VERSION = "1"
FOLDS = 5
MIN_PER_CLASS = 3  # fewer must-escalate (or answerable) cases than this: no fit, the cosine serves
KEEP_ANSWERABLE = 0.95  # the threshold lets at least this share of answerable questions through
BINS = 10  # equal-width probability bins of the expected calibration error


def training_sha256(
    case_ids: Sequence[str], signals: Sequence[dict[str, float]], answerable: Sequence[bool]
) -> str:
    """A hash of the training rows: the same rows always fit the same model."""
    rows = sorted(
        (case, [round(s[f], 6) for f in FEATURES], bool(a))
        for case, s, a in zip(case_ids, signals, answerable, strict=True)
    )
    return hashlib.sha256(json.dumps([VERSION, FEATURES, rows]).encode()).hexdigest()


def expected_calibration_error(probabilities: np.ndarray, outcomes: np.ndarray) -> float:
    """Mean gap between predicted and observed rates over equal-width bins, by bin size."""
    bins = np.minimum((probabilities * BINS).astype(int), BINS - 1)
    gaps = [
        abs(probabilities[bins == b].mean() - outcomes[bins == b].mean()) * (bins == b).sum()
        for b in np.unique(bins)
    ]
    return round(float(sum(gaps) / len(probabilities)), 4)


def choose_threshold(probabilities: np.ndarray, answerable: np.ndarray) -> float:
    """The highest threshold that still lets KEEP_ANSWERABLE of the answerable cases through:
    it escalates as many must-escalate cases as that cost allows."""
    kept = np.sort(probabilities[answerable])
    allowed = kept[int(np.floor(len(kept) * (1 - KEEP_ANSWERABLE)))]
    return math.floor(float(allowed) * 10_000) / 10_000  # rounded down: that case still passes


def held_out(probabilities: np.ndarray, answerable: np.ndarray, threshold: float) -> dict:
    """Rates at a threshold: answerable cases answered, must-escalate cases escalated."""
    return {
        "answerable_kept": round(float((probabilities[answerable] >= threshold).mean()), 4),
        "must_escalate_caught": round(float((probabilities[~answerable] < threshold).mean()), 4),
    }


def _pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0))  # unweighted: calibrated


def out_of_fold(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each case's probability from a model fitted without its fold (stratified folds)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = min(FOLDS, int(y.sum()), int((~y).sum()))
    split = StratifiedKFold(folds, shuffle=True, random_state=0)
    return cross_val_predict(_pipeline(), x, y, cv=split, method="predict_proba")[:, 1]


def fit(
    case_ids: Sequence[str],
    signals: Sequence[dict[str, float]],
    answerable: Sequence[bool],
    golden_sha256: str,
    index_config: str,
) -> ConfidenceModel | None:
    """The model fitted on all cases, with the threshold and calibration error of held-out
    folds; None when either class has fewer than MIN_PER_CLASS cases."""
    y = np.array(answerable, dtype=bool)
    if min(int(y.sum()), int((~y).sum())) < MIN_PER_CLASS:
        return None
    x = np.array([[s[f] for f in FEATURES] for s in signals], dtype=float)
    probabilities = out_of_fold(x, y)
    threshold = choose_threshold(probabilities, y)
    model = _pipeline().fit(x, y)
    scaler, logistic = model.steps[0][1], model.steps[1][1]
    sha = training_sha256(case_ids, signals, answerable)
    return ConfidenceModel(
        model_id=f"logistic-{VERSION}@{sha[:12]}",
        features=FEATURES,
        mean=tuple(round(float(v), 8) for v in scaler.mean_),
        scale=tuple(round(float(v), 8) for v in scaler.scale_),
        coef=tuple(round(float(v), 8) for v in logistic.coef_[0]),
        intercept=round(float(logistic.intercept_[0]), 8),
        threshold=threshold,
        training_sha256=sha,
        golden_sha256=golden_sha256,
        index_config=index_config,
        cases=len(y),
        must_escalate=int((~y).sum()),
        held_out={
            "ece": expected_calibration_error(probabilities, y.astype(float)),
            **held_out(probabilities, y, threshold),
        },
    )


def calibrate(
    settings: Settings,
    case_ids: Sequence[str],
    signals: Sequence[dict[str, float]],
    answerable: Sequence[bool],
    golden_sha256: str,
    index_config: str,
) -> tuple[ConfidenceModel | None, str]:
    """The home's model, refitted when it is missing or was fitted on another golden file or
    index configuration; and what happened, in words, for the evaluation run."""
    current = load_model(settings)
    if current and (current.golden_sha256, current.index_config) == (golden_sha256, index_config):
        return current, f"{current.model_id} (kept)"
    if current is None:
        why = "no model yet"
    elif current.golden_sha256 != golden_sha256:
        why = "golden file changed"
    else:
        why = "index configuration changed"
    model = fit(case_ids, signals, answerable, golden_sha256, index_config)
    if model is None:
        model_path(settings).unlink(missing_ok=True)  # fitted on data that no longer applies
        note = (
            f"cosine: not fitted ({why}; fewer than {MIN_PER_CLASS} must-escalate or "
            "answerable cases)"
        )
        log.info("confidence model %s", note)
        return None, note
    save_model(settings, model)
    note = f"{model.model_id} (refitted: {why}; held-out ECE {model.held_out['ece']})"
    log.info("confidence model %s", note)
    return model, note
