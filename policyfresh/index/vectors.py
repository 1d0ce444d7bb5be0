"""The `policy_vectors` LanceDB table: embed only what is new, delete what left, one writer.

lancedb takes seconds to import, so it is imported where a table is written; reads go
through Lance alone, which a cold search can afford."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import lance
import numpy as np
import polars as pl
import pyarrow as pa

from policyfresh.index.chunks import read_chunks
from policyfresh.index.embedding import Embedder
from policyfresh.store.config import Settings
from policyfresh.store.freshness import record_embedded
from policyfresh.store.locks import writer_lock
from policyfresh.store.progress import advance
from policyfresh.store.sql import in_list, literal
from policyfresh.store.tables import POLICY_CHUNKS, TS, VECTORS

if TYPE_CHECKING:
    import lancedb

log = logging.getLogger(__name__)

METADATA = ["chunk_id", "doc_id", "doc_version", "chunk_index", "heading", "char_start",
            "char_end", "owners", "classification", "text", "embed_text",
            "text_sha256"]  # fmt: skip
COMPARED = [c for c in METADATA if c not in ("text", "embed_text")]  # text_sha256 stands for them
OPTIMIZE_FRAGMENTS = 16


@dataclass(frozen=True)
class SyncResult:
    embedded: int
    reused: int
    deleted: int
    rows: int
    table_version: int | None
    embed_seconds: float
    model_id: str
    model_changed: bool

    @property
    def embeddings_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds else 0.0


# Declared on `chunk_id` when the table is created: a second writer merging the same new key
# retries instead of writing a duplicate row (the file lock guards one machine only).
PRIMARY_KEY = {b"lance-schema:unenforced-primary-key": b"true"}


def vector_schema(dimensions: int) -> pa.Schema:
    """Chunk metadata as in `policy_chunks` (`chunk_id` the table's primary key), plus the
    model stamp and the vector."""
    chunk_id, *rest = [POLICY_CHUNKS.schema.field(name).remove_metadata() for name in METADATA]
    return pa.schema([
        chunk_id.with_nullable(False).with_metadata(PRIMARY_KEY),
        *rest,
        pa.field("model_id", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), dimensions)),
        pa.field("embedded_at", TS),
    ])  # fmt: skip


def _same_columns(schema: pa.Schema) -> bool:
    """The table has policyfresh's columns and `chunk_id` as its primary key (a table made by an
    older policyfresh lacks the key, and a nullable column cannot take one: it is rewritten)."""
    expected = vector_schema(1)
    return schema.names == expected.names and schema.field("chunk_id").metadata == PRIMARY_KEY


def open_vectors(settings: Settings, version: int | None = None) -> lancedb.table.Table | None:
    """The vector table (at a version, for time travel), or None before the first build."""
    import lancedb

    db = lancedb.connect(settings.vectors_uri)
    try:
        return db.open_table(VECTORS, version=version)
    except (ValueError, FileNotFoundError):
        return None


def vectors_dataset(
    settings: Settings, version: int | str | None = None
) -> lance.LanceDataset | None:
    """The vector table as a Lance dataset (at a version or tag), or None before the first build."""
    try:
        return lance.dataset(f"{settings.vectors_uri.rstrip('/')}/{VECTORS}.lance", version=version)
    except ValueError:
        return None


def read_vector_rows(table: lancedb.table.Table | None, columns: list[str]) -> pl.DataFrame:
    """Columns of every row, without loading the vectors unless asked for."""
    if table is None:
        return pl.from_arrow(vector_schema(1).empty_table()).select(columns)
    return pl.from_arrow(table.to_lance().to_table(columns=columns))


def _desired_rows(settings: Settings) -> pl.DataFrame:
    chunks = read_chunks(settings, [*METADATA, "pii_action"])
    return chunks.filter(pl.col("pii_action") != "blocked").select(METADATA)


def _changed_rows(desired: pl.DataFrame, existing: pl.DataFrame, model_id: str) -> pl.DataFrame:
    """Desired rows that are missing, differ in metadata, or were embedded by another model."""
    current = existing.filter(pl.col("model_id") == model_id).unique("chunk_id", keep="first")
    same = desired.join(current.select(COMPARED), on=COMPARED, how="semi", nulls_equal=True)
    return desired.join(same.select("chunk_id"), on="chunk_id", how="anti")


def reconcile(settings: Settings, model_id: str) -> dict[str, int]:
    """Counts that must all be zero: vectors against current chunks and the current model."""
    desired = _desired_rows(settings)
    existing = read_vector_rows(open_vectors(settings), [*COMPARED, "model_id"])
    missing = desired.join(existing, on="chunk_id", how="anti").height
    changed = _changed_rows(desired, existing, model_id).height
    return {
        "missing": missing,
        "stale": changed - missing,
        "orphaned": existing.join(desired, on="chunk_id", how="anti").height,
        "duplicates": existing.height - existing["chunk_id"].n_unique(),
        "model_mismatch": existing.filter(pl.col("model_id") != model_id).height,
    }


def vector_gaps(settings: Settings, model_id: str) -> pl.DataFrame:
    """Per document with a gap: chunks without a vector (missing), vectors that differ from
    their chunk or come from another model (stale), vectors of chunks gone (orphaned)."""
    desired = _desired_rows(settings)
    existing = read_vector_rows(open_vectors(settings), [*COMPARED, "model_id"])
    missing = desired.join(existing, on="chunk_id", how="anti")
    stale = _changed_rows(desired, existing, model_id).join(missing, on="chunk_id", how="anti")
    orphaned = existing.join(desired, on="chunk_id", how="anti")
    kinds = {"missing": missing, "stale": stale, "orphaned": orphaned}
    gaps = pl.concat([rows.select("doc_id", kind=pl.lit(kind)) for kind, rows in kinds.items()])
    counts = [(pl.col("kind") == kind).sum().cast(pl.Int64).alias(kind) for kind in kinds]
    return gaps.group_by("doc_id").agg(counts).sort("doc_id")


Embedding = tuple[np.ndarray, datetime]


def _reusable_vectors(table, model_id: str, shas: list[str]) -> dict[str, Embedding]:
    """Vectors (and when they were computed) already stored for these texts by this model."""
    if table is None or not shas:
        return {}
    found = table.to_lance().to_table(
        columns=["text_sha256", "vector", "embedded_at"],
        filter=f"model_id = {literal(model_id)} AND text_sha256 IN ({in_list(shas)})",
    )
    pairs = zip(found["vector"].to_numpy(), found["embedded_at"].to_pylist(), strict=True)
    return dict(zip(found["text_sha256"].to_pylist(), pairs, strict=True))


def sync_vectors(settings: Settings, embedder: Embedder) -> SyncResult:
    """Bring the vector table in line with current chunks, under the single-writer lock."""
    with writer_lock(settings, VECTORS):
        result = _sync(settings, embedder)
        record_embedded(settings, run_id=f"vectors:{result.table_version}")
        return result


def _sync(settings: Settings, embedder: Embedder) -> SyncResult:
    model_id = embedder.model_id
    table = open_vectors(settings)
    if table is not None:
        _ensure_indexes(settings, table)  # a run killed before indexing left them missing
    desired = _desired_rows(settings)
    existing = read_vector_rows(table, [*COMPARED, "model_id"])
    duplicated = existing.filter(pl.col("chunk_id").is_duplicated())["chunk_id"].unique().to_list()
    gone = sorted(set(existing["chunk_id"]) - set(desired["chunk_id"]))
    model_changed = existing.height > 0 and (existing["model_id"] != model_id).all()
    if model_changed:
        log.warning("model changed to %s: every chunk is re-embedded", model_id)
    schema_changed = table is not None and not _same_columns(table.schema)
    if schema_changed:
        log.warning("the vector table's columns changed: it is rewritten in one version")
    rewrite = model_changed or schema_changed  # the rows replace the table whole
    upserts = (
        desired
        if rewrite
        else pl.concat(
            [
                _changed_rows(desired, existing, model_id),
                desired.filter(pl.col("chunk_id").is_in(duplicated)),
            ]
        ).unique("chunk_id", keep="first")
    )
    if upserts.is_empty() and not gone and not duplicated and not rewrite:
        version = table.version if table else None
        return SyncResult(0, 0, 0, existing.height, version, 0.0, model_id, False)

    needed = [] if model_changed else upserts["text_sha256"].unique().to_list()
    vectors = _reusable_vectors(table, model_id, needed)
    reused = upserts.filter(pl.col("text_sha256").is_in(list(vectors))).height
    to_embed = upserts.filter(~pl.col("text_sha256").is_in(list(vectors))).unique("text_sha256")
    started = time.perf_counter()
    if not to_embed.is_empty():
        log.info("embedding %d texts with %s", to_embed.height, model_id)

        def progress(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            log.info("embedded %d/%d texts (%.1f/s)", done, total, rate)
            advance("texts embedded", done, total)

        advance("texts embedded", 0, to_embed.height)
        encoded = embedder.encode(to_embed["embed_text"].to_list(), progress=progress)
        now = datetime.now(tz=UTC)
        vectors.update((s, (v, now)) for s, v in zip(to_embed["text_sha256"], encoded, strict=True))
    embed_seconds = time.perf_counter() - started

    rows = _vector_rows(upserts, vectors, model_id, vector_schema(embedder.dimensions))
    table = _write(settings, None if rewrite else table, rows, gone, duplicated)
    _ensure_indexes(settings, table)
    _optimize(settings, table)
    return SyncResult(
        embedded=to_embed.height,
        reused=reused,
        deleted=len(gone),
        rows=table.count_rows(),
        table_version=table.version,
        embed_seconds=embed_seconds,
        model_id=model_id,
        model_changed=bool(model_changed),
    )


def _vector_rows(
    upserts: pl.DataFrame, vectors: dict[str, Embedding], model_id: str, schema: pa.Schema
) -> pa.Table:
    if upserts.is_empty():
        return schema.empty_table()
    found = [vectors[s] for s in upserts["text_sha256"]]
    matrix = np.stack([v for v, _ in found]).astype(np.float32)
    rows = upserts.with_columns(
        model_id=pl.lit(model_id), embedded_at=pl.Series([at for _, at in found])
    ).to_arrow()
    vector = pa.FixedSizeListArray.from_arrays(matrix.ravel(), matrix.shape[1])
    return rows.append_column("vector", vector).select(schema.names).cast(schema)


def _write(
    settings: Settings,
    table: lancedb.table.Table | None,
    rows: pa.Table,
    gone: list[str],
    duplicated: list[str],
) -> lancedb.table.Table:
    """One new table version with all of the refresh's changes (plus one first if duplicates
    need repair). Without a table, or after a model or column change, the rows replace the
    table whole: a new version of the same table, so older versions stay readable for traces."""
    if table is None:
        import lancedb

        db = lancedb.connect(settings.vectors_uri)
        return db.create_table(VECTORS, data=rows, schema=rows.schema, mode="overwrite")
    if duplicated:
        log.warning("repairing %d duplicated chunk ids", len(duplicated))
        table.delete(f"chunk_id IN ({in_list(duplicated)})")
    if rows.num_rows == 0:
        if gone:
            table.delete(f"chunk_id IN ({in_list(gone)})")
        return table
    merge = table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all()
    if gone:
        merge = merge.when_not_matched_by_source_delete(f"chunk_id IN ({in_list(gone)})")
    merge.execute(rows)
    return table


def _ensure_indexes(settings: Settings, table: lancedb.table.Table) -> None:
    """A full-text index of the embedded text always, a vector index once the table is large
    enough; rows not yet indexed stay searchable. Writes only when an index is missing."""
    from lancedb.index import FTS, IvfPq

    indexed = {i.columns[0] for i in table.list_indices()}
    if "embed_text" not in indexed:
        table.create_index("embed_text", config=FTS())
    rows = table.count_rows()
    if "vector" not in indexed and rows >= settings.vector_index_min_rows:
        log.info("building the IVF_PQ vector index over %d rows", rows)
        table.create_index("vector", config=IvfPq(distance_type="cosine"))


def _optimize(settings: Settings, table: lancedb.table.Table) -> None:
    """Fold the write's rows into the indexes, as every write needs: Lance scans the rows
    outside the full-text index on each query (75 ms against 2 ms on the handbook after one
    edit; folding costs 0.13 s). Once small fragments pile up, also compact them and remove
    versions past retention. Tagged versions (releases) are kept: LanceDB's own `optimize`
    refuses to run once a tagged version is old, so this goes through the Lance dataset."""
    dataset = table.to_lance()
    fragments = len(dataset.get_fragments())
    compact = fragments >= OPTIMIZE_FRAGMENTS
    if compact:
        log.info("compacting %s: %d fragments", VECTORS, fragments)
        dataset.optimize.compact_files()
    dataset.optimize.optimize_indices()
    if compact:
        dataset.cleanup_old_versions(
            older_than=timedelta(days=settings.version_retention_days),
            error_if_tagged_old_versions=False,
        )
    table.checkout_latest()
