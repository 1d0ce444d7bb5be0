"""The search service as an application calls it: uvicorn on a free port of 127.0.0.1."""

import contextlib
import json
import logging
import shutil
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import httpx
import polars as pl
import pytest
import uvicorn

from policyfresh.quality.pipeline import refresh
from policyfresh.serve.api_keys import ApiKeys, parse_api_keys
from policyfresh.serve.limits import server_config
from policyfresh.serve.query_encoder import OnnxEncoder, query_encoder
from policyfresh.serve.search import search
from policyfresh.serve.service import create_app
from policyfresh.store.config import CLASSIFICATIONS, Settings
from policyfresh.store.tables import RETRIEVAL_TRACES
from tests.conftest import BUNDLED, BUNDLED_GOLDEN, SMALL, keep_only

pytestmark = pytest.mark.xdist_group("service")  # its module fixture: built once

PUBLIC = "public-reader-key-0001"
ALL = "all-reader-key-0000002"
LIMITED = "limited-reader-key-003"  # at the service's default rate
UNLIMITED = {"rate": 10_000, "burst": 10_000}
GRANTS = {
    PUBLIC: {"classifications": ["public"]} | UNLIMITED,
    ALL: {"classifications": list(CLASSIFICATIONS)} | UNLIMITED,
    LIMITED: ["public"],
}
RESTRICTED_SENTENCE = (
    "Thresholds may never be raised by more than 3 percentage points in one change."
)


@contextmanager
def running(app) -> Iterator[str]:
    """The app under uvicorn in a thread, on a free port of 127.0.0.1, configured as
    `policyfresh serve` configures it; stopped on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, app.state.limits, log_level="warning"))
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


def keys(settings: Settings) -> ApiKeys:
    """The test keys as `policyfresh serve` reads them for this home."""
    return parse_api_keys(settings, json.dumps(GRANTS), "test")


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
    with (
        running(create_app(built, embedder, keys(built))) as url,
        httpx.Client(base_url=url) as http,
    ):
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
    assert trace["caller"] == "assistant" and trace["api_key_id"] == keys(built).grant(ALL).key_id
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
    assert (
        trace["entitled"] == ["public"] and trace["api_key_id"] == keys(built).grant(PUBLIC).key_id
    )


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
        ({"question": "fee", "k": "5"}, ["k"]),
        ({"question": "fee", "k": 5.0}, ["k"]),
        ({"question": "fee", "k": True}, ["k"]),
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
    assert other.status_code == 404 and other.json() == {"error": "no such trace"}
    assert service.get(f"/traces/{made['trace_id']}").status_code == 401


def test_an_internal_failure_is_a_json_500_that_leaks_nothing(service, monkeypatch, caplog):
    def fail(settings, trace_id, api_key_id):
        raise RuntimeError("cannot read jane.doe@example.com's trace")

    monkeypatch.setattr("policyfresh.serve.service.explain_trace", fail)
    failed = service.get(f"/traces/{'0' * 32}", headers=bearer(PUBLIC))
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
    with (
        running(create_app(settings, embedder, keys(settings))) as url,
        httpx.Client(base_url=url) as http,
    ):
        health = http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "no release"
        found = http.post("/search", json={"question": "fee"}, headers=bearer(ALL))
        assert found.status_code == 503 and "run a refresh" in found.json()["error"]
        assert str(settings.vectors_uri) not in found.text and "vectors" not in found.text


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

    with running(create_app(small_settings, embedder, keys(small_settings))) as url:
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


# --- abuse: limits, fair share, nothing told (issue 25) ----------------------------------------

EMAIL = "margaret.thornbury@example.com"


@pytest.fixture
def limited(built, monkeypatch):
    """`built` with some `POLICYFRESH_SERVE_*` limits set, as `policyfresh serve` reads them."""

    def load(**limits: str) -> Settings:
        for name, value in limits.items():
            monkeypatch.setenv(f"POLICYFRESH_SERVE_{name.upper()}", value)
        return replace(
            Settings.load(home=built.home, policies=built.policies, golden=built.golden_cases),
            model_cache_dir=built.model_cache_dir,
        )

    return load


def connect(url: str) -> socket.socket:
    """A raw TCP connection to the service, for what an HTTP client would not send."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=60)


def request_head(path: str, key: str, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}",
             "Content-Type: application/json", *extra]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(sock: socket.socket) -> int:
    """The status code of the response read from `sock` (0 when closed without one)."""
    head = b""
    while b"\r\n" not in head:
        got = sock.recv(4096)
        if not got:
            return 0
        head += got
    return int(head.split(b" ")[1])


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closes `sock` (within the socket's generous timeout)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def rss_bytes() -> int:
    """This process's resident memory: the service runs in one of its threads."""
    status = open("/proc/self/status").read()  # noqa: SIM115
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_big_body_gets_413_before_it_is_read(service, framing):
    total, block = 50_000_000, b"x" * 65536
    sent = 0
    head = (
        "Content-Length: 50000000" if framing == "content-length" else "Transfer-Encoding: chunked"
    )
    before = rss_bytes()
    with connect(str(service.base_url)) as sock:
        sock.sendall(request_head("/search", PUBLIC, head))

        def send() -> None:
            nonlocal sent
            piece = block if framing == "content-length" else b"10000\r\n" + block + b"\r\n"
            try:
                while sent < total:
                    sock.sendall(piece)
                    sent += len(block)
            except OSError:  # the server answered and closed: what the test wants
                pass

        sender = threading.Thread(target=send)
        sender.start()
        status = status_of(sock)
        with contextlib.suppress(OSError):  # closed by the server already
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(timeout=60)
    assert status == 413
    assert sent < total / 2, "the server read the body whole"
    assert rss_bytes() - before < 20_000_000, "the server's memory grew by the body's size"


def test_a_big_or_crowded_header_is_refused(service):
    with connect(str(service.base_url)) as sock:
        head = request_head("/search", "k" * 1_000_000, "Content-Length: 2")

        def send() -> None:
            with contextlib.suppress(OSError):  # the server stops reading: what the test wants
                sock.sendall(head)

        sender = threading.Thread(target=send)
        sender.start()
        try:  # 400 from h11 past the cap, or a reset: the server stopped reading
            status = status_of(sock)
        except ConnectionResetError:
            status = 0
        sender.join(timeout=60)
    assert status in (0, 400), "the header was read whole"
    crowded = {f"x-filler-{n}": "1" for n in range(100)} | bearer(PUBLIC)
    many = service.post("/search", json={"question": "fee"}, headers=crowded)
    assert many.status_code == 431 and many.json() == {"error": "too many request headers"}


def test_slow_sockets_are_closed_by_the_read_timeout_and_health_still_answers(limited, embedder):
    settings = limited(read_timeout="1s")
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:  # a header byte now and then, never the end
        try:
            for byte in request_head("/search", PUBLIC):
                sock.send(bytes([byte]))
                if stop.wait(0.2):
                    return
        except OSError:
            pass

    with running(create_app(settings, embedder, keys(settings))) as url:
        silent = [connect(url) for _ in range(20)]
        partial = [connect(url) for _ in range(20)]
        for sock in partial:  # headers done, body never finished
            sock.sendall(request_head("/search", PUBLIC, "Content-Length: 100") + b'{"q')
        trickling = [connect(url) for _ in range(10)]
        tricklers = [threading.Thread(target=trickle, args=(s,)) for s in trickling]
        for thread in tricklers:
            thread.start()
        try:
            assert httpx.get(f"{url}/health", timeout=30).status_code == 200
            for sock in silent + partial + trickling:
                assert closed_by_server(sock)
            assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        finally:
            stop.set()
            for thread in tricklers:
                thread.join(timeout=30)
            for sock in silent + partial + trickling:
                sock.close()


def test_a_burst_past_the_queue_gets_503_with_retry_after(limited, embedder):
    settings = limited(max_queue="1")
    start = threading.Barrier(32)
    answers: list[httpx.Response] = []

    def ask(url: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            start.wait(timeout=60)
            answers.append(http.post("/search", json={"question": "overdraft fee", "k": 5},
                                     headers=bearer(ALL)))  # fmt: skip

    with running(create_app(settings, embedder, keys(settings))) as url:
        clients = [threading.Thread(target=ask, args=(url,)) for _ in range(32)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=120)
    assert len(answers) == 32
    codes = Counter(a.status_code for a in answers)
    assert set(codes) == {200, 503} and codes[503] >= 1, codes
    busy = next(a for a in answers if a.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json() == {"error": "the service is busy; retry after a moment"}


def test_a_key_past_its_rate_gets_429_and_other_keys_and_health_go_on(limited, embedder):
    settings = limited(rate="0.01", burst="2")
    with (
        running(create_app(settings, embedder, keys(settings))) as url,
        httpx.Client(base_url=url) as http,
    ):
        codes = [http.get("/traces/unknown", headers=bearer(LIMITED)).status_code for _ in range(4)]
        assert codes == [404, 404, 429, 429]
        limited_answer = http.get("/traces/unknown", headers=bearer(LIMITED))
        assert limited_answer.json() == {"error": "too many requests for this key"}
        assert int(limited_answer.headers["retry-after"]) >= 1
        assert http.get("/traces/unknown", headers=bearer(ALL)).status_code == 404
        assert http.get("/health").status_code == 200


def test_the_caller_is_redacted_in_the_table_and_the_replay(built, service):
    made = service.post("/search", headers=bearer(PUBLIC), json={
        "question": "overdraft fee", "k": 1, "caller": f"agent-for {EMAIL}",
    }).json()  # fmt: skip
    traces = pl.read_delta(built.table_uri(RETRIEVAL_TRACES.name))
    stored = traces.filter(pl.col("trace_id") == made["trace_id"]).row(0, named=True)
    assert stored["caller"] == "agent-for <EMAIL_ADDRESS>"
    replay = service.get(f"/traces/{made['trace_id']}", headers=bearer(PUBLIC))
    assert replay.json()["trace"]["caller"] == "agent-for <EMAIL_ADDRESS>"
    assert EMAIL not in replay.text


def test_another_keys_trace_and_an_unknown_trace_get_the_same_404(service):
    made = service.post("/search", json={"question": "card dispute deadline", "k": 5},
                        headers=bearer(PUBLIC)).json()  # fmt: skip
    unknown = uuid.uuid4().hex  # as a guess would be: within the stored ids' range
    theirs = service.get(f"/traces/{made['trace_id']}", headers=bearer(ALL))
    nobody = service.get(f"/traces/{unknown}", headers=bearer(ALL))
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.content == nobody.content == b'{"error":"no such trace"}'
    long = service.get(f"/traces/{'a' * 10_000}", headers=bearer(ALL))
    assert long.status_code == 404 and len(long.content) < 100


def test_deeply_nested_json_gets_422(service, caplog):
    nested = "[" * 20_000 + "]" * 20_000
    response = service.post("/search", content=nested.encode(), headers=bearer(PUBLIC))
    assert response.status_code == 422
    assert response.json() == {"error": "the body must be a JSON object"}
    assert "ERROR" not in caplog.text


def test_a_client_hanging_up_is_logged_once_at_info(service, caplog):
    heard = threading.Event()

    class Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "hung up" in record.getMessage():
                heard.set()

    listener = Listener()
    logging.getLogger("policyfresh").addHandler(listener)
    caplog.set_level(logging.INFO, logger="policyfresh")
    try:
        with connect(str(service.base_url)) as sock:
            sock.sendall(request_head("/search", PUBLIC, "Content-Length: 1000") + b'{"question')
        assert heard.wait(timeout=60), "the hang-up was not logged"
    finally:
        logging.getLogger("policyfresh").removeHandler(listener)
    assert service.get("/health").status_code == 200
    told = [r for r in caplog.records if "hung up" in r.getMessage()]
    assert [r.levelno for r in told] == [logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
