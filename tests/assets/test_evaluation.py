"""The gate in the asset graph: a blocked candidate is not published, the release stays, and
the owners' reports are still built after it, saying so."""

from pathlib import Path

import dagster as dg

from orchestration.definitions import defs
from policyfresh.release.releases import release_status
from policyfresh.store.config import Settings
from tests.test_evaluation import write_golden


def test_a_failed_release_gate_keeps_the_release_and_the_owners_get_their_reports(
    small_settings, tmp_path, monkeypatch
):
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", str(write_golden(tmp_path / "golden.csv")))
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("refresh_policies")
    assert job.execute_in_process(instance=instance).success
    served = release_status(Settings.load())["published"]["release"]
    pages = sorted((Settings.load().reports_dir / "owners").glob("*.html"))
    assert pages and all(f"Release {served} is served" in p.read_text() for p in pages)

    monkeypatch.setenv("POLICYFRESH_PII_RULES", "internal=block")
    result = job.execute_in_process(instance=instance, raise_on_error=False)

    gate = next(e for e in result.get_asset_check_evaluations() if e.check_name == "release_gate")
    assert not gate.passed
    blocking = gate.metadata["blocking_cases"].value
    assert blocking[0].startswith("dispute-pan (high risk)")
    ran = {
        e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert not ran["served_index"]["published"].value
    assert ran["served_index"]["message"].value.endswith(f"release {served} keeps serving")
    assert ran["quality_reports"]["release"].value == served
    index = Path(ran["quality_reports"]["index"].value)
    for page in [index, *pages]:  # rebuilt after the publication step declined the candidate
        html = page.read_text()
        assert f"Release {served} is served" in html, page
        assert f"Candidate {ran['regression_eval']['summary'].value['candidate']} is not " in html
        assert f"blocked by the evaluation; release {served} is still served" in html
    status = release_status(Settings.load())
    assert status["published"]["release"] == served
    assert status["waiting"]["why"] == "blocked by the evaluation"
