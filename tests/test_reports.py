"""The owners' quality reports, built from the real pipeline's tables on the small corpus: each
owner sees only their documents, what needs their action is red, no PII value is ever written."""

import dataclasses
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.reports import quality_reports
from orchestration.resources import EmbedderResource, PolicyfreshResource
from policyfresh.cli.main import main
from policyfresh.index.vectors import open_vectors, vector_gaps
from policyfresh.ingest.documents import ingest_documents, read_documents
from policyfresh.quality.pipeline import refresh
from policyfresh.quality.reports import ACTIONS, UNOWNED, build_reports, owner_slugs
from policyfresh.release.releases import release_status
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.tables import HELD_DOCUMENTS, POLICY_DOCUMENTS, empty_frame
from tests.conftest import BUNDLED, ENVIRONMENT, SMALL, keep_only
from tests.offline import open_offline, row_text
from tests.test_evaluation import GOLDEN, write_golden

pytestmark = pytest.mark.xdist_group("reports")  # its module fixture builds a home

UNOWNED_DOC = "operations/business-continuity.txt"  # no OWNERS rule matches operations/
HELD = "compliance/sanctions-screening.md"
PENDING = "retail/card-disputes.md"  # ingested after the last refresh: waiting to be served
PLANTED = ("dana.whitlock@example.org", "(415) 555-0134")
# A must-escalate case the corpus answers confidently, new to the golden file in the second
# run (so no change can mark it affected): it fails.
FAILING = ("fee-escalate", "How much is the fee for an overdraft item?",
           "A person must answer.", "fact", "high", "true", "retail/overdraft-fees.md",
           "$29 per item", "")  # fmt: skip
# A case over two owners' documents: each owner sees it without the other's document.
SHARED_CASE = ("carry-shared", "Can I carry over unused annual leave days into next year?",
               "Up to 5 days.", "multi_policy", "medium", "false",
               "hr/annual-leave.md|retail/overdraft-fees.md",
               "Employees may carry over up to 5 unused days", "")  # fmt: skip
CHUNK_IDS = [f"chunk-{i}" for i in range(7)]


def edit(settings: Settings, doc_id: str, old: str, new: str) -> None:
    path = settings.policies / doc_id
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def append(settings: Settings, doc_id: str, line: str) -> None:
    path = settings.policies / doc_id
    path.write_text(path.read_text() + f"\n\n{line}\n")


def hold(settings: Settings, doc_id: str) -> None:
    """A held_documents row as the chunking stage writes it: the current version failed the
    chunks suite on 7 rows (one carrying a value that must never be shown)."""
    current = read_documents(settings).filter(pl.col("doc_id") == doc_id).row(0, named=True)
    rows = [{"doc_id": doc_id, "chunk_id": c} for c in CHUNK_IDS]
    rows[0]["text"] = "LEAKED-VALUE"
    failures = [{"suite": "policy_chunks", "expectation": "expect_column_values_to_not_be_null",
                 "column": "embed_text", "unexpected_count": 7, "rows": rows}]  # fmt: skip
    row = {
        "doc_id": doc_id,
        "doc_version": current["doc_version"],
        "served_version": current["doc_version"] - 1,
        "owners": current["owners"],
        "classification": current["classification"],
        "stage": "expectations",
        "reasons": ["policy_chunks: expect_column_values_to_not_be_null on embed_text (7 rows)"],
        "failures": json.dumps(failures),
        "attempt_id": "test",
        "held_at": datetime.now(tz=UTC),
        "run_id": "test",
    }
    frame = pl.DataFrame([row], schema=empty_frame(HELD_DOCUMENTS).schema)
    uri = settings.table_uri(HELD_DOCUMENTS.name)
    delta_store.merge(HELD_DOCUMENTS, uri, frame, "test", delta_store.upsert)


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_cache, embedder):
    """Two real refreshes of the small corpus plus an unowned document and planted PII: a
    golden case moved by an edit (needs_review), one failing, a held document, one pending."""
    root = tmp_path_factory.mktemp("reports")
    corpus = root / "policies"
    shutil.copytree(BUNDLED, corpus)
    keep_only(corpus, [*SMALL, UNOWNED_DOC])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("POLICYFRESH_HOME", str(root / "home"))
        env.setenv("POLICYFRESH_POLICIES", str(corpus))
        env.setenv("POLICYFRESH_MODEL_CACHE", str(model_cache))
        golden = write_golden(root / "golden.csv", [*GOLDEN, SHARED_CASE])
        env.setenv("POLICYFRESH_GOLDEN_CASES", str(golden))
        for name in ENVIRONMENT:
            env.delenv(name, raising=False)
        settings = Settings.load()
        line = f"For urgent escalations email {PLANTED[0]} or call {PLANTED[1]}."
        append(settings, "compliance/complaints-handling.md", line)
        assert refresh(settings, embedder, "build")["release"]["published"]
        edit(
            settings, "hr/annual-leave.md", "carry over up to 5 unused", "carry over up to 3 unused"
        )
        append(settings, HELD, "This policy is reviewed every year.")
        write_golden(golden, [*GOLDEN, SHARED_CASE, FAILING])
        edited = refresh(settings, embedder, "edit")
        assert sorted(edited["eval"]["needs_review"]) == ["carry-over", "carry-shared"]
        hold(settings, HELD)
        append(settings, PENDING, "Disputes are logged within one business day.")
        ingest_documents(settings, "pending")
        yield settings


def owners_of(settings: Settings) -> dict[str, list[str]]:
    return dict(read_documents(settings).select("doc_id", "owners").iter_rows())


def test_each_owner_sees_only_their_own_documents(built, embedder):
    reports = build_reports(built, embedder.model_id)
    owners = owners_of(built)
    names = {r.owner for r in reports.owners}
    assert names == {o for found in owners.values() for o in found} | {UNOWNED}
    index = reports.index.read_text()
    for report in reports.owners:
        page = report.path.read_text()
        assert f'href="owners/{report.slug}.html"' in index
        mine = {d for d, found in owners.items() if report.owner in (found or [UNOWNED])}
        assert report.documents == len(mine)
        for doc_id in owners:
            assert (doc_id in page) == (doc_id in mine), (report.owner, doc_id)


def test_a_held_document_is_red_at_the_top_with_its_failing_rows(built, embedder):
    reports = {r.owner: r for r in build_reports(built, embedder.model_id).owners}
    owners = owners_of(built)[HELD]  # from its front matter: not team:compliance
    assert [r.owner for r in reports.values() if r.needs_action["held"]] == sorted(owners)
    page = reports[owners[0]].path.read_text()
    summary = page.split('id="needs-action"')[1].split("</div>")[0]
    assert 'class="summary needs-action"' in page
    assert f"{HELD} v2 is held back (expectations); v1 is still served" in summary
    assert "expect_column_values_to_not_be_null" in page and "embed_text" in page
    assert all(c in page for c in CHUNK_IDS[:5]) and not any(c in page for c in CHUNK_IDS[5:])
    assert "and 2 more" in page
    assert "LEAKED-VALUE" not in page  # only key columns of failing rows are shown
    assert f'<tr class="needs-action" data-doc="{HELD}">' in page

    (leave,) = owners_of(built)["hr/annual-leave.md"]
    (retail,) = owners_of(built)["retail/overdraft-fees.md"]
    assert reports[leave].needs_action["needs_review"] == 2
    page = reports[leave].path.read_text()
    assert "carry-over" in page and "Employees may carry over up to 5 unused days" in page
    assert "carry-shared" in page and "and 1 of other owners" in page
    assert reports[retail].needs_action == dict.fromkeys(ACTIONS, 0) | {
        "failing": 1, "needs_review": 1
    }  # fmt: skip
    page = reports[retail].path.read_text()
    assert "fee-escalate" in page and "not escalated" in page and "carry-shared" in page
    calm = [r for r in reports.values() if not r.total]
    assert calm, reports
    for report in calm:
        assert "Nothing needs your action." in report.path.read_text()


def test_a_late_document_needs_its_owners_action(built, embedder):
    later = datetime.now(tz=UTC) + timedelta(hours=2)
    reports = build_reports(built, embedder.model_id, now=later)
    late = [r for r in reports.owners if r.needs_action["freshness"]]
    assert [r.owner for r in late] == sorted(owners_of(built)[PENDING])
    assert all(f"{PENDING} v2 is late" in r.path.read_text() for r in late)


def test_no_report_holds_a_pii_value(built, embedder):
    reports = build_reports(built, embedder.model_id)
    history = delta_store.read_table(
        built.table_uri(POLICY_DOCUMENTS.name), POLICY_DOCUMENTS.schema
    )
    values = {
        row["text"][span["start"] : span["end"]]
        for row in history.iter_rows(named=True)
        for span in row["pii_spans"]
    }
    assert set(PLANTED) <= values
    values -= {o for found in history["owners"] for o in found}  # owners are named, by design
    pages = [reports.index, *(r.path for r in reports.owners)]
    for path in pages:
        html = path.read_text()
        assert not [v for v in values if v in html], path
    compliance = next(r for r in reports.owners if r.owner == "team:compliance")
    row = compliance.path.read_text().split('data-doc="compliance/complaints-handling.md"')[1]
    assert "EMAIL_ADDRESS" in row.split("</tr>")[0]


def test_the_unowned_page_lists_documents_without_owners(built, embedder):
    reports = build_reports(built, embedder.model_id)
    unowned = reports.owners[-1]
    assert (unowned.owner, unowned.slug, unowned.documents) == (UNOWNED, "unowned", 1)
    assert unowned.path == built.reports_dir / "owners" / "unowned.html"
    assert UNOWNED_DOC in unowned.path.read_text()
    assert 'href="owners/unowned.html"' in reports.index.read_text()


def test_owner_slugs_are_file_names_and_unique():
    slugs = owner_slugs(["team:hr", "Team:HR", "lead@bank.com", "unowned", "../x"])
    assert slugs["lead@bank.com"] == "lead-bank.com" and slugs["../x"] == "x"
    assert slugs["team:hr"].startswith("team-hr-") and slugs["Team:HR"].startswith("team-hr-")
    assert slugs["unowned"] != "unowned"
    assert len(set(slugs.values())) == 5


def test_missing_vectors_are_named_per_document(built, embedder, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(built.home, home)
    copy = dataclasses.replace(
        built, home=home, lake_uri=(home / "lake").as_uri(), vectors_uri=str(home / "vectors")
    )
    assert vector_gaps(copy, embedder.model_id).is_empty()
    table = open_vectors(copy)
    table.delete("doc_id = 'hr/annual-leave.md' AND chunk_index = 0")
    gaps = vector_gaps(copy, embedder.model_id)
    assert gaps.rows() == [("hr/annual-leave.md", 1, 0, 0)]
    reports = {r.owner: r for r in build_reports(copy, embedder.model_id).owners}
    assert reports["hr-policies@northwind-bank.com"].needs_action["vectors"] == 1
    assert "hr/annual-leave.md: 1 missing, 0 stale, 0 orphaned" in (
        reports["hr-policies@northwind-bank.com"].path.read_text()
    )


def test_the_report_command(built, capsys):
    assert main(["report", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["index"] == str(built.reports_dir / "index.html")
    held = [o["owner"] for o in printed["owners"] if o["needs_action"]["held"]]
    assert held == sorted(owners_of(built)[HELD])
    assert all(Path(o["path"]).is_file() for o in printed["owners"])

    served = printed["release"]["published"]["release"]
    assert served == release_status(built)["published"]["release"]

    assert main(["report", "--owner", "team:financial-crime"]) == 0
    out = capsys.readouterr().out
    assert f"\n  release {served} served\n" in out
    assert "team-financial-crime.html" in out and "needs action: Documents held back: 1" in out
    assert "team-hr.html" not in out and "index" not in out

    assert main(["report", "--owner", "team:nobody"]) == 2
    err = capsys.readouterr().err
    assert "unknown owner 'team:nobody'" in err and "team:compliance" in err and UNOWNED in err


def test_the_quality_reports_asset_names_every_page(built):
    result = dg.materialize(
        [quality_reports],
        resources={"policyfresh": PolicyfreshResource(), "embedder": EmbedderResource()},
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    paths = {k: v.value for k, v in metadata.items() if isinstance(v, dg.PathMetadataValue)}
    assert paths["index"] == str(built.reports_dir / "index.html")
    assert "report/team-compliance" in paths and "report/unowned" in paths
    assert all(Path(p).is_file() for p in paths.values())
    table = metadata["owners"].value
    assert "team:compliance" in table and "needs_review" in table


def test_an_owner_report_in_the_browser(built, embedder, page, screenshots):
    """The page works offline (it loads nothing), is red where action is needed, shows the
    release served and each table's rows, and names no other owner's document."""
    owner = owners_of(built)[HELD][0]
    reports = build_reports(built, embedder.model_id)
    report = next(r for r in reports.owners if r.owner == owner)
    visit = open_offline(page, report.path)
    assert (visit.remote, visit.failed, page.console_errors) == ([], [], [])
    served = reports.release["published"]["release"]
    assert page.locator("#release").inner_text().startswith(f"Release {served} is served")
    tables = page.locator("body > table").all()
    assert len(tables) >= 2 and all(t.locator("tbody tr").first.is_visible() for t in tables)
    held_row = row_text(page, "body > table", "expect_column_values_to_not_be_null")
    assert held_row.split()[:4] == [HELD, "v2", "v1", "expectations"]
    assert row_text(page, "table.keys", "chunk-0").split() == [HELD, "chunk-0"]  # keys only
    documents = page.locator("body > table", has=page.locator("th", has_text="Classification"))
    listed = documents.locator(f'tr[data-doc="{HELD}"]')
    assert listed.is_visible() and listed.locator("td").first.inner_text() == HELD
    red = "rgb(176, 0, 32)"
    held = page.locator(f'tr[data-doc="{HELD}"]').first
    assert held.evaluate("row => getComputedStyle(row.cells[0]).color") == red
    summary = page.locator("#needs-action")
    assert summary.evaluate("e => getComputedStyle(e).borderTopColor") == red
    assert "held back" in summary.inner_text()
    body = page.inner_text("body")
    others = {d for d, found in owners_of(built).items() if owner not in found}
    assert others and not [d for d in others if d in body]
    page.screenshot(path=str(screenshots / f"{report.slug}.png"), full_page=True)
    assert page.console_errors == []
