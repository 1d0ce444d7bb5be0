"""The search service as an application calls it: uvicorn on a free port of 127.0.0.1."""

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import polars as pl
import pytest
import uvicorn

from policyfresh.quality.pipeline import refresh
from policyfresh.serve.api_keys import ApiKeys, key_id
from policyfresh.serve.query_encoder import OnnxEncoder, query_encoder
from policyfresh.serve.search import search
from policyfresh.serve.service import create_app
from policyfresh.store.config import CLASSIFICATIONS, Settings
from policyfresh.store.tables import RETRIEVAL_TRACES
from tests.conftest import BUNDLED, BUNDLED_GOLDEN, SMALL, keep_only

pytestmark = pytest.mark.xdist_group("service")  # its module fixture: built once

PUBLIC = "public-reader-key-0001"
ALL = "all-reader-key-0000002"
KEYS = ApiKeys({PUBLIC: frozenset(["public"]), ALL: frozenset(CLASSIFICATIONS)}, "test")
RESTRICTED_SENTENCE = (
    "Thresholds may never be raised by more than 3 percentage points in one change."
)


@contextmanager
def running(app) -> Iterator[str]:
    """The app under uvicorn in a thread, on a free port of 127.0.0.1; stopped on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:  # uvicorn sets a flag, no event: polled, bounded generously
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_cache, embedder) -> Settings:
    """A published release of five policies (one restricted) plus the public privacy notice."""
    root = tmp_path_factory.mktemp("service")
    shutil.copytree(BUNDLED, root / "policies")
    keep_only(root / "policies", [*SMALL, "privacy/privacy-notice.md"])
    settings = Settings.load(home=root / "home", policies=root / "policies", golden=BUNDLED_GOLDEN)
    assert refresh(settings, embedder, "build")["release"]["published"]
    return settings


@pytest.fixture(scope="module")
def service(built, embedder) -> Iterator[httpx.Client]:
    with running(create_app(built, embedder, KEYS)) as url, httpx.Client(base_url=url) as http:
        yield http


def test_the_service_encodes_with_the_verified_onnx_export(built, service, embedder):
    assert isinstance(query_encoder(built, embedder), OnnxEncoder), "exported at start-up"


def test_hits_and_receipts_equal_the_in_process_search(built, service, embedder):
    question = "How much is the overdraft item fee?"
    response = service.post("/search", json={"question": question, "k": 4, "caller": "assistant"},
                            headers=bearer(ALL))  # fmt: skip
    assert response.status_code == 200, response.text
    served = response.json()
    local = search(built, query_encoder(built, embedder), question, k=4).to_dict()
    assert served["release"] == local["release"] and served["release"] is not None
    assert served["confidence"] == local["confidence"]
    differs = ("trace_id",)
    assert [{k: v for k, v in h.items() if k not in differs} for h in served["hits"]] == [
        {k: v for k, v in h.items() if k not in differs} for h in local["hits"]
    ]
    traces = pl.read_delta(built.table_uri(RETRIEVAL_TRACES.name))
    trace = traces.filter(pl.col("trace_id") == served["trace_id"]).row(0, named=True)
    assert trace["caller"] == "assistant" and trace["api_key_id"] == key_id(ALL)
    assert trace["entitled"] == sorted(CLASSIFICATIONS) and trace["release"] == served["release"]
    assert ALL not in json.dumps(trace, default=str), "the key itself is never stored"


def test_a_public_key_never_gets_restricted_text_even_when_it_is_the_best_match(built, service):
    body = {"question": RESTRICTED_SENTENCE, "k": 3}
    everything = service.post("/search", json=body, headers=bearer(ALL)).json()
    top = everything["hits"][0]
    assert top["classification"] == "restricted" and RESTRICTED_SENTENCE in top["text"]
    public = service.post("/search", json=body, headers=bearer(PUBLIC)).json()
    assert len(public["hits"]) == 3, "filtered before ranking, so k hits still come back"
    assert {h["classification"] for h in public["hits"]} == {"public"}
    assert all(RESTRICTED_SENTENCE not in h["text"] for h in public["hits"])
    traces = pl.read_delta(built.table_uri(RETRIEVAL_TRACES.name))
    trace = traces.filter(pl.col("trace_id") == public["trace_id"]).row(0, named=True)
    assert trace["entitled"] == ["public"] and trace["api_key_id"] == key_id(PUBLIC)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("not-a-key-at-all-00000"),
        {"Authorization": f"Basic {ALL}"},
        {"Authorization": ALL},
    ],
)
def test_a_request_without_a_valid_key_gets_401(service, headers):
    response = service.post("/search", json={"question": "overdraft fee"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": "a valid API key is required: Authorization: Bearer KEY"}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"k": 3}, ["question"]),
        ({"question": "   "}, ["question"]),
        ({"question": "fee", "k": 0}, ["k"]),
        ({"question": "fee", "k": 51}, ["k"]),
        ({"question": "fee", "k": "jane.doe@example.com"}, ["k"]),
        ({"question": "fee", "limit": 3}, ["limit"]),
        ({"question": "x" * 2001}, ["question"]),
        (["fee"], ["body"]),
    ],
)
def test_a_bad_body_gets_422_naming_the_field_and_never_echoing_the_input(service, body, fields):
    response = service.post("/search", json=body, headers=bearer(PUBLIC))
    assert response.status_code == 422
    answer = response.json()
    assert answer["error"] == "invalid request"
    assert [p["field"] for p in answer["problems"]] == fields
    assert "jane.doe" not in response.text and "x" * 50 not in response.text


def test_a_body_that_is_not_json_and_an_unknown_path_get_json_errors(service):
    broken = service.post("/search", content=b"{question", headers=bearer(PUBLIC))
    assert broken.status_code == 422
    assert broken.json() == {"error": "the body must be a JSON object"}
    assert service.get("/nowhere").json() == {"error": "Not Found"}
    assert service.get("/search").status_code == 405


def test_health_says_which_release_is_served_and_its_age(service, built):
    health = service.get("/health").json()
    assert health["status"] == "ok" and health["newer_published"] is False
    assert health["release"] == health["published_release"] == health["index_version"]
    assert health["published_at"] and 0 <= health["age_seconds"] < 3600


def test_a_trace_replays_for_the_key_that_made_it_only(service):
    made = service.post("/search", json={"question": "card dispute deadline", "k": 2},
                        headers=bearer(PUBLIC)).json()  # fmt: skip
    replay = service.get(f"/traces/{made['trace_id']}", headers=bearer(PUBLIC))
    assert replay.status_code == 200
    replayed = replay.json()
    assert [h["chunk_id"] for h in replayed["hits"]] == [h["chunk_id"] for h in made["hits"]]
    assert [h["text"] for h in replayed["hits"]] == [h["text"] for h in made["hits"]]
    assert replayed["trace"]["entitled"] == ["public"] and replayed["stale_hits"] == 0
    other = service.get(f"/traces/{made['trace_id']}", headers=bearer(ALL))
    assert other.status_code == 404 and "no trace" in other.json()["error"]
    assert service.get(f"/traces/{made['trace_id']}").status_code == 401


def test_an_internal_failure_is_a_json_500_that_leaks_nothing(service, monkeypatch, caplog):
    def fail(settings, trace_id):
        raise RuntimeError("cannot read jane.doe@example.com's trace")

    monkeypatch.setattr("policyfresh.serve.service.explain_trace", fail)
    failed = service.get("/traces/any", headers=bearer(PUBLIC))
    assert failed.status_code == 500
    assert failed.json() == {"error": "internal error; the service log has the details"}
    assert "RuntimeError" in caplog.text and "jane.doe" not in caplog.text
    assert service.get("/health").status_code == 200, "the connection and service carry on"


def test_the_openapi_schema_describes_the_routes(service):
    schema = service.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/search", "/health", "/traces/{trace_id}", "/impact"}
    request = schema["components"]["schemas"]["SearchRequest"]
    assert request["required"] == ["question"] and request["properties"]["k"]["maximum"] == 50
    assert "Hit" in schema["components"]["schemas"]


def test_before_the_first_release_the_service_says_so(settings, embedder):
    with running(create_app(settings, embedder, KEYS)) as url, httpx.Client(base_url=url) as http:
        health = http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "no release"
        found = http.post("/search", json={"question": "fee"}, headers=bearer(ALL))
        assert found.status_code == 503 and "run a refresh" in found.json()["error"]


def test_a_release_published_while_requests_run_is_served_and_none_mixes_releases(
    small_settings, corpus, embedder
):
    refresh(small_settings, embedder, "build")
    responses: list[dict] = []
    failures: list[object] = []  # error replies and exceptions of the client threads
    stop, answered, switched = threading.Event(), threading.Event(), threading.Event()

    def client(url: str, first: int) -> None:
        try:
            with httpx.Client(base_url=url, headers=bearer(ALL), timeout=60) as http:
                while not stop.is_set():
                    got = http.post("/search", json={"question": "overdraft item fee", "k": 5})
                    if got.status_code != 200:
                        failures.append(got.text)
                        continue
                    responses.append(got.json())
                    answered.set()
                    if responses[-1]["release"] != first:
                        switched.set()
        except BaseException as exc:  # reported by the test's own thread
            failures.append(exc)
            answered.set()

    with running(create_app(small_settings, embedder, KEYS)) as url:
        first = httpx.get(f"{url}/health").json()["release"]
        clients = [threading.Thread(target=client, args=(url, first)) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            assert answered.wait(timeout=120) and not failures, failures
            page = corpus / "retail" / "overdraft-fees.md"
            page.write_text(page.read_text().replace("$29 per item", "$35 per item"))
            release = refresh(small_settings, embedder, "edit")["release"]
            assert release["published"] and release["release"] > first
            assert switched.wait(timeout=60), "the new release was not picked up"
            health = httpx.get(f"{url}/health").json()
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=60)
    assert not failures, failures
    assert not any(thread.is_alive() for thread in clients)
    assert health["release"] == release["release"] and health["newer_published"] is False
    assert {r["release"] for r in responses} == {first, release["release"]}
    for response in responses:
        assert {h["release"] for h in response["hits"]} == {response["release"]}
        assert {h["index_version"] for h in response["hits"]} == {response["index_version"]}
        fee = next(h["text"] for h in response["hits"] if "Overdraft item fee" in h["text"])
        assert ("$35 per item" in fee) == (response["release"] == release["release"])
