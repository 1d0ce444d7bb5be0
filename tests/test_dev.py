"""End to end under `ragfresh dev`: a saved policy edit reaches search with nobody clicking.

Slow (about two minutes on two cores): it builds the bundled corpus, starts the Dagster
webserver and daemon and the search service (`dev --serve`) on free ports of 127.0.0.1, edits
a page and waits until both `ragfresh search` and the service serve the edit, through
`benchmarks/edit_to_served.py`, which stops the servers whatever happens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import BUNDLED, BUNDLED_GOLDEN, SMALL, keep_only, load_benchmark

EDIT_TO_SERVED_BOUND_SECONDS = 240


def test_slow_a_saved_edit_is_served_by_a_sensor_run_with_nothing_clicked(tmp_path: Path):
    bench = load_benchmark()
    corpus = tmp_path / "corpus"  # five policies: the first build is quick, the flow the same
    shutil.copytree(BUNDLED, corpus)
    keep_only(corpus, SMALL)
    edit = bench.replacement_edit(
        corpus,
        "retail/overdraft-fees.md",
        old="$29 per item",
        new="$31 per item",
        question="How much is the overdraft fee per item?",
    )

    figures = bench.measure(
        corpus, BUNDLED_GOLDEN, tmp_path / "run", timeout=EDIT_TO_SERVED_BOUND_SECONDS, edit=edit
    )

    print(bench.report(figures))
    assert not bench.group_alive(figures["dev_pid"]), "the dev server outlived measure"
    # Requested by the policy source sensor through the daemon: nobody launched it.
    assert figures["run_tags"]["ragfresh/trigger"] == "policy_source_sensor"
    assert figures["run_tags"]["dagster/sensor_name"] == "policy_source_sensor"
    # measure returns only once a search's hits held the new fee from a release newer than
    # the one served before the edit (it raises past the bound); the old fee is gone.
    assert figures["release_after"] > figures["release_before"]
    assert not figures["old_text_still_served"]
    # The search service started beside the UI (`dev --serve`) served the new release too,
    # without a restart.
    assert figures["service_release_after"] == figures["release_after"]
    assert figures["served_by_service_seconds"] <= EDIT_TO_SERVED_BOUND_SECONDS
    times = figures["seconds_since_edit"]
    assert list(times) == list(bench.STAGES)
    ordered = [times[stage] for stage in bench.STAGES]
    assert ordered[0] >= 0 and ordered == sorted(ordered), times
    assert times["served"] <= EDIT_TO_SERVED_BOUND_SECONDS
    assert figures["dominant_stage"] in bench.STAGES
