import threading
from datetime import UTC, datetime

import polars as pl
from deltalake import DeltaTable

from policyfresh.store import delta_store
from policyfresh.store.tables import RELEASE_AUDIT, empty_frame

WRITERS = 6


def test_concurrent_first_appends_to_a_new_table_all_commit(tmp_path):
    """Writers that find the table missing race to create and govern it (a metadata commit)
    while the others append: every append lands, none fails on the metadata conflict."""
    uri = str(tmp_path / RELEASE_AUDIT.name)
    start, failures = threading.Barrier(WRITERS), []

    def write(number: int) -> None:
        row = pl.DataFrame(
            [{"event_id": str(number), "at": datetime.now(tz=UTC), "action": "publish",
              "release": number, "previous_release": None, "actor": "test", "reason": "race"}],
            schema=empty_frame(RELEASE_AUDIT).schema,
        )  # fmt: skip
        start.wait()
        try:
            delta_store.append(RELEASE_AUDIT, uri, row, f"run-{number}")
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert pl.read_delta(DeltaTable(uri)).height == WRITERS
