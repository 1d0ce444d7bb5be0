"""Golden files: the bundled ones load, a malformed one is rejected with its lines."""

from collections import Counter

import pytest

from policyfresh.quality.golden import COLUMNS, GoldenFileError, load_golden
from tests.conftest import BUNDLED_GOLDEN, HANDBOOK_GOLDEN

HEADER = ",".join(COLUMNS)


def test_the_bundled_golden_sets_cover_every_kind_of_case():
    bundled = load_golden(BUNDLED_GOLDEN)
    handbook = load_golden(HANDBOOK_GOLDEN)
    assert len(bundled.cases) >= 60 and len(handbook.cases) >= 40
    for golden in (bundled, handbook):
        kinds = Counter(c.case_type for c in golden.cases)
        assert set(kinds) == {"fact", "paraphrase", "multi_policy", "ambiguous", "out_of_scope"}
        assert {c.risk_category for c in golden.cases} == {"low", "medium", "high"}
        assert all(c.must_escalate == (c.case_type == "out_of_scope") for c in golden.cases)
    real_edits = {c.case_id for c in handbook.cases if c.stale_evidence}
    assert {
        "18f-advanced-annual-leave", "18f-sick-leave-retirement", "18f-transit-benefit-registration"
    } <= real_edits  # fmt: skip


def test_a_malformed_golden_file_is_rejected_with_every_line(tmp_path):
    path = tmp_path / "golden.csv"
    path.write_text(
        HEADER + "\n"
        "a,Q?,A,fact,low,false,x.md,evidence,\n"
        "a,Q2?,A,fact,low,false,x.md,evidence,\n"
        "b,Q?,A,fact,severe,maybe,x.md,evidence,\n"
        "c,Q?,A,guess,low,false,,,\n"
    )
    with pytest.raises(GoldenFileError) as raised:
        load_golden(path)
    message = str(raised.value)
    assert f"{path}:3: duplicate case_id 'a' (first on line 2)" in message
    assert f"{path}:4: risk_category 'severe' is not one of" in message
    assert f"{path}:4: must_escalate 'maybe' is not true or false" in message
    assert f"{path}:5: case_type 'guess' is not one of" in message
    assert f"{path}:5: no source_policy" in message


def test_missing_and_unknown_columns_are_named(tmp_path):
    path = tmp_path / "golden.csv"
    path.write_text(HEADER.replace("stale_evidence", "stale") + "\n")
    with pytest.raises(GoldenFileError, match=r":1: missing columns \['stale_evidence'\]; "
                       r"unknown columns \['stale'\]"):  # fmt: skip
        load_golden(path)
