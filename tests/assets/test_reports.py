"""The owners' reports in the asset graph: built after the publication step, so right after a
build of the bundled policies every page describes the release that build published."""

import dagster as dg

from orchestration.definitions import defs
from policyfresh.release.releases import release_status


def test_after_a_build_every_owner_page_says_the_release_is_served(settings):
    result = defs.resolve_job_def("refresh_policies").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    served = release_status(settings)["published"]
    assert served is not None and served["verdict"] == "passed"
    order = [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]
    assert order.index("served_index") < order.index("quality_reports")

    directory = settings.reports_dir
    assert f"Release {served['release']} is served" in (directory / "index.html").read_text()
    pages = sorted((directory / "owners").glob("*.html"))
    assert len(pages) > 1
    for page in pages:
        html = page.read_text()
        assert f"Release {served['release']} is served" in html, page
        assert "Candidate" not in html, page  # nothing waits
        rows = [row.split("</tr>")[0] for row in html.split('data-doc="')[1:]]
        assert rows, page
        assert not [row for row in rows if "pending" in row], page  # every document served
        assert "No version of your documents has been published yet" not in html, page
