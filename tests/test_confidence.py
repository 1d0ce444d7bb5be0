"""The calibrated confidence, on the real model and real tables: fitted on the golden cases by
the evaluation, kept while they and the index configuration hold, refitted when they change,
and the best hit's cosine, said so, when there is no fit."""

import polars as pl
import pytest

from policyfresh.cli.main import main
from policyfresh.quality.calibration import fit, training_sha256
from policyfresh.quality.evaluation import EVAL_K, read_case_results
from policyfresh.quality.golden import load_golden
from policyfresh.quality.pipeline import refresh
from policyfresh.quality.status import index_status
from policyfresh.serve.confidence import load_model, model_path
from policyfresh.serve.search import search, search_many
from policyfresh.store.config import Settings
from tests.test_evaluation import GOLDEN, edit, write_golden

OUT_OF_SCOPE = [
    (case_id, question, "Not covered: escalate.", "out_of_scope", "low", "true", "", "", "")
    for case_id, question in (
        ("oos-weather", "Will it rain in Chicago tomorrow afternoon?"),
        ("oos-pizza", "Which pizza place near the office delivers the fastest?"),
        ("oos-football", "Who won the football World Cup in 2022?"),
    )
]


@pytest.fixture
def calibrated(small_settings, tmp_path, monkeypatch) -> Settings:
    """The five small policies with five answerable and four must-escalate cases."""
    golden = write_golden(tmp_path / "golden.csv", [*GOLDEN, *OUT_OF_SCOPE])
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", str(golden))
    return Settings.load()


def test_the_fit_is_deterministic_kept_and_refitted_when_the_golden_file_changes(
    calibrated, embedder, tmp_path, monkeypatch
):
    built = refresh(calibrated, embedder, "build")
    assert built["eval"]["confidence_model"].startswith("logistic-1@")
    assert "(refitted: no model yet; held-out ECE" in built["eval"]["confidence_model"]
    model = load_model(calibrated)
    golden = load_golden(calibrated.golden_cases)
    assert model.golden_sha256 == golden.sha256 and (model.cases, model.must_escalate) == (9, 4)
    assert 0 <= model.held_out["ece"] <= 1 and 0 < model.threshold < 1

    # The same training rows (the cases' signals over the same release) fit the same model.
    results = search_many(calibrated, embedder, [c.user_question for c in golden.cases], EVAL_K)
    ids = [c.case_id for c in golden.cases]
    signals = [r.signals for r in results]
    answerable = [not c.must_escalate for c in golden.cases]
    assert training_sha256(ids, signals, answerable) == model.training_sha256
    assert fit(ids, signals, answerable, golden.sha256, model.index_config) == model

    served = search(calibrated, embedder, "What is the overdraft item fee?")
    assert served.confidence_model == model.model_id
    assert served.confidence == model.score(served.signals) and 0 <= served.confidence <= 1
    assert served.escalate == (served.confidence < model.threshold)
    cases = read_case_results(calibrated, built["eval"]["eval_run_id"])
    escalated = dict(zip(cases["case_id"], cases["escalated"], strict=True))
    assert escalated["oos"] and not escalated["fee"]

    stored = model_path(calibrated).read_bytes()
    edit(calibrated, "retail/overdraft-fees.md", "$29 per item", "$32 per item")
    edited = refresh(calibrated, embedder, "edit")
    assert edited["eval"]["confidence_model"] == f"{model.model_id} (kept)"
    assert model_path(calibrated).read_bytes() == stored

    extra = ("od-none", "Is there an overdraft fee for $40 overdrawn?", "No.", "fact", "low",
             "false", "retail/overdraft-fees.md", "overdrawn by $50.00 or less", "")  # fmt: skip
    changed = write_golden(tmp_path / "golden2.csv", [*GOLDEN, *OUT_OF_SCOPE, extra])
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", str(changed))
    again = refresh(Settings.load(), embedder, "golden")
    assert "(refitted: golden file changed;" in again["eval"]["confidence_model"]
    refitted = load_model(calibrated)
    assert refitted.golden_sha256 == load_golden(changed).sha256 and refitted.cases == 10
    assert refitted.model_id != model.model_id


def test_a_question_near_the_old_threshold_escalates_and_without_a_fit_the_cosine_serves(
    calibrated, embedder, capsys
):
    """One build: the fitted model escalates an out-of-scope question the old cosine threshold
    answered; with the fit gone, search serves the cosine and `status` says so."""
    refresh(calibrated, embedder, "build")
    main(["status"])
    assert f"confidence: {load_model(calibrated).model_id}, fitted on 9 golden cases" in (
        capsys.readouterr().out
    )
    # No policy of the five sets an ATM limit; its best hit's cosine is just above the old
    # threshold (0.42), which would have answered it.
    question = "What is the daily limit for ATM cash withdrawals?"
    result = search(calibrated, embedder, question)
    assert 0.42 <= result.signals["top_cosine"] < 0.5
    assert result.confidence_model == load_model(calibrated).model_id
    assert result.escalate and result.confidence < load_model(calibrated).threshold
    main(["search", question])
    assert "(escalate: a person should answer)" in capsys.readouterr().out
    main(["search", "What is the overdraft item fee?"])
    assert "escalate" not in capsys.readouterr().out

    model_path(calibrated).unlink()  # a home whose fit is missing
    served = search(calibrated, embedder, "What is the overdraft item fee?")
    assert served.confidence_model == "cosine"
    assert served.confidence == round(served.signals["top_cosine"], 4)
    assert served.escalate == (served.confidence < calibrated.gate.escalation_threshold)
    status = index_status(calibrated, embedder)["confidence"]
    assert status["model_id"] == "cosine" and "no fitted confidence model" in status["status"]
    main(["status"])
    assert "confidence: cosine, best hit's cosine: no fitted confidence model" in (
        capsys.readouterr().out
    )


def test_too_few_must_escalate_cases_fit_nothing_and_the_run_says_why(
    small_settings, embedder, tmp_path, monkeypatch
):
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", str(write_golden(tmp_path / "one.csv")))
    gated = Settings.load()
    built = refresh(gated, embedder, "build")  # one must-escalate case: nothing to fit
    assert built["eval"]["confidence_model"].startswith("cosine: not fitted (no model yet;")
    assert load_model(gated) is None
    cases = read_case_results(gated, built["eval"]["eval_run_id"])
    assert cases.filter(pl.col("case_id") == "oos")["escalated"].to_list() == [True]
