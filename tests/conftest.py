"""Shared fixtures: a temporary copy of the bundled corpus and settings pointing at it."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import pytest

from policyfresh.index.embedding import Embedder
from policyfresh.store.config import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from policyfresh.ingest.documents import IngestResult

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "policies"
SHARED = REPO.parent / "shared"
HANDBOOK = SHARED / "corpora" / "18f-handbook"
BUNDLED_GOLDEN = REPO / "evals" / "golden_cases.csv"
HANDBOOK_GOLDEN = REPO / "evals" / "18f_golden_cases.csv"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A writable copy of the bundled policies."""
    target = tmp_path / "policies"
    shutil.copytree(BUNDLED, target)
    return target


ENVIRONMENT = tuple(f"POLICYFRESH_{name}" for name in (
    "LAKE_URI", "VECTORS_URI", "PII_RULES", "JUDGE_URL", "JUDGE_MODEL", "ESCALATION_THRESHOLD",
    "GATE_MIN_HIT_AT_5", "GATE_MIN_EVIDENCE_RECALL", "GATE_MAX_HIT_AT_5_DROP", "FRESHNESS_SLO",
    "SOURCE_QUIET", "API_KEYS", "MAX_HELD_SHARE", "MAX_REMOVED_SHARE", "ALLOW_MASS_DELETE",
    "MAX_FILE_BYTES", "MAX_PARSE_SECONDS", "TRACE_RETENTION_DAYS", "IMPACT_WEBHOOK",
    "JUDGE_API_KEY", "VECTOR_INDEX_MIN_ROWS", "VERSION_RETENTION_DAYS", "RAY_ADDRESS", "RAY_ACTORS",
))  # fmt: skip


@pytest.fixture(scope="session")
def handbook_ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, IngestResult]:
    """The whole 18F handbook ingested once: PII detection over its 246 pages takes a minute."""
    from policyfresh.ingest.documents import ingest_documents

    home = tmp_path_factory.mktemp("handbook")
    settings = Settings.load(home=home, policies=HANDBOOK / "pages")
    ingested = ingest_documents(settings, run_id="18f")
    assert ingested.added >= 240, f"the 18F handbook's pages are missing under {HANDBOOK}"
    return settings, ingested


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the model for the whole session: exporting takes seconds."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def settings(
    tmp_path: Path, corpus: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings whose home and policies live in the test's own temporary folder."""
    monkeypatch.setenv("POLICYFRESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POLICYFRESH_MODEL_CACHE", str(model_cache))
    monkeypatch.setenv("POLICYFRESH_POLICIES", str(corpus))
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", str(BUNDLED_GOLDEN))
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    return Settings.load()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real model, loaded once for the whole session."""
    model = Embedder()
    model.load()
    return model


class HashEmbedder(Embedder):
    """Deterministic vectors from text hashes, under another model id: for bookkeeping tests."""

    def __init__(self, name: str = "hash-embedder", dimensions: int = 384) -> None:
        super().__init__(name=name)
        self.dimensions = dimensions

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.dimensions}"

    def encode(self, texts, batch_size=64, progress=None):
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        vectors = np.stack([np.random.default_rng(s).random(self.dimensions) for s in seeds])
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def keep_only(corpus: Path, doc_ids: list[str]) -> None:
    """Trim a corpus copy down to a few documents (and its OWNERS file)."""
    for path in corpus.rglob("*"):
        relative = path.relative_to(corpus).as_posix()
        if path.is_file() and relative != "OWNERS" and relative not in doc_ids:
            path.unlink()


SMALL = [
    "retail/card-disputes.md",
    "retail/overdraft-fees.md",
    "compliance/complaints-handling.md",
    "compliance/sanctions-screening.md",
    "hr/annual-leave.md",
]


@pytest.fixture
def small_settings(settings: Settings, corpus: Path) -> Settings:
    """Settings over five bundled policies that carry planted PII and several classifications."""
    keep_only(corpus, SMALL)
    return settings


class ChatServer:
    """Speaks `POST /v1/chat/completions`; replies with `reply` (a string) or fails with
    `status`; keeps the requests it received."""

    def __init__(self) -> None:
        self.reply = '{"score": 0.9, "reason": "supported"}'
        self.status = 200
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                )
                payload = {"choices": [{"message": {"role": "assistant", "content": server.reply}}]}
                data = json.dumps(payload if server.status == 200 else {"error": "down"}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


# Real-browser tests: Playwright drives Debian's chromium (`make test` installs it; Playwright's
# own browser download cannot reach the network, so `playwright install` is never used).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # The network is closed: without these, Chromium's own connections pile up refused.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (Debian's, at /usr/bin/chromium) under Playwright's sync API, started
    once per module: its event loop runs in this thread until stopped, and the next module's
    tests may call `asyncio.run()`."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A new page in its own browser context. `page.console_errors` (an attribute set on the
    page object itself) collects the text of every console message of type "error" and of
    every uncaught page error ("pageerror", prefixed `pageerror: `), in order."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    new_page = context.new_page()
    errors: list[str] = []
    new_page.console_errors = errors
    new_page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    new_page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    yield new_page
    context.close()


@pytest.fixture
def screenshots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the test's screenshots (PNG), under pytest's temporary directory
    (`<basetemp>/screenshots-<test name>N/`); every browser test saves at least one."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name)[:40]
    return tmp_path_factory.mktemp(f"screenshots-{name}")


def load_benchmark() -> ModuleType:
    """`benchmarks/edit_to_served.py` as a module: its dev-server and GraphQL helpers."""
    if "edit_to_served" in sys.modules:
        return sys.modules["edit_to_served"]
    spec = importlib.util.spec_from_file_location(
        "edit_to_served", REPO / "benchmarks" / "edit_to_served.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def holds_text(name: str, data: bytes, text: str) -> bool:
    """Whether a stored file holds `text`: Parquet decoded (its pages are compressed, so its
    bytes can hide a value, depending on what the rows around it are), any other byte for byte."""
    if name.endswith(".parquet"):
        return text in repr(pq.read_table(io.BytesIO(data)).to_pylist())
    return text.encode() in data


def files_holding(folder: Path, text: str) -> list[str]:
    """The files under `folder`, every version's, that hold `text`."""
    return [
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and holds_text(p.name, p.read_bytes(), text)
    ]
