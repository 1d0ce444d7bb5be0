"""The impact of a publication: earlier answers whose quoted text the new release no longer
serves, on real 18F edits, a removal, a rename, a rescan, a rollback and an erasure."""

from __future__ import annotations

import csv
import html
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import httpx
import polars as pl
import pytest

from assets.impact import answer_impact
from orchestration.expectations import expectation_check
from orchestration.resources import EmbedderResource, PolicyfreshResource
from policyfresh.cli.main import main
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import open_vectors, read_vector_rows, vectors_dataset
from policyfresh.quality.pipeline import refresh
from policyfresh.quality.reports import build_reports
from policyfresh.release.purge import ERASED, purge_document
from policyfresh.release.releases import rollback, served_release
from policyfresh.serve.api_keys import parse_api_keys
from policyfresh.serve.impact import (
    Impact,
    Publication,
    impact,
    impact_of,
    publications,
    read_impact,
    reask,
    record_impact,
    write_impact,
)
from policyfresh.serve.impact_notice import ATTEMPTS
from policyfresh.serve.search import SearchResult, search_many
from policyfresh.serve.service import create_app
from policyfresh.serve.trace_store import prune_traces, read_traces
from policyfresh.store.config import CLASSIFICATIONS, Gate, Settings
from policyfresh.store.tables import ANSWER_IMPACT
from tests.conftest import HANDBOOK, HANDBOOK_GOLDEN
from tests.test_service import bearer, running

pytestmark = pytest.mark.xdist_group("impact")  # its module fixture builds a home

CHANGES = {
    c["path"].removeprefix("pages/"): c
    for c in map(json.loads, (HANDBOOK / "changes" / "changes.jsonl").read_text().splitlines())
}
LEAVE = "travel-and-leave/leave.md"
TTS = "hiring-staying-or-changing-jobs/leaving-tts.md"
TRANSIT = "general-information-and-resources/employee-resources-policies/transit-benefit.md"
FMLA = "travel-and-leave/fmla.md"  # unchanged but for a rescan of its planted email address
REMOVED = "travel-and-leave/advanced-sick-leave.md"
RENAMED = "travel-and-leave/paid-parental-leave.md"
NEW_PATH = "travel-and-leave/parental-leave.md"
ERASED_DOC = "general-information-and-resources/employee-resources-policies/daily-checkin.md"
EMAIL = "maria.okafor@example.com"
OWNERS = "travel-and-leave/** team:leave\n** team:handbook\n"
KEY_A, KEY_B = "impact-key-a-0000000001", "impact-key-b-0000000002"


@dataclass
class Story:
    """One home through five publications, and the answers given between them."""

    settings: Settings
    events: list[Publication]  # P2 edit+remove+rename, P3 edits, P4 rescan, P5 rollback
    answers: dict[str, list[SearchResult]]  # by stage: r1, r2, r3 (before the rescan)
    targeted: dict[str, SearchResult]  # one-hit answers quoting a chosen chunk


def _page(policies: Path, doc_id: str, source: Path) -> None:
    (policies / doc_id).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, policies / doc_id)


def _chunk(
    settings: Settings, doc_id: str, contains: str = "", lacks: str | None = None,
    within: str | None = None,
) -> str:  # fmt: skip
    """The served text of the first chunk of `doc_id` that contains `contains`, not `lacks`,
    and that is itself in `within` (a later version of the page) when given."""
    rows = read_vector_rows(open_vectors(settings), ["doc_id", "chunk_index", "text"])
    for text in rows.filter(pl.col("doc_id") == doc_id).sort("chunk_index")["text"]:
        wanted = contains in text and (lacks is None or lacks not in text) and len(text) > 80
        if wanted and (within is None or text in within):
            return text
    raise AssertionError(f"no chunk of {doc_id} with {contains!r}")


def _ask(settings: Settings, embedder: Embedder, texts: dict[str, str]) -> dict[str, SearchResult]:
    """Ask each chunk's own text, one hit: an answer that quotes exactly that chunk."""
    results = search_many(settings, embedder, list(texts.values()), k=1, caller="targeted")
    for (name, text), result in zip(texts.items(), results, strict=True):
        assert result.hits[0].text == text, name
    return dict(zip(texts, results, strict=True))


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Story:
    root = tmp_path_factory.mktemp("impact")
    policies = root / "pages"
    for doc_id in (FMLA, REMOVED, RENAMED, ERASED_DOC):
        _page(policies, doc_id, HANDBOOK / "pages" / doc_id)
    for doc_id, change in CHANGES.items():
        _page(policies, doc_id, HANDBOOK / change["before_file"])
    with (policies / FMLA).open("a") as page:
        page.write(f"\nFor FMLA paperwork, write to {EMAIL} at people-ops.\n")
    (policies / "OWNERS").write_text(OWNERS)
    golden = root / "golden.csv"  # the three edits' cases: the evaluation searches them too
    with HANDBOOK_GOLDEN.open() as source, golden.open("w", newline="") as out:
        reader = csv.DictReader(source)
        writer = csv.DictWriter(out, reader.fieldnames)
        writer.writeheader()
        writer.writerows(
            r for r in reader if r["case_id"] in {c["change_id"] for c in CHANGES.values()}
        )
    settings = Settings.load(home=root / "home", policies=policies, golden=golden)
    gate = Gate(min_hit_at_5=0.0, min_evidence_recall_at_5=0.0)  # three cases: no floor
    settings = replace(settings, gate=gate, allow_mass_delete=True)  # 2 of 7 files go

    def publish(run_id: str) -> None:  # the impact is not recorded: the tests record it
        published = refresh(settings, embedder, run_id, through="served_index")
        assert published["release"]["published"], run_id

    publish("r1")
    answers, targeted = {}, {}
    answers["r1"] = search_many(settings, embedder, [c["question"] for c in CHANGES.values()],
                                k=5, caller="assistant")  # fmt: skip
    leave, tts = CHANGES[LEAVE], CHANGES[TTS]
    targeted |= _ask(settings, embedder, {
        "leave_edited": _chunk(settings, LEAVE, leave["evidence_before"]),
        "leave_kept": _chunk(settings, LEAVE, "carry over", within=_after(LEAVE)),
        "tts_edited": _chunk(settings, TTS, tts["evidence_before"]),
        "fmla": _chunk(settings, FMLA, "FMLA", lacks="EMAIL_ADDRESS"),
        "fmla_email": _chunk(settings, FMLA, "<EMAIL_ADDRESS>"),
        "removed": _chunk(settings, REMOVED),
        "renamed": _chunk(settings, RENAMED),
        "erased": _chunk(settings, ERASED_DOC),
    })  # fmt: skip

    _page(policies, LEAVE, HANDBOOK / leave["after_file"])
    (policies / REMOVED).unlink()
    (policies / RENAMED).rename(policies / NEW_PATH)
    publish("r2")
    answers["r2"] = list(_ask(settings, embedder, {
        "tts_edited_r2": _chunk(settings, TTS, tts["evidence_before"]),
        "leave_new": _chunk(settings, LEAVE, leave["evidence_after"]),
    }).values())  # fmt: skip
    targeted |= dict(zip(["tts_edited_r2", "leave_new"], answers["r2"], strict=True))

    for doc_id in (TTS, TRANSIT):
        _page(policies, doc_id, HANDBOOK / CHANGES[doc_id]["after_file"])
    publish("r3")
    answers["r3"] = list(_ask(settings, embedder, {
        "tts_new": _chunk(settings, TTS, tts["evidence_after"]),
        "fmla_email_r3": _chunk(settings, FMLA, "<EMAIL_ADDRESS>"),
    }).values())  # fmt: skip
    targeted |= dict(zip(["tts_new", "fmla_email_r3"], answers["r3"], strict=True))

    (policies / "PII_ALLOW").write_text(f"{EMAIL}\n")  # a rescan: only the redaction moves
    publish("r4")
    rollback(settings, to=publications(settings)[1].release, actor="test", reason="check")
    events = publications(settings)
    assert [e.action for e in events] == ["publish"] * 4 + ["rollback"]
    return Story(settings, events[1:], answers, targeted)


def _quoting(answers: list[SearchResult], now: dict[str, str | None]) -> set[str]:
    """Answers with a hit whose text its document no longer holds: `now` maps each document
    that changed to its new text (None when it is gone)."""
    return {
        a.trace_id
        for a in answers
        for h in a.hits
        if h.doc_id in now and (now[h.doc_id] is None or h.text not in now[h.doc_id])
    }


def _listed(found: Impact) -> set[str]:
    return set(found.rows["trace_id"])


def _after(doc_id: str) -> str:
    return (HANDBOOK / CHANGES[doc_id]["after_file"]).read_text()


def _before(doc_id: str) -> str:
    return (HANDBOOK / CHANGES[doc_id]["before_file"]).read_text()


def test_a_real_edit_lists_the_answers_that_quoted_the_edited_passage_with_old_and_new_text(
    story,
):
    edit = story.events[0]
    found = impact_of(story.settings, [edit])
    answers = story.answers["r1"] + list(story.targeted.values())
    expected = _quoting(
        [a for a in answers if a.release != edit.release],
        {LEAVE: _after(LEAVE), REMOVED: None, RENAMED: None},
    )
    assert _listed(found) == expected
    assert found.rows["new"].all() and set(found.rows["affected_by"]) == {edit.release}
    for kept in ("leave_kept", "tts_edited", "fmla", "erased"):  # same and other documents
        assert story.targeted[kept].trace_id not in expected
    [edited] = [a for a in found.answers if a.trace_id == story.targeted["leave_edited"].trace_id]
    [hit] = edited.hits
    leave = CHANGES[LEAVE]
    assert (hit.status, hit.doc_id, hit.doc_version, hit.owners) == (
        "changed",
        LEAVE,
        1,
        ["team:leave"],
    )
    assert leave["evidence_before"] in hit.old_text and leave["evidence_after"] in hit.new_text
    assert edited.question.startswith(hit.old_text[:40])  # the question as stored
    assert edited.release == story.events[0].previous_release and edited.caller == "targeted"
    [asked] = [a for a in story.answers["r1"] if a.question == leave["question"]]
    assert any(leave["evidence_before"] in h.text for h in asked.hits)  # the edit's question
    [real] = [a for a in found.answers if a.trace_id == asked.trace_id]
    assert any(
        leave["evidence_before"] in h.old_text and leave["evidence_after"] in h.new_text
        for h in real.hits
    )
    documents = {d.doc_id: d for d in found.documents}
    assert (documents[LEAVE].old_version, documents[LEAVE].new_version) == (1, 2)
    assert documents[LEAVE].answers == len({a.trace_id for a in found.answers
                                            if any(h.doc_id == LEAVE for h in a.hits)})  # fmt: skip
    assert {d: documents[d].change for d in (LEAVE, REMOVED, RENAMED, NEW_PATH)} == {
        LEAVE: "changed",
        REMOVED: "removed",
        RENAMED: "moved",
        NEW_PATH: "added",
    }
    assert FMLA not in documents  # unchanged


def test_a_removed_document_and_a_renamed_one(story):
    found = impact_of(story.settings, [story.events[0]])
    hits = {a.trace_id: a.hits for a in found.answers}
    [removed] = hits[story.targeted["removed"].trace_id]
    assert (removed.status, removed.new_doc_id, removed.new_text) == ("removed", None, None)
    assert removed.old_text == story.targeted["removed"].hits[0].text
    [renamed] = hits[story.targeted["renamed"].trace_id]
    assert (renamed.status, renamed.doc_id, renamed.new_doc_id) == ("moved", RENAMED, NEW_PATH)
    assert renamed.new_text == renamed.old_text == story.targeted["renamed"].hits[0].text


def _given_before(story: Story, event: Publication) -> list[SearchResult]:
    """Answers served before a publish (releases grow with each publish of the story)."""
    answers = story.answers["r1"] + list(story.targeted.values())
    return [a for a in answers if a.release < event.release]


CHANGED_BY_P2 = {LEAVE: _after(LEAVE), REMOVED: None, RENAMED: None}
CHANGED_BY_P3 = {TTS: _after(TTS), TRANSIT: _after(TRANSIT)}


def test_a_later_publication_lists_every_answer_still_wrong_and_only_those(story):
    """Invariant 12 both ways: an answer whose quoted text is still not served is listed again
    at an unrelated later publication, not new; one whose text is served is never listed."""
    edit, edits = story.events[0], story.events[1]
    found = impact_of(story.settings, [edits])
    earlier = _given_before(story, edits)
    assert _listed(found) == _quoting(earlier, CHANGED_BY_P2 | CHANGED_BY_P3)
    new = set(found.rows.filter(pl.col("new"))["trace_id"])
    assert new == _listed(found) - _listed(impact_of(story.settings, [edit]))
    t = story.targeted
    [still] = [a for a in found.answers if a.trace_id == t["leave_edited"].trace_id]
    assert (still.new, still.affected_by) == (False, edit.release)
    assert still.release == edit.previous_release
    assert {t["tts_edited"].trace_id, t["tts_edited_r2"].trace_id} <= new
    for served in ("leave_new", "leave_kept", "fmla", "fmla_email"):  # text still served
        assert t[served].trace_id not in _listed(found)
    documents = {d.doc_id: d for d in found.documents}
    assert documents[TTS].change == "changed" and documents[TTS].new_answers > 0
    assert (documents[LEAVE].change, documents[LEAVE].new_answers) == ("earlier", 0)


def test_a_rescan_that_only_changes_redaction_is_no_change(story):
    rescan = story.events[2]
    quoted = story.targeted["fmla_email_r3"].hits[0]
    now = (
        vectors_dataset(story.settings, version=rescan.release)
        .to_table(
            columns=["chunk_id", "doc_id", "doc_version", "text"], filter=f"doc_id = '{FMLA}'"
        )
        .to_pylist()
    )
    assert quoted.chunk_id not in {r["chunk_id"] for r in now}  # the fast filter did not decide
    assert "<EMAIL_ADDRESS>" in quoted.text and any(EMAIL in r["text"] for r in now)
    assert all(r["doc_version"] == quoted.doc_version + 1 for r in now)  # rescanned
    found = impact_of(story.settings, [rescan])
    assert FMLA not in set(found.rows["doc_id"])
    assert _listed(found) == _quoting(_given_before(story, rescan), CHANGED_BY_P2 | CHANGED_BY_P3)
    assert not found.rows["new"].any() and found.to_dict()["totals"]["new_answers"] == 0
    assert {d.change for d in found.documents} == {"earlier"}


def test_since_reports_each_answer_once_against_the_first_release_that_changed_it(story):
    first = story.events[0].previous_release
    found = impact(story.settings, since=first)
    assert [p.event_id for p in found.publications] == [e.event_id for e in story.events]
    per_answer = found.rows.group_by("trace_id").agg(pl.col("event_id").n_unique())
    assert per_answer["event_id"].max() == 1
    against = dict(found.rows.select("trace_id", "event_id").unique().rows())
    edit, edits, _, undo = story.events
    t = story.targeted
    assert against[t["leave_edited"].trace_id] == edit.event_id
    assert against[t["tts_edited"].trace_id] == edits.event_id
    assert against[t["tts_edited_r2"].trace_id] == edits.event_id
    assert against[t["tts_new"].trace_id] == undo.event_id  # the rollback undid its text
    rolled = found.rows.filter(pl.col("event_id") == undo.event_id)
    assert set(rolled["action"]) == {"rollback"} and set(rolled["release"]) == {undo.release}
    undone = impact_of(story.settings, [undo]).rows
    assert set(undone.filter(pl.col("new"))["trace_id"]) == set(rolled["trace_id"])
    assert t["leave_edited"].trace_id in set(undone["trace_id"]) - set(rolled["trace_id"])
    assert t["leave_new"].trace_id not in against and t["fmla_email"].trace_id not in against
    as_json = json.loads(json.dumps(found.to_dict()))
    assert as_json["release"] == undo.release and as_json["previous_release"] == first
    assert {a["trace_id"] for a in as_json["answers"]} == set(against)
    assert as_json["totals"]["answers"] == len(against)
    owned = impact(story.settings, since=first, owner="team:handbook")
    assert set(owned.rows["doc_id"]) == {TTS, TRANSIT} & set(found.rows["doc_id"])
    assert all("team:handbook" in d.owners for d in owned.documents)
    mine = impact(story.settings, since=first, caller="assistant")
    assert set(mine.rows["caller"]) <= {"assistant"} and _listed(mine) <= set(against)


def test_the_evaluations_own_searches_are_never_listed(story):
    found = impact(story.settings, since=story.events[0].previous_release)
    evaluations = read_traces(story.settings, pl.col("caller").str.starts_with("eval:"))
    assert evaluations.height and evaluations["release"].is_null().all()
    quoted = {h["chunk_id"] for hits in evaluations["hits"] for h in hits}
    assert quoted & set(found.rows["chunk_id"])  # they quoted text that changed
    assert not set(evaluations["trace_id"]) & _listed(found)


def test_reask_asks_the_affected_questions_again_against_the_new_release(story, embedder):
    edit = story.events[0]
    found = impact_of(story.settings, [edit])
    traced = read_traces(story.settings).height
    again = reask(story.settings, embedder, found)
    assert read_traces(story.settings).height == traced  # re-asks are no answers
    assert set(again) == _listed(found)
    edited = again[story.targeted["leave_edited"].trace_id]
    assert edited.top_changed and edited.top["doc_id"] == LEAVE
    assert CHANGES[LEAVE]["evidence_after"] in edited.top["text"]
    entry = next(a for a in found.to_dict(again)["answers"] if a["trace_id"] == edited.trace_id)
    assert entry["reask"]["top_changed"] is True


@pytest.fixture
def copied(story: Story, tmp_path: Path) -> Settings:
    """A copy of the story's home and policies, for tests that write."""
    shutil.copytree(story.settings.home, tmp_path / "home")
    shutil.copytree(story.settings.policies, tmp_path / "pages")
    return replace(story.settings, home=tmp_path / "home", policies=tmp_path / "pages",
                   lake_uri=(tmp_path / "home" / "lake").as_uri(),
                   vectors_uri=str(tmp_path / "home" / "vectors"))  # fmt: skip


def test_an_erased_document_is_listed_as_erased_with_no_text(story, copied):
    text = story.targeted["erased"].hits[0].text
    (copied.policies / ERASED_DOC).unlink()
    purged = purge_document(copied, ERASED_DOC, reason="takedown", requested_by="test")
    found = impact(copied)
    assert found.release == purged.republished_release
    [answer] = [a for a in found.answers if a.trace_id == story.targeted["erased"].trace_id]
    [hit] = answer.hits
    assert (hit.status, hit.doc_id, hit.chunk_id) == ("erased", ERASED, None)
    assert hit.old_text is None and hit.new_text is None
    assert text[:60] not in json.dumps(found.to_dict())
    with pytest.raises(Exception, match="no longer kept"):
        impact(copied, release=story.events[0].release)


def test_the_impact_is_written_once_per_publication_answer_and_hit(story, copied):
    found = impact(copied, since=story.events[0].previous_release)
    assert write_impact(copied, found, run_id="t") == found.rows.height > 0
    write_impact(copied, found, run_id="t")
    stored = read_impact(copied)
    assert stored.height == found.rows.height
    assert stored.sort("event_id", "trace_id", "rank").equals(
        found.rows.sort("event_id", "trace_id", "rank")
    )


# --- where people see it: the command line, the asset and its notice, the service, reports --


def _cli(settings: Settings, capsys: pytest.CaptureFixture, *args: str) -> str:
    argv = ["--home", str(settings.home), "--policies", str(settings.policies), "impact", *args]
    assert main(argv) == 0
    return capsys.readouterr().out


def test_the_command_groups_by_owner_and_document_with_old_and_new_text_side_by_side(story, capsys):
    edits = story.events[1]  # its release was published once (the rollback serves the one before)
    text = _cli(story.settings, capsys, "--release", str(edits.release), "--owner", "team:handbook")
    assert "team:leave" not in text and "\nteam:handbook\n" in text
    assert f"  {TTS} v1 -> v2 (changed)" in text
    assert f"trace {story.targeted['tts_edited'].trace_id} " in text
    was, now = [], []
    for line in text.splitlines():
        if line.startswith(" " * 8) and " | " in line and not line.strip().startswith("was"):
            left, _, right = line[8:].partition(" | ")
            was.append(left.strip())
            now.append(right.strip())
    assert CHANGES[TTS]["evidence_before"] in " ".join(was)
    assert CHANGES[TTS]["evidence_after"] in " ".join(now)
    first = publications(story.settings)[0]
    nothing = _cli(story.settings, capsys, "--release", str(first.release))
    assert "No earlier answer is affected" in nothing


def test_the_command_prints_one_json_object_and_says_reasked_questions_are_redacted(story, capsys):
    first = story.events[0].previous_release
    printed = json.loads(_cli(story.settings, capsys, "--since", str(first), "--json"))
    found = impact(story.settings, since=first)
    assert {a["trace_id"] for a in printed["answers"]} == _listed(found)
    assert all(a["new"] for a in printed["answers"])  # --since: each where it was first wrong
    assert printed["totals"]["answers"] == len(_listed(found))
    edits = story.events[1]
    asked = json.loads(
        _cli(story.settings, capsys, "--release", str(edits.release), "--caller", "targeted",
             "--reask", "--json")
    )  # fmt: skip
    assert "only redacted questions are stored" in asked["reask_note"]
    assert {a["caller"] for a in asked["answers"]} == {"targeted"}
    assert all("reask" in a for a in asked["answers"])


class Webhook:
    """A local receiver of impact notices: fails the first `failures` requests with a 500,
    and records, with each body, the release served when it arrived."""

    def __init__(self, settings: Settings, failures: int) -> None:
        self.received: list[dict] = []
        self.failures = failures
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                served = served_release(vectors_dataset(settings))
                hook.received.append({"body": body, "served": served})
                failed = len(hook.received) <= hook.failures
                self.send_response(500 if failed else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/impact"


@pytest.fixture
def webhook(copied: Settings) -> Iterator[Webhook]:
    hook = Webhook(copied, failures=1)
    thread = threading.Thread(target=hook.httpd.serve_forever, daemon=True)
    thread.start()
    yield hook
    hook.httpd.shutdown()
    hook.httpd.server_close()


def _materialize(settings: Settings) -> dict:
    resources = {
        "policyfresh": PolicyfreshResource(
            home=str(settings.home), policies=str(settings.policies)
        ),
        "embedder": EmbedderResource(),
    }
    result = dg.materialize([answer_impact, expectation_check(ANSWER_IMPACT.name)],
                            resources=resources)  # fmt: skip
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.passed, check.metadata
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def test_the_asset_records_each_publication_and_notifies_those_with_new_answers(
    story, copied, webhook, monkeypatch
):
    monkeypatch.setenv("POLICYFRESH_IMPACT_WEBHOOK", webhook.url)
    metadata = _materialize(copied)
    events = publications(copied)
    expected = pl.concat([impact_of(copied, [e]).rows for e in events])
    stored = read_impact(copied)
    assert stored.height == expected.height > 0
    assert set(stored.select("event_id", "trace_id", "new").rows()) == set(
        expected.select("event_id", "trace_id", "new").rows()
    )
    assert (metadata["publications"], metadata["notices_failed"]) == (len(events), 0)
    assert (
        f"| {story.events[0].release} | {LEAVE} | team:leave |" in metadata["by_document_and_owner"]
    )
    with_news = [e.event_id for e in events if impact_of(copied, [e]).rows["new"].any()]
    assert len(with_news) == 3  # the edits, the next edits, the rollback; not the rescan
    bodies = [r["body"] for r in webhook.received]
    assert [b["event_id"] for b in bodies] == [with_news[0], *with_news]  # a 500, then again
    last = bodies[-1]
    assert webhook.received[-1]["served"] == last["release"]  # served before the notice
    assert last["totals"]["new_answers"] == impact_of(copied, [events[-1]]).totals()["new_answers"]
    sent = json.dumps(bodies)
    assert not any(text in sent for text in stored["old_text"].drop_nulls())
    assert not any(q in sent for q in stored["question"])

    again = _materialize(copied)  # nothing new: nothing written, nobody told twice
    assert again["publications"] == 0 and len(webhook.received) == 4
    rollback(copied, to=events[0].release, actor="test", reason="the old leave text again")
    monkeypatch.setenv("POLICYFRESH_IMPACT_WEBHOOK", webhook.url.replace("127.0.0.1", "localhost"))
    assert _materialize(copied)["publications"] == 1
    assert webhook.received[-1]["body"]["event_id"] == publications(copied)[-1].event_id
    assert story.targeted["leave_new"].trace_id in set(read_impact(copied)["trace_id"])


def test_a_notice_that_keeps_failing_is_reported_and_blocks_nothing(copied, webhook, monkeypatch):
    record_impact(copied, run_id="before")  # every publication so far is recorded
    rollback(copied, to=publications(copied)[0].release, actor="test", reason="undo")
    webhook.failures = ATTEMPTS
    monkeypatch.setenv("POLICYFRESH_IMPACT_WEBHOOK", webhook.url)
    metadata = _materialize(copied)
    assert metadata["notices_failed"] == 1 and "HTTP 500" in metadata["notices"]
    assert len(webhook.received) == ATTEMPTS  # one publication, tried ATTEMPTS times
    assert {r["served"] for r in webhook.received} == {publications(copied)[-1].release}
    assert read_impact(copied, pl.col("event_id") == publications(copied)[-1].event_id).height


def test_each_key_sees_only_its_own_affected_answers(story, copied, embedder, model_cache):
    settings = replace(copied, model_cache_dir=model_cache)
    grants = {KEY_A: list(CLASSIFICATIONS), KEY_B: list(CLASSIFICATIONS)}
    keys = parse_api_keys(settings, json.dumps(grants), "t")
    question = story.targeted["leave_new"].hits[0].text  # the new leave text, served now
    served = publications(settings)[-1].release
    with running(create_app(settings, embedder, keys)) as url, httpx.Client(base_url=url) as http:
        asked = {}
        for key in (KEY_A, KEY_B):
            response = http.post("/search", json={"question": question, "k": 1},
                                 headers=bearer(key))  # fmt: skip
            asked[key] = response.json()["trace_id"]
        deadline = time.monotonic() + 30  # traces are written in batches, after the answer
        while set(read_traces(settings)["trace_id"]) < set(asked.values()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        rollback(settings, to=publications(settings)[0].release, actor="test", reason="undo")
        for key, other in ((KEY_A, KEY_B), (KEY_B, KEY_A)):
            response = http.get("/impact", params={"since": served}, headers=bearer(key))
            assert response.status_code == 200
            listed = {a["trace_id"] for a in response.json()["answers"]}
            assert listed == {asked[key]} and asked[other] not in response.text
            assert {a["api_key_id"] for a in response.json()["answers"]} == {keys.grant(key).key_id}
        assert http.get("/impact", params={"since": served}).status_code == 401
        bad = http.get("/impact", params={"since": "last tuesday"}, headers=bearer(KEY_A))
        assert bad.status_code == 422


def test_the_owner_report_shows_answers_given_from_text_since_changed(story, copied, embedder):
    record_impact(copied, run_id="t")
    build_reports(copied, embedder.model_id)
    pages = copied.reports_dir / "owners"
    leave, handbook = (
        (pages / "team-leave.html").read_text(),
        (pages / "team-handbook.html").read_text(),
    )
    assert "Answers given from text you have since changed" in leave
    section = leave.split('id="impact"')[1].split("<h2>")[0]
    assert f'data-impact-doc="{LEAVE}"' in section and TTS not in section
    assert html.escape(CHANGES[LEAVE]["evidence_before"]) in section
    assert html.escape(CHANGES[LEAVE]["question"]) not in leave  # no question is shown
    theirs = handbook.split('id="impact"')[1].split("<h2>")[0]
    assert f'data-impact-doc="{TTS}"' in theirs and LEAVE not in theirs
    served_then, served_now = theirs.split("<td>")[1:3]  # the rollback serves the old text
    assert html.escape(CHANGES[TTS]["evidence_after"]) in served_then
    assert html.escape(CHANGES[TTS]["evidence_before"]) in served_now


def test_purge_and_the_trace_retention_reach_answer_impact(story, copied):
    record_impact(copied, run_id="t")
    quoted = read_impact(copied, pl.col("doc_id") == LEAVE)
    assert quoted.height
    (copied.policies / LEAVE).unlink()
    purged = purge_document(copied, LEAVE, reason="takedown", requested_by="test")
    assert purged.rows_erased["answer_impact"] >= quoted.height
    left = read_impact(copied)
    assert not ((left["doc_id"] == LEAVE) | (left["new_doc_id"] == LEAVE)).any()
    stored = b"".join(p.read_bytes() for p in (copied.home / "lake" / "answer_impact").rglob("*")
                      if p.is_file())  # fmt: skip
    assert quoted["old_text"][0][:60].encode() not in stored
    assert left.height
    counts = prune_traces(replace(copied, trace_retention_days=0), run_id="t")  # all expired
    assert counts["impact_deleted"] == left.height and read_impact(copied).is_empty()
