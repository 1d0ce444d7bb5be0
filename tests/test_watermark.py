"""A refresh with nothing to do is known without doing it: any moved input says otherwise."""

import os
import shutil
import time
from dataclasses import replace

import lancedb

from policyfresh.index.vectors import VECTORS
from policyfresh.index.watermark import record_refresh, unchanged_since_refresh
from policyfresh.quality.pipeline import refresh
from tests.conftest import BUNDLED_GOLDEN, HashEmbedder

MODEL = HashEmbedder().model_id
SUMMARY = {"run_id": "r1", "checks": {"policy_documents:expectations": True}}


def built(settings):
    refresh(settings, HashEmbedder(), "build")
    record_refresh(settings, MODEL, SUMMARY)
    return settings


def test_nothing_moved_and_a_touch_is_no_change(small_settings):
    settings = built(small_settings)
    assert unchanged_since_refresh(settings, MODEL) == SUMMARY
    later = time.time() + 10
    os.utime(settings.policies / "hr" / "annual-leave.md", (later, later))
    assert unchanged_since_refresh(settings, MODEL) == SUMMARY


def test_an_edit_a_model_a_golden_file_or_a_setting_is_a_change(small_settings, tmp_path):
    settings = built(small_settings)
    assert unchanged_since_refresh(settings, "another-model@1") is None
    assert unchanged_since_refresh(replace(settings, pii_rules={"public": "allow"}), MODEL) is None
    golden = tmp_path / "golden.csv"
    shutil.copy(BUNDLED_GOLDEN, golden)
    with golden.open("a") as handle:
        handle.write("\n")
    assert unchanged_since_refresh(replace(settings, golden_cases=golden), MODEL) is None
    path = settings.policies / "hr" / "annual-leave.md"
    path.write_text(path.read_text() + "\nA new rule.\n")
    assert unchanged_since_refresh(settings, MODEL) is None


def test_a_row_deleted_by_hand_is_a_change(small_settings):
    settings = built(small_settings)
    table = lancedb.connect(settings.vectors_uri).open_table(VECTORS)
    table.delete(f"chunk_id = '{table.search().limit(1).to_list()[0]['chunk_id']}'")
    assert unchanged_since_refresh(settings, MODEL) is None


def test_no_record_means_run(small_settings):
    refresh(small_settings, HashEmbedder(), "build")
    assert unchanged_since_refresh(small_settings, MODEL) is None
